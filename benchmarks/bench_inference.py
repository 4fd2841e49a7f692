"""Inference from compressed weights: memory and latency against the original.

    python benchmarks/bench_inference.py                 # 1B Llama + MiniLM, ~10 min on 2 cores
    python benchmarks/bench_inference.py --llama small   # a 100M Llama, ~2 min
    python benchmarks/bench_inference.py --device cuda   # the same on a GPU

For each model, every way of running it is measured in a process of its own
(``python -m floatzip.torch.measure``), so peak RSS is that run's alone:

  original            transformers' from_pretrained on the uncompressed files
  at_load             floatzip.load_model(decode="at_load"): decode once
  on_the_fly          floatzip.load_model(): weights stay compressed in memory,
                      each block decoded just before it runs (prefetch off, and on)
  on_the_fly fast     the same with memory="fast": BF16 weights transcoded at load
                      into the fast in-memory code (docs/FAST_CODE.md)

With --rounds N every way runs N times, the ways interleaved round by round
(the machine's noise then hits all of them alike), and each row is the
round with the median latency.

The Llama (random weights, BF16, TinyLlama-1.1B's shape) is built on the fly
into a scratch directory and compressed with the CLI; nothing is stored in
git. Causal LM: a 32-token prompt (the "forward"), then greedy decoding with
a KV cache ("token" = median time of one new token). MiniLM: a padded batch
of 8 x 32 tokens, median of 3 forwards. "outputs" compares a digest of the
logits and tokens (hidden states for MiniLM) with the original run's.
"decode" is time spent decoding per forward, "stall" the part of it the
forward waited for (all of it without prefetch).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = [("original", []), ("at_load", []),
        ("on_the_fly", ["--prefetch", "off"]), ("on_the_fly", ["--prefetch", "on"]),
        ("on_the_fly", ["--prefetch", "off", "--memory", "fast"]),
        ("on_the_fly", ["--prefetch", "on", "--memory", "fast"])]
SMALL_LLAMA = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                   num_attention_heads=12, num_key_value_heads=4, vocab_size=32000)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(directory: str, how: str, extra, args, task: str) -> dict:
    cmd = [sys.executable, "-m", "floatzip.torch.measure", directory, "--how", how,
           "--task", task, "--device", args.device, *extra]
    if task == "generate":
        cmd += ["--tokens", str(args.tokens), "--prompt", "32"]
    else:
        cmd += ["--batch", "8", "--prompt", "32", "--repeat", "3"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"   {how} {' '.join(extra)}: {time.perf_counter() - t0:.0f} s")
    return result


def build_llama(root: str, size: str) -> tuple[str, str, dict]:
    from floatzip.cli import main as cli
    from floatzip.torch.testing import save_random_llama
    original, packed = os.path.join(root, "llama"), os.path.join(root, "llama.fz")
    t0 = time.perf_counter()
    save_random_llama(original, **(SMALL_LLAMA if size == "small" else {}))
    log(f"built a random Llama ({size}) in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    if cli(["compress", original, packed, "-q", "--force"]) != 0:
        raise SystemExit("compression failed")
    info = {"compress_s": time.perf_counter() - t0}
    return original, packed, info


def build_minilm(root: str) -> tuple[str, str, dict]:
    from floatzip.cli import main as cli
    from floatzip.demo import bundled_model_dir, write_bf16_copy
    original, packed = os.path.join(root, "minilm-bf16"), os.path.join(root, "minilm-bf16.fz")
    write_bf16_copy(bundled_model_dir(), original)
    t0 = time.perf_counter()
    if cli(["compress", original, packed, "-q", "--force"]) != 0:
        raise SystemExit("compression failed")
    return original, packed, {"compress_s": time.perf_counter() - t0}


def median_round(results: list[dict], task: str) -> dict:
    """Of one way's rounds, the one with the median latency, with every
    round's latency kept (``latencies``)."""
    key = "token_s" if task == "generate" else "forward_s"
    ordered = sorted(results, key=lambda r: r[key])
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["latencies"] = [r[key] for r in results]
    return row


def weights_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
               if f.endswith(".safetensors"))


def gb(n) -> str:
    return "-" if n is None else f"{n / 1e9:.2f}"


