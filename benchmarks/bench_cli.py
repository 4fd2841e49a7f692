"""Whole commands on a whole file, as a user times them: `floatzip compress`,
`decompress`, `check` and `verify` next to `zstd -3`, `zstd -d` and `cp` (the
floor: what reading and writing the bytes costs here), each a fresh process
on a file in a warm page cache. compress and decompress run twice: as they
are (waiting for the disk: fsync) and with --no-fsync, which neither zstd
nor cp waits for either. Wall time and peak RSS, median of N runs,
the tools' runs interleaved so that a noisy stretch hits them all alike.

    python benchmarks/bench_cli.py [--size-gb 2] [--runs 5] [--dir DIR] [--keep]

The source is a Llama-shaped BF16 checkpoint of synthetic N(0, 0.02)
weights (the ratio is that of trained BF16 weights within a point; the
timing does not depend on the values' meaning). Before each run, `sync`
flushes the dirty pages the previous run left, so no run pays for another's
writes; outputs are removed between runs. Prints a markdown table; with
--out, also writes it there.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time


def make_checkpoint(path: str, size_gb: float) -> None:
    """Blocks of a Llama-3-8B-shaped model, BF16, until ``size_gb``."""
    import numpy as np      # here only: the timing process stays small
    block = [("q", (4096, 4096)), ("k", (1024, 4096)), ("v", (1024, 4096)),
             ("o", (4096, 4096)), ("gate", (14336, 4096)), ("up", (14336, 4096)),
             ("down", (4096, 14336)), ("norm", (4096,))]
    shapes, total, layer = [], 0, 0
    while total < size_gb * 1e9:
        for name, shape in block:
            shapes.append((f"model.layers.{layer}.{name}.weight", shape))
            total += 2 * int(np.prod(shape))
        layer += 1
    header, offset = {}, 0
    for name, shape in shapes:
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for _, shape in shapes:
            n = int(np.prod(shape))
            for start in range(0, n, 1 << 25):
                x = rng.standard_normal(min(1 << 25, n - start), dtype=np.float32) * 0.02
                f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    os.replace(tmp, path)


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one run of ``cmd``. The RSS comes
    from GNU time, which starts the command from its own small image: a
    child forked from this process would count this process's pages."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr}")
    return wall, int(proc.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=os.path.join(os.path.dirname(__file__), "out", "cli"))
    parser.add_argument("--keep", action="store_true", help="keep the generated source file")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--make", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("needs GNU time at /usr/bin/time (Debian: apt-get install time)")
    if args.make:
        make_checkpoint(args.make, args.size_gb)
        return
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, f"llama-shaped-{args.size_gb:g}gb.safetensors")
    if not os.path.exists(src):         # in a process of its own: this one stays small
        subprocess.run([sys.executable, __file__, "--make", src, "--size-gb", str(args.size_gb)],
                       check=True)
    size = os.path.getsize(src)
    fz, zst = src + ".fz", src + ".zst"
    out = os.path.join(args.dir, "restored.safetensors")
    floatzip = [sys.executable, "-m", "floatzip"]
    zstd = shutil.which("zstd")
    subprocess.run(floatzip + ["compress", "-q", "-f", src, fz], check=True)
    if zstd:
        subprocess.run([zstd, "-q", "-f", "-3", src, "-o", zst], check=True)
    with open(src, "rb") as f:          # warm the page cache
        while f.read(64 << 20):
            pass

    # (label, command, output to remove before the run)
    jobs = [("cp (floor: read + write)", ["cp", src, out], out),
            ("floatzip compress", floatzip + ["compress", "-q", "-f", src, fz], fz),
            ("floatzip compress --no-fsync",
             floatzip + ["compress", "-q", "-f", "--no-fsync", src, fz], fz),
            ("floatzip decompress", floatzip + ["decompress", "-q", "-f", fz, out], out),
            ("floatzip decompress --no-fsync",
             floatzip + ["decompress", "-q", "-f", "--no-fsync", fz, out], out),
            ("floatzip check", floatzip + ["check", fz], None),
            ("floatzip verify", floatzip + ["verify", src, fz], None)]
    if zstd:
        jobs += [("zstd -3", [zstd, "-q", "-f", "-3", src, "-o", zst], zst),
                 ("zstd -d", [zstd, "-q", "-f", "-d", zst, "-o", out], out)]
    results = {label: [] for label, _, _ in jobs}
    for _ in range(args.runs):
        for label, cmd, output in jobs:
            if output and os.path.exists(output):
                os.unlink(output)
            subprocess.run(["sync"], check=True)
            results[label].append(timed(cmd))
    ratio = {"floatzip compress": os.path.getsize(fz) / size}
    if zstd:
        ratio["zstd -3"] = os.path.getsize(zst) / size

    lines = [f"Whole commands on a {size / 1e9:.2f} GB BF16 file ({os.cpu_count()} cores, warm "
             f"page cache, sync before each run), median of {args.runs}; MB/s of the original "
             "file's size.", "",
             "| command | wall s | MB/s | peak RSS MiB | ratio |", "|:--|--:|--:|--:|--:|"]
    for label, _, _ in jobs:
        wall = statistics.median(w for w, _ in results[label])
        rss = max(r for _, r in results[label])
        r = f"{ratio[label]:.4f}" if label in ratio else ""
        lines.append(f"| {label} | {wall:.2f} | {size / wall / 1e6:,.0f} | {rss:,.0f} | {r} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    for path in (fz, zst, out) + (() if args.keep else (src,)):
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
