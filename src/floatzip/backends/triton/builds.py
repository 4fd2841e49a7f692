"""Which build of the decode kernel runs, with which arguments, and the
same builds compiled to machine code without a GPU.

A build (:class:`KernelBuild`) is the choice of where the kernel reads its
decode tables, whether it prefetches, how many raw rows it keeps in flight,
how it stages payload words and whether ptxas caps its registers.
:func:`resolve_build` fills in what a caller leaves None (CUDA_BUILD on a
GPU, INTERPRETER_BUILD under TRITON_INTERPRET=1) and refuses what cannot
run there; :func:`kernel_constants` and :func:`launch_options` turn a build
into the kernel's constexpr arguments and Triton's compile options, which a
launch passes and the offline compile below uses alike.

Offline compile: ``triton.compile`` with an explicit ``GPUTarget`` needs no
driver, so CI can prove that every build of the kernel compiles
(tests/test_triton.py) and benchmarks/kernel_sass.py can count what one
decode step costs in SASS instructions, the static half of a GPU timing.

``compile_decoder(capability, groups, num_warps, table_memory, raw_ahead, prefetch, staging,
max_registers)``
    The decode kernel exactly as ``DeviceBlockDecoder`` launches it on a
    CUDA device, for ``sm_<capability>``, with its tables read through L1
    ("global") or from shared memory ("shared"), prefetching into "L1",
    "L2" or not ("none"), payload words staged ("fifo", "async") or not
    ("none"), registers capped or not (0); None picks CUDA_BUILD's
    choice, "auto" compiles the prefetching build. Returns Triton's CompiledKernel
    (``.asm["ptx"]``, ``.asm["cubin"]``).
``cuda_tool(name)``
    Path of cuobjdump / nvdisasm as shipped inside Triton's wheel, or None.
``resource_usage(cubin)`` / ``sass(cubin)``
    ``cuobjdump -res-usage`` / ``cuobjdump -sass`` of a cubin.
``decode_loops(sass_text)``
    The decode loops of a SASS listing, each a list of instructions.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from typing import NamedTuple

import torch

from ...codecs.layout import LANES
from ...errors import DecoderArgumentError, UnsupportedError
from .kernel import DESC_FIELDS, FIFO_SLOTS, KERNELS, PREFETCH_PTX_FORMAT

# Where the kernel reads decode tables. "global": through the L1 cache (this
# build also runs in the interpreter). "shared": copied first into shared
# memory and read with inline PTX, which only a CUDA device runs.
TABLE_MEMORIES = ("global", "shared")
# Whether the kernel prefetches payload words and raw rows, and into which
# cache level (kernel.PREFETCH_PTX_FORMAT): inline PTX, CUDA only.
PREFETCHES = ("none", "L1", "L2")
# How lanes get their payload words: loaded directly, or staged through a
# FIFO in global scratch memory or (cp.async, CUDA only) in shared memory;
# the comment above kernel.FIFO_SLOTS says more.
STAGINGS = ("none", "fifo", "async")
# Raw rows each lane has in flight in the unmasked phase (the kernel's
# docstring); 16 in CUDA_BUILD.
RAW_AHEAD = 8
MAX_RAW_AHEAD = 16      # Triton 3.6 took minutes to compile a ring of 32 rows


class KernelBuild(NamedTuple):
    """Which kernel a decoder launches (see DeviceBlockDecoder)."""
    table_memory: str       # TABLE_MEMORIES
    prefetch: str           # PREFETCHES, or "auto" before a decoder resolves it
    raw_ahead: int          # raw rows in flight, a power of two up to MAX_RAW_AHEAD
    staging: str = "none"   # STAGINGS: how lanes get their payload words
    max_registers: int = 0  # registers a thread at most (ptxas maxnreg); 0: ptxas decides


# The build a decoder gets for what its caller leaves None. On CUDA, the
# fastest on an H200 (benchmarks/results/gpu_check_h200.md): the shared
# table beat L1 on every launch; 16 raw rows in flight beat 8 on single
# matrices (+6-10%) and tied on a whole Llama block; prefetching gained
# 33-45% on launches of fewer lanes than the GPU holds at once (a 14336x4096
# matrix: 57,344 lanes) and lost 19% on a block of 213,056, where the
# resident warps hide latency themselves and the prefetches cost issue
# slots and L1 room: "auto" prefetches (AUTO_PREFETCH) below
# PREFETCH_LANES_PER_SM lanes per multiprocessor. The interpreter runs no
# inline PTX.
# The staged payloads (STAGINGS) and register caps are not timed yet: none
# until a GPU run says otherwise.
CUDA_BUILD = KernelBuild("shared", "auto", 16, "none")
INTERPRETER_BUILD = KernelBuild("global", "none", RAW_AHEAD, "none")
AUTO_PREFETCH = "L2"            # L1 and L2 measured the same
# An SM's resident threads at 64 registers, where this threshold was
# measured; uncapped, the default build's 72-80 registers hold 768-896.
PREFETCH_LANES_PER_SM = 1024

# Kernels become Triton kernels on first launch (kernel.KERNELS says why),
# one per kernel and mode: compiled, or run by the interpreter.
_launchable: dict[tuple[str, bool], object] = {}


def interpreting() -> bool:
    """Whether kernels run in Triton's interpreter (TRITON_INTERPRET=1), on
    CPU tensors: read at each launch, not at import, so a test can switch it."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def launchable(kernel_name: str):
    """The kernel as this process launches it now: a JITFunction, or an
    InterpretedFunction under TRITON_INTERPRET=1."""
    key = (kernel_name, interpreting())
    if key not in _launchable:
        if key[1]:
            from triton.runtime.interpreter import InterpretedFunction
            _launchable[key] = InterpretedFunction(KERNELS[kernel_name])
        else:
            from triton.runtime.jit import JITFunction
            _launchable[key] = JITFunction(KERNELS[kernel_name])
    return _launchable[key]


