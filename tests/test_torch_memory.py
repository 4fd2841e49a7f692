"""With on-the-fly decoding, resident memory is the compressed weights plus
one block's decoded weights plus activations, not the whole model: peak RSS
measured in separate processes (python -m floatzip.torch.measure)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from floatzip.cli import main as cli  # noqa: E402
from floatzip.torch.testing import save_random_model  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                reason="reads resident memory from /proc")


def measure(directory, how, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "floatzip.torch.measure", str(directory),
                           "--how", how, "--tokens", "2", "--prompt", "16", *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    # ~200 MB of BF16 weights in 24 blocks: the weights, not the imports,
    # make the difference between the runs.
    root = tmp_path_factory.mktemp("memory")
    original = save_random_model(root / "o", "llama", tie=False, vocab_size=512, hidden_size=512,
                                 intermediate_size=2048, num_hidden_layers=24,
                                 num_attention_heads=8, num_key_value_heads=8)
    assert cli(["compress", original, str(root / "p"), "-q"]) == 0
    weights = os.path.getsize(os.path.join(original, "model.safetensors"))
    return original, root / "p", weights


def test_peak_memory_on_the_fly(model_dirs):
    original, packed, weights = model_dirs
    ref = measure(original, "original")
    otf = measure(packed, "on_the_fly", "--prefetch", "off")
    assert otf["digest"] == ref["digest"]            # same logits and tokens, bit for bit
    ref_delta = ref["peak"] - ref["baseline"]        # what loading and running added
    otf_delta = otf["peak"] - otf["baseline"]
    block = otf["slot_bytes"]
    assert block < weights / 20 and otf["slots"] == 1
    # The original holds every weight; the rest of its growth is activations
    # and the like, which the on-the-fly run has too.
    assert ref_delta >= weights
    others = ref_delta - weights
    assert otf_delta <= otf["compressed_bytes"] + block + others + (16 << 20)
    assert otf_delta < 0.85 * ref_delta
    # with prefetch: one more block
    pre = measure(packed, "on_the_fly", "--prefetch", "on")
    assert pre["digest"] == ref["digest"] and pre["slots"] == 2
    assert pre["peak"] - pre["baseline"] <= otf_delta + block + (16 << 20)


@pytest.fixture(scope="module")
def embedding_dirs(tmp_path_factory):
    # A model without an output head whose embedding table (67 MB) is twice
    # its blocks: the original maps its file and reads only the rows a
    # forward looks up, and so must the on-the-fly run.
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("embedding")
    config = transformers.LlamaConfig(vocab_size=131072, hidden_size=256, intermediate_size=1024,
                                      num_hidden_layers=16, num_attention_heads=4,
                                      num_key_value_heads=4, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaModel._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(root / "o")
    assert cli(["compress", str(root / "o"), str(root / "p"), "-q"]) == 0
    return root / "o", root / "p", model.embed_tokens.weight.nbytes


def test_peak_memory_embedding_rows(embedding_dirs):
    """On the fly, the embedding is checked whole at load (row lookups cannot
    be checked on their own) by streaming it through a few MB, and its coded
    table is not left resident: peak RSS stays at the original's, which
    never reads the rows it does not look up. (Before: a scratch copy of the
    whole decoded table at load, and every coded page of it kept mapped in,
    ~+110 MB here.)"""
    from floatzip.torch.block_decoders import VERIFY_CHUNK_BYTES
    original, packed, table_bytes = embedding_dirs
    args = ("--task", "embed", "--batch", "2", "--repeat", "1")
    ref = measure(original, "original", *args)
    otf = measure(packed, "on_the_fly", "--prefetch", "off", *args)
    assert otf["digest"] == ref["digest"]
    ref_delta = ref["peak"] - ref["baseline"]
    otf_delta = otf["peak"] - otf["baseline"]
    # The blocks: the original's decoded and touched, the other's coded plus
    # one block's slot, which is less. What the check at load may add: its
    # two output chunks, and the coded input of one.
    assert otf_delta <= ref_delta + 3 * VERIFY_CHUNK_BYTES, (otf_delta >> 20, ref_delta >> 20)
    assert 3 * VERIFY_CHUNK_BYTES < table_bytes / 4
