"""Which kernel of the numba back end runs: the SIMD one or the scalar one.

Every kernel that has a vector form (decoder.py, encoder.py) also has a
scalar one that never refers to the vector steps of intrinsics.py, so that
it compiles where they do not. :func:`call_kernel` runs the vector one where
the CPU has gathers (``use_simd``) and falls back, once and for all, with a
warning, if it does not compile on this numba/LLVM.
"""
from __future__ import annotations

import warnings

import numba
from llvmlite import binding as llvm_binding


def _host_has_gathers() -> bool:
    """Whether numba compiles for a CPU with vector gathers (x86 AVX2+).
    Elsewhere LLVM would split each gather into scalar loads, which is
    slower than the scalar kernel."""
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        return bool(llvm_binding.get_host_cpu_features().get("avx2", False))
    except Exception:           # pragma: no cover - feature query unsupported
        return False


# Tests flip this to cover the scalar kernel on machines that have AVX2.
use_simd = _host_has_gathers()

_simd_failure: str | None = None    # why the vector kernels would not compile here


def call_kernel(simd_kernel, scalar_kernel, *args):
    """simd_kernel(*args) where vector kernels are in use, else (or if it
    does not compile on this numba/LLVM) scalar_kernel(*args)."""
    global _simd_failure
    if simd_kernel is not None and use_simd and _simd_failure is None:
        try:
            return simd_kernel(*args)
        except (numba.core.errors.NumbaError, RuntimeError) as exc:
            # Only compilation raises: the kernels themselves never do.
            _simd_failure = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"floatzip: the numba SIMD kernels do not compile here, using the "
                          f"slower scalar ones ({_simd_failure.splitlines()[0]})",
                          RuntimeWarning, stacklevel=2)
    return scalar_kernel(*args)
