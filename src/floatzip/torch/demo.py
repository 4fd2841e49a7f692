"""The inference step of `floatzip demo`: run the compressed MiniLM with
on-the-fly decoding and show that its embeddings are the original model's,
bit for bit."""
from __future__ import annotations

import time

import torch

from ..errors import FloatzipError
from .loading import load_model


def mean_pooled(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers makes them for MiniLM:
    the mean over the real tokens, L2-normalised."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp(min=1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def embed_and_compare(original_dir: str, packed_dir: str, sentences) -> int:
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        print(f"5. skipped running the model from compressed weights ({exc})")
        return 0
    hf_logging.disable_progress_bar()      # keep the demo's output readable
    print("5. ran the compressed model with on-the-fly decoding (weights stay compressed in "
          "memory; each block is decoded just before it runs):")
    tokenizer = AutoTokenizer.from_pretrained(original_dir, local_files_only=True)
    batch = tokenizer(list(sentences), padding=True, return_tensors="pt")
    reference = AutoModel.from_pretrained(original_dir, local_files_only=True)
    t0 = time.perf_counter()
    model = load_model(packed_dir, decode="on_the_fly")
    load_s = time.perf_counter() - t0
    if model.dtype != reference.dtype:
        raise FloatzipError(f"{packed_dir}: loaded as {model.dtype}, the original as {reference.dtype}")
    with torch.inference_mode():
        expected = reference(**batch)
        t0 = time.perf_counter()
        got = model(**batch)
        forward_s = time.perf_counter() - t0
    want = mean_pooled(expected.last_hidden_state, batch["attention_mask"])
    have = mean_pooled(got.last_hidden_state, batch["attention_mask"])
    same_hidden = torch.equal(expected.last_hidden_state, got.last_hidden_state)
    for sentence, a, b in zip(sentences, want, have):
        values = ", ".join(f"{v:+.4f}" for v in b[:4].tolist())
        print(f"   {sentence[:44]:<44} [{values}, ...] {'==' if torch.equal(a, b) else '!='} original")
    stats = model.floatzip_decoder.stats
    runtime = model.floatzip_decoder
    print(f"   load {load_s:.2f} s, forward {forward_s:.2f} s: {stats.decoded_bytes / 1e6:.0f} MB "
          f"decoded in {stats.decode_s:.2f} s from {runtime.compressed_bytes / 1e6:.0f} MB kept "
          f"compressed, into {runtime.slots} reused buffer(s) of {runtime.slot_bytes / 1e6:.0f} MB")
    same = same_hidden and torch.equal(want, have)
    print(f"   embeddings ({reference.dtype}, {have.shape[-1]} dims) identical to the original "
          f"model's, bit for bit: {'yes' if same else 'NO'}")
    runtime.close()
    return 0 if same else 1