def kernel_constants(groups_per_program: int, num_warps: int, build: KernelBuild) -> dict:
    """The decode kernel's constexpr arguments for a launch shape and build."""
    if build.prefetch not in PREFETCHES:
        raise DecoderArgumentError(f"prefetch {build.prefetch!r} is not resolved to one of "
                                   f"{PREFETCHES}")
    return {"DESC_FIELDS": DESC_FIELDS, "GROUPS": groups_per_program,
            "SHARED_TABLE": build.table_memory == "shared",
            "TABLE_FILL": 128 * num_warps,          # 4 slots a thread a pass
            "RAW_AHEAD": build.raw_ahead,
            "PREFETCH": build.prefetch != "none",
            "PREFETCH_PTX": ("" if build.prefetch == "none"
                             else PREFETCH_PTX_FORMAT.format(level=build.prefetch)),
            "STAGING": STAGINGS.index(build.staging),
            "FIFO_DECLARE": ("" if build.staging != "async" else
                             f".shared .align 16 .b8 floatzip_payload_fifo"
                             f"[{4 * FIFO_SLOTS.value * LANES * groups_per_program}];"
                             "\n\tmov.u32 $0, 0;")}


def launch_options(num_warps: int, build: KernelBuild) -> dict:
    """Triton's compile options for a launch shape and build (not kernel
    arguments): what a launch passes and what compile_decoder compiles with."""
    options = {"num_warps": num_warps}
    if build.max_registers:
        options["maxnreg"] = build.max_registers
    return options


