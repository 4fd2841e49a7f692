"""`floatzip run DIR --text "..."`: run a compressed model directory by hand.

A model that can generate (a causal LM) continues the text greedily; any
other model (an encoder) prints the mean-pooled embedding of the text."""
from __future__ import annotations

import os
import time

import torch

from ..errors import FormatError
from .loading import load_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt",
                   "vocab.json", "spiece.model")


def _tokenizer(path: str):
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise FormatError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...) to "
                          "turn --text into tokens; copy the original model's tokenizer files "
                          "into the directory")
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"{path}: transformers cannot load its tokenizer ({first})") from None


def run_text(path, text: str, max_new_tokens: int = 20, device="cpu",
             decode: str = "on_the_fly", memory: str = "compact") -> int:
    path = str(path)
    t0 = time.perf_counter()
    model = load_model(path, device=device, decode=decode, memory=memory)
    load_s = time.perf_counter() - t0
    tokenizer = _tokenizer(path)
    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    name = type(model).__name__
    print(f"{name} ({model.dtype}, {decode}) loaded from {path} in {load_s:.2f} s")
    with torch.inference_mode():
        t0 = time.perf_counter()
        if model.can_generate():
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            out = model.generate(input_ids=inputs["input_ids"],
                                 attention_mask=inputs.get("attention_mask"),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            elapsed = time.perf_counter() - t0
            new = out[0, inputs["input_ids"].shape[1]:]
            print(text + tokenizer.decode(new, skip_special_tokens=True))
            print(f"{len(new)} new tokens (greedy) in {elapsed:.2f} s, "
                  f"{elapsed / max(len(new), 1):.3f} s/token")
        else:
            out = model(**inputs, output_hidden_states=True)
            elapsed = time.perf_counter() - t0
            hidden = out.hidden_states[-1] if getattr(out, "hidden_states", None) else out.last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = ((hidden * mask).sum(1) / mask.sum(1)).float()[0]
            values = ", ".join(f"{v:+.4f}" for v in pooled[:6].tolist())
            print(f"embedding of {inputs['input_ids'].shape[1]} tokens: {pooled.numel()} dims, "
                  f"norm {pooled.norm():.4f}, [{values}, ...] in {elapsed:.3f} s")
    runtime = getattr(model, "floatzip_decoder", None)
    if runtime is not None:
        s = runtime.stats
        timing = (f" in {s.decode_s:.2f} s ({s.wait_s:.2f} s not hidden by prefetch)"
                  if runtime.device.type == "cpu" else "")
        print(f"on-the-fly decoding: {runtime.compressed_bytes / 1e6:.1f} MB kept compressed; "
              f"{s.decodes} block decodes, {s.decoded_bytes / 1e6:.1f} MB{timing}")
        runtime.close()
    return 0
