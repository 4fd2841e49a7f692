"""Host time on-the-fly decoding adds to each block, decoding left out.

    python benchmarks/bench_hooks.py            # ~30 s on 2 cores

At batch 1 on a GPU an eager forward waits on the host, so every
microsecond the hooks spend per block is latency. This builds a random
32-layer Llama small enough that the host dominates (hidden size 64),
loads it compressed with ``floatzip.load_model`` on the CPU (prefetch off),
replaces each block's decode by its already-decoded views, and times, in
one run:

  plain              the original model's forward (transformers, no hooks)
  floatzip           the same forward through floatzip's hooks, which bind
                     each block's decoded weights before it and unbind them
                     after (``swap_contents``)
  swap_tensors       the same with ``torch.utils.swap_tensors`` doing the
                     swaps (what the hooks used before)

and the hooks' own time per block (enter + exit, called directly). The
forward rows also carry the embedding's row lookup (a real decode of the
rows used) and the head's hooks, spread over the blocks.
Medians of 5 rounds; absolute times depend on the machine, the differences
between rows are the point.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import floatzip  # noqa: E402
from floatzip.torch import runtime as otf_runtime  # noqa: E402
from floatzip.torch.testing import save_random_model  # noqa: E402
from floatzip.torch.weights import swap_contents  # noqa: E402

LAYERS = 32
ROUNDS = 5


def per_call_us(fn, calls: int) -> float:
    rounds = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def main() -> int:
    import transformers
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        src = save_random_model(os.path.join(root, "plain"), "llama", num_hidden_layers=LAYERS)
        floatzip.compress(src, os.path.join(root, "fz"))
        plain = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).eval()
        model = floatzip.load_model(os.path.join(root, "fz"), device="cpu", prefetch=False)
    runtime = model.floatzip_decoder
    for unit in runtime.units:          # decoding left out: the views, decoded once
        if unit.rows is None:
            views = unit.decoder.decode(torch.empty(unit.decoder.nbytes, dtype=torch.uint8))
            unit.decoder.decode = lambda buffer, workers=None, views=views: views
    ids = torch.tensor([[1, 5, 7, 9]])
    blocks = [u for u in runtime.units if u.kind == "block"]

    def forward(m):
        return lambda: m(ids)

    def hooks():
        for unit in blocks:
            runtime._enter(unit, ())
            runtime._exit(unit)

    rows = []
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
        # The hooks call the name runtime.py imported: swap it there.
        for label, swap in (("floatzip", swap_contents),
                            ("swap_tensors", torch.utils.swap_tensors)):
            otf_runtime.swap_contents = swap
            try:
                rows.append((label, per_call_us(forward(model), 20),
                             per_call_us(hooks, 20) / len(blocks)))
            finally:
                otf_runtime.swap_contents = swap_contents
        base = per_call_us(forward(plain), 20)
    print(f"Llama, {LAYERS} layers of hidden size 64, 4 tokens, CPU, torch "
          f"{torch.__version__}, 1 thread; decoding left out\n")
    print("| forward | ms | over plain, per block | hooks alone, per block |")
    print("| --- | --- | --- | --- |")
    print(f"| plain (no hooks) | {base / 1e3:.2f} | | |")
    for label, us, hook_us in rows:
        print(f"| {label} | {us / 1e3:.2f} | {(us - base) / LAYERS:.1f} us | {hook_us:.1f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
