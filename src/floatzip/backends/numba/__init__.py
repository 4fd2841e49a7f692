"""Fast CPU back end: the reference coder compiled with numba.

Same streams as ``numpy_ref``, byte for byte; tests/test_backends.py checks
it. What makes it fast:

* Lane interleaving. The 32 lanes of a group are coded together, the step
  loop outside and the lane loop inside, so their serial dependency chains
  (table read -> bit read -> next state) overlap, and the 32 values of one
  step are 32 consecutive values of the tensor.
* SIMD. Where the CPU has AVX2, one step of all 32 lanes is a handful of
  vector operations around gathers: table entries, stream bits and raw
  fields when decoding (:func:`intrinsics.decode_steps`), symbol parameters
  and next states when encoding (:func:`intrinsics.encode_steps`). They are
  written in LLVM IR because numba's auto-vectorizer cannot prove the
  gathers safe. Scalar kernels do the same work elsewhere
  (``dispatch.use_simd``), and take over if the vector ones do not compile
  on some numba/LLVM.
* One table read per decoded symbol. Each uint32 entry of our decoding
  table holds the next-state base, the bit count and the symbol already
  shifted and sign-rotated into its place in the output word; the output is
  that OR the raw field, whose lowest bit (the sign) moves to the top.
* Unaligned 4- and 8-byte loads instead of byte-by-byte reads. They may
  read a few bytes past the field, so a group that could read past the end
  of ``payload`` or ``raw`` (only the last one or two, even on a corrupt
  stream) is decoded from a zero-padded copy of the tail.
* Tables are built by jitted code too: small tensors are dominated by them.
* Groups are split over threads; the kernels release the GIL.

Kernels compile on first use (``cache=True`` keeps them on disk): one
specialization per value storage type (uint8/16/32); everything else is a
run-time argument. Importing this package compiles nothing.

Modules, lowest first: ``packing`` (bit layouts and limits the others
share), ``intrinsics`` (the LLVM IR pieces), ``tables``, ``dispatch`` (SIMD
or scalar kernel), ``threads`` (the pool and how work is cut), then
``decoder``, ``encoder``, ``histograms`` and ``fast_code`` (the fast
in-memory code of ``load_model(memory="fast")``), each a kernel and the host code
that checks its arguments before the kernel touches them. numba's cache
stamps a kernel with its own file only: after editing ``packing`` or
``intrinsics``, delete this package's ``__pycache__``.
"""
from __future__ import annotations

import sys

import numba

if sys.byteorder != "little":      # the unaligned loads assume it
    raise ImportError("the numba back end needs a little-endian machine")
if numba.config.DISABLE_JIT:       # the LLVM intrinsics cannot run as Python
    raise ImportError("numba's JIT is disabled (NUMBA_DISABLE_JIT)")

# After the checks above: a machine that fails them never defines a kernel.
from .decoder import check_out, decode
from .encoder import encode
from .fast_code import decode as fast_decode
from .fast_code import encode as fast_encode
from .histograms import statistics
from .tables import decode_table, encode_table

__all__ = ["can_encode", "check_out", "decode", "decode_table", "devices", "encode",
           "encode_table", "fast_decode", "fast_encode", "name", "statistics"]

name = "numba"
can_encode = True


def devices() -> frozenset[str]:
    return frozenset({"cpu"})
