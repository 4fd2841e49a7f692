"""The GPU decoder built to machine code without a GPU, and read back.

``triton.compile`` with an explicit ``GPUTarget`` needs no driver, so CI can
prove that every build of the kernel compiles (tests/test_triton.py) and
benchmarks/kernel_sass.py can count what one decode step costs in SASS
instructions, the static half of a GPU timing.

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

import os
import re
import subprocess
import tempfile

from . import triton_decode as td

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

    build = td.resolve_build(table_memory, prefetch, raw_ahead, staging, max_registers,
                             interpreted=False)
    if build.prefetch == "auto":
        build = build._replace(prefetch=td.AUTO_PREFETCH)
    src = triton.compiler.ASTSource(
        fn=JITFunction(td.KERNELS["decode"]), signature=SIGNATURE,
        constexprs=td.kernel_constants(groups, num_warps, build))
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options=td.launch_options(num_warps, build))


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
