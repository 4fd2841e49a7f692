"""What one decode step of the GPU kernel costs in machine instructions,
without a GPU: the static half of the decoder's speed.

    python benchmarks/kernel_sass.py [--capability 90] [--out FILE.md]

Builds the decode kernel for sm_<capability> in the builds BUILDS names
(decode tables read through L1 or from shared memory, 8 or 16 raw rows in
flight, prefetching or not, payload words staged through a cp.async FIFO
or not, registers capped at 64 a thread or not; the third and fourth are
what a GPU launches by default) and the
kernel shape the block decoder uses by default (4 groups
of 32 lanes, 4 warps), disassembles
it with the cuobjdump that ships in Triton's wheel, and counts the SASS
instructions of each decode loop per decoded value. A warp decodes 32
values a step, so on an H200 (132 SMs, 4 schedulers each issuing one warp
instruction a cycle, 1.98 GHz boost) a kernel that did nothing but issue
these instructions would write at most

    132 * 4 * 1.98e9 * 32 * bytes_per_value / instructions_per_step  B/s.

That ceiling is a model, not a measurement: latency, memory wavefronts
(the L1-table build spends ~28 on its 32-lane table gather) and occupancy
keep a real run below it. The table also gives each build's registers,
the local-memory (spill) instructions in each loop, and the threads an SM
holds at that register count (H200: 65,536 registers, 2,048 threads): the
more warps resident, the more of a step's latency they hide. GPU timings
come only from benchmarks/gpu_check.py.

A second table does the same for the decoder of the fast in-memory code
(backends/triton/fast_kernel.py, docs/FAST_CODE.md), once per code width:
the SASS instructions of its unmasked decode loop per decoded weight (a
thread decodes several weights an iteration, counted from the bytes its
stores write), against issue 15's budget of 16.
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings

warnings.filterwarnings("ignore", category=UserWarning)

from floatzip.backends.triton import builds  # noqa: E402

H200_ISSUE_PER_S = 132 * 4 * 1.98e9
# (table memory, prefetch, raw rows in flight, staging, register cap)
BUILDS = [("global", "none", 8, "none", 0), ("shared", "none", 8, "none", 0),
          ("shared", "none", 16, "none", 0), ("shared", builds.AUTO_PREFETCH, 16, "none", 0),
          ("shared", "none", 16, "async", 0), ("shared", builds.AUTO_PREFETCH, 16, "async", 0),
          ("shared", "none", 16, "none", 64), ("shared", "none", 16, "async", 64)]
H200_REGISTERS = 65536          # a multiprocessor's register file, 32-bit registers
H200_THREADS = 2048             # threads a multiprocessor holds at most


def resident_threads(registers: int, num_warps: int) -> int:
    """Threads of whole programs a multiprocessor holds at once when the
    register file is what limits it (registers go 8 a thread at a time)."""
    per_program = -(-registers // 8) * 8 * 32 * num_warps
    return min(H200_REGISTERS // per_program * 32 * num_warps, H200_THREADS)
STORE_BYTES = {"STG.E.U8": 1, "STG.E.U16": 2, "STG.E": 4}


def store_width(loop: list[str]) -> int:
    for op in loop:
        m = re.search(r"(STG\.E(?:\.U8|\.U16)?)\s", op)
        if m:
            return STORE_BYTES[m.group(1)]
    raise ValueError("loop without a global store")


def fast_code_rows(capability: int) -> list[str]:
    """The fast-code decoder's table: one row per code width."""
    from floatzip.backends.triton import fast_kernel
    rows = ["", f"Fast-code decode kernel (docs/FAST_CODE.md), sm_{capability}, "
            f"{fast_kernel.STEP_GROUPS} groups a step, {fast_kernel.NUM_WARPS} warps; budget "
            f"{fast_kernel.SASS_BUDGET_PER_WEIGHT} SASS instructions a weight (issue 15)", "",
            "| code bits | loop | SASS instr / iteration | weights a thread an iteration | "
            "SASS instr / weight | registers | spill ops in loop | threads an SM | "
            "issue-bound ceiling, H200 |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for bits in (2, 3, 4):
        cubin = fast_kernel.compile_fast_decoder(capability, bits).asm["cubin"]
        regs = int(re.search(r"REG:(\d+)", builds.resource_usage(cubin)).group(1))
        loop = fast_kernel.decode_loop(builds.sass(cubin))
        weights = fast_kernel.weights_per_iteration(loop)
        per_weight = len(loop) / weights
        spills = sum("LDL" in op or "STL" in op for op in loop)
        ceiling = H200_ISSUE_PER_S * 32 * 2 / per_weight        # BF16 out, 2 bytes a weight
        rows.append(f"| {bits} | unmasked | {len(loop)} | {weights} | {per_weight:.2f} | "
                    f"{regs} | {spills} | {resident_threads(regs, fast_kernel.NUM_WARPS)} | "
                    f"{ceiling / 1e12:.2f} TB/s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capability", type=int, default=90)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    if builds.cuda_tool("cuobjdump") is None:
        sys.exit("this Triton wheel ships no cuobjdump")

    import triton
    lines = [f"Decode kernel, sm_{args.capability}, {args.groups} groups a program, "
             f"{args.warps} warps, Triton {triton.__version__} (static SASS counts; the "
             "ceiling is a model, not a timing)", "",
             "| table memory | prefetch | raw rows in flight | staging | register cap | "
             "value bytes | loop | SASS instr / value step | registers | spill ops in loop | "
             "threads an SM | issue-bound ceiling, H200 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for memory, prefetch, raw_ahead, staging, cap in BUILDS:
        compiled = builds.compile_decoder(args.capability, args.groups, args.warps, memory,
                                          raw_ahead, prefetch, staging, cap)
        cubin = compiled.asm["cubin"]
        usage = builds.resource_usage(cubin)
        regs = int(re.search(r"REG:(\d+)", usage).group(1))
        threads = resident_threads(regs, args.warps)
        for loop in builds.decode_loops(builds.sass(cubin)):
            steps = sum("STG" in op for op in loop)
            per_step = len(loop) / steps
            nbytes = store_width(loop)
            ceiling = H200_ISSUE_PER_S * 32 * nbytes / per_step
            kind = f"unmasked, {steps} steps an iteration" if steps > 1 else "masked (tails)"
            spills = sum("LDL" in op or "STL" in op for op in loop)
            lines.append(f"| {memory} | {prefetch} | {raw_ahead} | {staging} | {cap or '-'} | "
                         f"{nbytes} | {kind} | {per_step:.1f} | {regs} | {spills} | {threads} | "
                         f"{ceiling / 1e12:.2f} TB/s |")
    lines += fast_code_rows(args.capability)
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