def resolve_build(table_memory: str | None = None, prefetch: str | None = None,
                  raw_ahead: int | None = None, staging: str | None = None,
                  max_registers: int | None = None, *,
                  interpreted: bool | None = None) -> KernelBuild:
    """The build with the defaults filled in for where the kernel runs
    (CUDA_BUILD, INTERPRETER_BUILD), checked: inline-PTX builds run on CUDA
    only. ``prefetch`` may stay "auto" (DeviceBlockDecoder resolves it).
    The interpreter has no registers: there ``max_registers`` becomes 0."""
    interpreted = interpreting() if interpreted is None else interpreted
    defaults = INTERPRETER_BUILD if interpreted else CUDA_BUILD
    build = KernelBuild(*(d if v is None else v for v, d in
                          zip((table_memory, prefetch, raw_ahead, staging, max_registers),
                              defaults)))
    if build.table_memory not in TABLE_MEMORIES:
        raise DecoderArgumentError(f"table_memory must be one of {TABLE_MEMORIES}, "
                                   f"got {build.table_memory!r}")
    if build.prefetch not in PREFETCHES + ("auto",):
        raise DecoderArgumentError(f"prefetch must be one of {PREFETCHES + ('auto',)}, "
                                   f"got {build.prefetch!r}")
    if build.staging not in STAGINGS:
        raise DecoderArgumentError(f"staging must be one of {STAGINGS}, got {build.staging!r}")
    ahead = build.raw_ahead
    if not isinstance(ahead, int) or not 1 <= ahead <= MAX_RAW_AHEAD or ahead & (ahead - 1):
        raise DecoderArgumentError(f"raw_ahead must be a power of two from 1 to "
                                   f"{MAX_RAW_AHEAD}, got {ahead!r}")
    cap = build.max_registers
    if not isinstance(cap, int) or not (cap == 0 or 32 <= cap <= 255 and cap % 8 == 0):
        # ptxas hands registers out 8 a thread at a time: other caps round.
        raise DecoderArgumentError(f"max_registers must be 0 (no cap) or a multiple of 8 "
                                   f"from 32 to 248, got {cap!r}")
    if interpreted:
        for option, value, runs in (("table_memory", build.table_memory, ("global",)),
                                    ("prefetch", build.prefetch, ("none", "auto")),
                                    ("staging", build.staging, ("none", "fifo"))):
            if value not in runs:
                raise UnsupportedError(
                    f"{option}={value!r} is inline PTX, which TRITON_INTERPRET=1 cannot run; "
                    f"use {option}={runs[0]!r} there")
        if build.prefetch == "auto":
            build = build._replace(prefetch="none")
        build = build._replace(max_registers=0)
    return build


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def resolve_prefetch(build: KernelBuild, lanes: int, device: torch.device) -> KernelBuild:
    """"auto": prefetch when the launch has fewer lanes than the device
    keeps resident (CUDA_BUILD says why)."""
    if build.prefetch != "auto":
        return build
    few = device.type == "cuda" and lanes < PREFETCH_LANES_PER_SM * _multiprocessors(device)
    return build._replace(prefetch=AUTO_PREFETCH if few else "none")


# -- compiled without a GPU ----------------------------------------------------

# The kernel's signature for triton.compile: pointer types, then constexprs.
SIGNATURE = {
    "desc_ptr": "*i64", "table_ptr": "*i32", "lane_ptr": "*i64", "payload_ptr": "*i32",
    "raw_ptr": "*i32", "out_ptr": "*u8", "err_ptr": "*i32", "fifo_ptr": "*i32",
    "DESC_FIELDS": "constexpr", "GROUPS": "constexpr", "SHARED_TABLE": "constexpr",
    "TABLE_FILL": "constexpr", "RAW_AHEAD": "constexpr", "PREFETCH": "constexpr",
    "PREFETCH_PTX": "constexpr", "STAGING": "constexpr", "FIFO_DECLARE": "constexpr",
}


def compile_decoder(capability: int, groups: int, num_warps: int,
                    table_memory: str | None = None, raw_ahead: int | None = None,
                    prefetch: str | None = None, staging: str | None = None,
                    max_registers: int | None = None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    build = resolve_build(table_memory, prefetch, raw_ahead, staging, max_registers,
                          interpreted=False)
    if build.prefetch == "auto":
        build = build._replace(prefetch=AUTO_PREFETCH)
    src = triton.compiler.ASTSource(
        fn=JITFunction(KERNELS["decode"]), signature=SIGNATURE,
        constexprs=kernel_constants(groups, num_warps, build))
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options=launch_options(num_warps, build))


def cuda_tool(name: str) -> str | None:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


def _cuobjdump(cubin: bytes, flag: str) -> str:
    tool = cuda_tool("cuobjdump")
    if tool is None:
        raise FileNotFoundError("this Triton wheel ships no cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True,
                              check=True).stdout


def resource_usage(cubin: bytes) -> str:
    return _cuobjdump(cubin, "-res-usage")


def sass(cubin: bytes) -> str:
    return _cuobjdump(cubin, "-sass")


def decode_loops(sass_text: str) -> list[list[str]]:
    """Each loop closed by a backward branch whose body stores to global
    memory: the decode loops (two per output width: unmasked, masked)."""
    ops = []
    for line in sass_text.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            ops.append((int(m.group(1), 16), m.group(2)))
    loops = []
    for i, (at, op) in enumerate(ops):
        branch = re.search(r"BRA (0x[0-9a-f]+)", op)
        if branch and int(branch.group(1), 16) < at:
            start = int(branch.group(1), 16)
            body = [o for a, o in ops[:i + 1] if a >= start]
            if any("STG" in o for o in body):
                loops.append(body)
    return loops
