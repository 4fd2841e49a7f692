"""Measure one way of running a model, in a process of its own, for the
inference benchmark and the memory test:

    python -m floatzip.torch.measure DIR --how original|at_load|on_the_fly
        [--prefetch auto|on|off] [--memory compact|fast] [--task generate|embed] [--tokens N] [--prompt N] [--repeat N]

prints one JSON object: load time, latencies, decode time, the digest of the
outputs (equal digests = bit-identical outputs), and memory read from
/proc/self/status: the resident set just before loading (``baseline``) and
its peak over the whole process (``peak``, VmHWM)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def memory() -> dict[str, int]:
    """Resident memory of this process, in bytes (Linux)."""
    try:
        with open("/proc/self/status") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        if m:
            out[key] = int(m.group(1)) * 1024
    return out


def _digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _load(args):
    import transformers
    if args.how == "original":
        config = transformers.AutoConfig.from_pretrained(args.dir, local_files_only=True)
        cls = getattr(transformers, config.architectures[0])
        kwargs = {} if args.device == "cpu" else {"device_map": {"": args.device}}
        return cls.from_pretrained(args.dir, dtype="auto", local_files_only=True, **kwargs).eval()
    import floatzip
    prefetch = {"auto": None, "on": True, "off": False}[args.prefetch]
    extra = {"memory": args.memory} if args.how == "on_the_fly" else {}
    return floatzip.load_model(args.dir, device=args.device, decode=args.how, prefetch=prefetch,
                               **extra)


def _sync(device) -> None:
    import torch
    if device != "cpu":
        torch.cuda.synchronize()


def _warm_up_decoder() -> None:
    """Load the coding back end's compiled kernels now, so that neither the
    load time nor the first forward counts JIT work: those for the arrays
    a fresh encode gives, and those for read-only sections, as a memory map
    gives them to the on-the-fly decoder (numba compiles each kind apart;
    where its cache lacks one, compiling it costs tens of MB)."""
    import dataclasses

    import numpy as np

    from floatzip import backends
    from floatzip.decode import decode_tensor
    from floatzip.encode import encode_tensor
    from floatzip.torch.block_decoders import decode_into, decode_rows
    bits = (np.arange(4096, dtype=np.uint16) % 64 + 0x3C00).view(np.uint8)
    enc = encode_tensor(bits, "BF16", (64, 64), lane_symbols=16)
    decode_tensor(enc)

    def read_only(array):
        array = array.copy()
        array.flags.writeable = False
        return array
    mapped = dataclasses.replace(enc, counts=read_only(enc.counts),
                                 lane_sizes=read_only(enc.lane_sizes),
                                 payload=read_only(enc.payload), raw=read_only(enc.raw))
    decode_into(mapped, np.empty(enc.original_bytes, dtype=np.uint8))
    decode_rows(mapped, np.array([0, 63]))
    fast = backends.select_fast_code()
    fast.decode(fast.encode(bits.view(np.uint16)))


def run(args) -> dict:
    import torch
    import transformers
    torch.manual_seed(0)
    # Import what every way needs before the baseline: the model's code, and
    # the decoder's compiled kernels (their memory still counts in the peak).
    config = transformers.AutoConfig.from_pretrained(args.dir, local_files_only=True)
    getattr(transformers, config.architectures[0])
    if args.how != "original":
        _warm_up_decoder()
    base = memory()
    cuda = args.device != "cpu"
    t0 = time.perf_counter()
    model = _load(args)
    _sync(args.device)
    load_s = time.perf_counter() - t0
    if cuda:
        loaded_gpu = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    after_load = memory()
    runtime = getattr(model, "floatzip_decoder", None)
    result = {"how": args.how, "prefetch": runtime.prefetch if runtime else None,
              "memory": args.memory if runtime else None,
              "load_s": load_s, "threads": torch.get_num_threads()}
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    with torch.inference_mode():
        if args.task == "generate":
            ids = torch.randint(3, vocab, (1, args.prompt), generator=g).to(args.device)
            out = model(input_ids=ids, use_cache=True)         # warm-up and first token
            if runtime:
                runtime.synchronize()
                runtime.stats.reset()
            _sync(args.device)
            t = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            _sync(args.device)
            prefill_s = time.perf_counter() - t
            logits = out.logits
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens, steps = [token], []
            for _ in range(args.tokens - 1):
                t = time.perf_counter()
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                _sync(args.device)
                steps.append(time.perf_counter() - t)
                cache = out.past_key_values
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(token)
            result.update(forward_s=prefill_s, token_s=statistics.median(steps),
                          digest=_digest(logits, torch.cat(tokens, 1)),
                          timed_forwards=1 + len(steps), timed_s=prefill_s + sum(steps))
        else:
            batch = torch.randint(1000, min(vocab, 20000), (args.batch, args.prompt), generator=g)
            mask = torch.ones_like(batch)
            mask[1::2, args.prompt // 2:] = 0          # padded rows
            batch, mask = batch.to(args.device), mask.to(args.device)
            model(input_ids=batch, attention_mask=mask)  # warm-up
            if runtime:
                runtime.synchronize()
                runtime.stats.reset()
            times = []
            for _ in range(args.repeat):
                _sync(args.device)
                t = time.perf_counter()
                out = model(input_ids=batch, attention_mask=mask)
                _sync(args.device)
                times.append(time.perf_counter() - t)
            result.update(forward_s=statistics.median(times),
                          digest=_digest(out.last_hidden_state),
                          timed_forwards=len(times), timed_s=sum(times))
    if runtime:
        s = runtime.stats
        result.update(decode_s=s.decode_s, wait_s=s.wait_s, decoded_bytes=s.decoded_bytes,
                      compressed_bytes=runtime.compressed_bytes,
                      fast_code_bytes=runtime.fast_code_bytes, slots=runtime.slots,
                      slot_bytes=runtime.slot_bytes)
    if cuda:
        result.update(gpu_loaded=loaded_gpu, gpu_peak=torch.cuda.max_memory_allocated())
    end = memory()
    result.update(baseline=base.get("VmRSS"), after_load=after_load.get("VmRSS"),
                  peak=end.get("VmHWM"), rss_anon=end.get("RssAnon"), rss_file=end.get("RssFile"))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m floatzip.torch.measure")
    p.add_argument("dir")
    p.add_argument("--how", choices=["original", "at_load", "on_the_fly"], required=True)
    p.add_argument("--prefetch", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--memory", choices=["compact", "fast"], default="compact")
    p.add_argument("--device", default="cpu")
    p.add_argument("--task", choices=["generate", "embed"], default="generate")
    p.add_argument("--tokens", type=int, default=8, help="tokens to generate")
    p.add_argument("--prompt", type=int, default=32, help="prompt / sequence length")
    p.add_argument("--batch", type=int, default=8, help="embed: sentences per batch")
    p.add_argument("--repeat", type=int, default=3, help="embed: timed forwards")
    args = p.parse_args(argv)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