def table(name: str, original: str, packed: str, rows: list[dict], task: str, device: str) -> str:
    ref = rows[0]
    wb, cb = weights_bytes(original), weights_bytes(packed)
    lines = [f"### {name}: {wb / 1e9:.2f} GB of weights, {cb / 1e9:.2f} GB compressed "
             f"(ratio {cb / wb:.3f})", ""]
    mem = "peak GPU GB" if device != "cpu" else "peak RSS GB"
    unit = "token s" if task == "generate" else "-"
    lines.append(f"| run | load s | {mem} | vs original | above baseline GB | kept GB | "
                 f"forward s | {unit} | vs original | decode s/fwd | stall s/fwd | outputs |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        fast = r.get("memory") == "fast"
        label = r["how"] + ("" if r["how"] != "on_the_fly" else
                            (" fast" if fast else "") +
                            (" (prefetch)" if r["prefetch"] else " (no prefetch)"))
        # What the weights decoded on the fly are kept as: the file's code
        # (memory-mapped), or the fast code (row-looked-up embeddings stay
        # in the file's code and are not counted there).
        kept = ("-" if r["how"] != "on_the_fly" else
                gb(r["fast_code_bytes"] if fast else r["compressed_bytes"]))
        if device != "cpu":
            peak, ref_peak, above = r["gpu_peak"], ref["gpu_peak"], None
        else:
            peak, ref_peak, above = r["peak"], ref["peak"], r["peak"] - r["baseline"]
        latency = r.get("token_s") if task == "generate" else None
        ref_latency = ref.get("token_s") if task == "generate" else ref["forward_s"]
        mine = latency if task == "generate" else r["forward_s"]
        n = r["timed_forwards"]
        decode = f"{r['decode_s'] / n:.3f}" if "decode_s" in r and device == "cpu" else "-"
        stall = f"{r['wait_s'] / n:.3f}" if "wait_s" in r and device == "cpu" else "-"
        lines.append(
            f"| {label} | {r['load_s']:.2f} | {gb(peak)} | {peak / ref_peak:.2f}x | {gb(above)} | "
            f"{kept} | "
            f"{r['forward_s']:.3f} | {'-' if latency is None else f'{latency:.3f}'} | "
            f"{mine / ref_latency:.2f}x | {decode} | {stall} | "
            f"{'identical' if r['digest'] == ref['digest'] else 'DIFFERENT'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llama", choices=["1b", "small", "none"], default="1b")
    p.add_argument("--no-minilm", action="store_true")
    p.add_argument("--tokens", type=int, default=8, help="new tokens per causal-LM run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every way")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", default=None, help="also write the tables (markdown) and the raw "
                                               "results (json) under this directory")
    args = p.parse_args(argv)
    root = args.workdir or tempfile.mkdtemp(prefix="floatzip-bench-")
    os.makedirs(root, exist_ok=True)
    started = time.perf_counter()
    import torch
    sections, raw = [], {}
    try:
        jobs = []
        if args.llama != "none":
            jobs.append(("Llama " + ("1.1B" if args.llama == "1b" else "small") +
                         " (random weights, BF16)", "generate", lambda: build_llama(root, args.llama)))
        if not args.no_minilm:
            jobs.append(("all-MiniLM-L6-v2 (BF16)", "embed", lambda: build_minilm(root)))
        for name, task, build in jobs:
            log(f"{name}:")
            original, packed, info = build()
            log(f"   compressed in {info['compress_s']:.0f} s")
            runs = RUNS if args.device == "cpu" else RUNS[:3]    # the GPU path has no prefetch thread
            rounds = [[measure(original if how == "original" else packed, how, extra, args, task)
                       for how, extra in runs] for _ in range(args.rounds)]
            rows = [median_round([r[i] for r in rounds], task) for i in range(len(runs))]
            raw[name] = rows
            sections.append(table(name, original, packed, rows, task, args.device))
            shutil.rmtree(original, ignore_errors=True)
            shutil.rmtree(packed, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    header = (f"## Inference from compressed weights ({args.device}, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; {args.rounds} interleaved round(s), median; "
              f"{time.perf_counter() - started:.0f} s)")
    text = "\n\n".join([header] + sections)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "inference.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(args.out, "inference.json"), "w") as f:
            json.dump(raw, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
