"""The on-the-fly machinery piece by piece: finding the blocks, decoding
parts of a coded tensor, embedding row lookups, the Triton block decoder
(in Triton's interpreter when there is no GPU), and what happens to a
weight used outside its module."""
from __future__ import annotations

import os
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import floatzip  # noqa: E402
from floatzip.cli import main as cli  # noqa: E402
from floatzip.decode import decode_encoded_groups, decode_tensor  # noqa: E402
from floatzip.encode import encode_tensor  # noqa: E402
from floatzip.torch import block_decoders, units, weights  # noqa: E402
from floatzip.torch.testing import random_model, save_random_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_find_block_lists_is_generic():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)])
            self.stack = torch.nn.Sequential(torch.nn.Linear(4, 4))
            self.trunk = torch.nn.ModuleList([Block() for _ in range(3)])
            self.norms = torch.nn.ModuleList([torch.nn.LayerNorm(4) for _ in range(3)])
            self.empty = torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.ReLU()])

    found = units.find_block_lists(Net())
    # heads: mixed classes; norms: too small next to the trunk; empty: no parameters
    assert [name for name, _ in found] == ["trunk"]

    for arch, where in [("llama", "model.layers"), ("gpt2", "transformer.h"),
                        ("gemma", "model.layers")]:
        assert [n for n, _ in units.find_block_lists(random_model(arch))] == [where]


def test_unit_modules_of_a_causal_lm():
    model = random_model("qwen2", tie=False)
    found = units.unit_modules(model)
    assert [(k, n) for k, n, _ in found] == [
        ("embeddings", "model.embed_tokens"), ("block", "model.layers.0"),
        ("block", "model.layers.1"), ("head", "lm_head")]
    names = units.deferrable_parameter_names(model)
    assert "model.layers.1.mlp.up_proj.weight" in names and "lm_head.weight" in names
    assert "model.norm.weight" not in names


@pytest.mark.parametrize("dtype,shape", [("BF16", (300, 70)), ("F32", (129, 33)), ("F16", (64, 1000))])
def test_decode_rows_and_group_ranges(dtype, shape):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    if dtype == "BF16":
        raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    elif dtype == "F16":
        raw = values.astype(np.float16).view(np.uint8)
    else:
        raw = values.view(np.uint8)
    enc = encode_tensor(raw, dtype, shape, lane_symbols=16)
    assert enc.codec == "tans" and enc.geometry.groups > 4
    full = decode_tensor(enc)
    itemsize = full.size // values.size
    g = enc.geometry
    group_bytes = 32 * g.lane_symbols * itemsize
    for g0, g1 in [(0, 1), (1, 3), (g.groups - 2, g.groups), (0, g.groups)]:
        part = decode_encoded_groups(enc, g0, g1).view(np.uint8)
        assert np.array_equal(part, full[g0 * group_bytes:g1 * group_bytes])
    table = full.reshape(shape[0], -1)
    for rows in ([0], [shape[0] - 1], [1, 2, 3, 40, 41, shape[0] - 2], list(range(shape[0]))):
        rows = np.array(rows, dtype=np.int64)
        assert np.array_equal(block_decoders.decode_rows(enc, rows), table[rows])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_decode_into_writes_the_given_buffer(backend):
    rng = np.random.default_rng(1)
    raw = (rng.standard_normal(50_000).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    enc = encode_tensor(raw.view(np.uint8), "BF16", (50_000,), lane_symbols=32)
    out = np.full(enc.original_bytes, 0xA5, dtype=np.uint8)      # poisoned
    block_decoders.decode_into(enc, out, backend=backend, verify=True)
    assert np.array_equal(out, raw.view(np.uint8))


@pytest.fixture(scope="module")
def packed_llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    original = save_random_model(root / "o", "llama", tie=True)
    assert cli(["compress", original, str(root / "p"), "-q"]) == 0
    reference = transformers.AutoModelForCausalLM.from_pretrained(original, local_files_only=True)
    return reference, root / "p"


def test_embedding_rows_match_the_table(packed_llama):
    reference, packed = packed_llama
    model = floatzip.load_model(packed, prefetch=False)
    unit = model.floatzip_decoder.units[0]
    assert unit.kind == "embeddings" and unit.rows is not None
    ids = torch.tensor([[5, 9, 5, 127, 0, 9]])
    table, renumbered = unit.rows.lookup(ids)
    assert table.shape == (4, 64) and renumbered.tolist() == [[1, 2, 1, 3, 0, 2]]
    assert torch.equal(table[renumbered], reference.get_input_embeddings()(ids))
    assert unit.rows.lookup(torch.tensor([[3, 128]])) is None       # out of range
    with torch.inference_mode(), pytest.raises(IndexError):
        model(torch.tensor([[3, 128]]))
    # the failed forward left nothing bound
    assert all(not u.active for u in model.floatzip_decoder.units)
    assert model.get_input_embeddings().weight.device.type == "meta"
    with torch.inference_mode():
        ids = torch.tensor([[3, 4, 5]])
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_weight_used_outside_its_forward_is_a_placeholder(packed_llama):
    reference, packed = packed_llama
    model = floatzip.load_model(packed)
    w = model.model.layers[0].mlp.up_proj.weight
    assert w.device.type == "meta" and w.shape == (128, 64) and not w.requires_grad
    assert isinstance(w, torch.nn.Parameter) and w.dtype == torch.bfloat16
    with pytest.raises(floatzip.FloatzipError,
                       match="model.layers.0.mlp.up_proj.weight is kept compressed.*linear used it"):
        torch.nn.functional.linear(torch.ones(1, 64, dtype=w.dtype), w)
    with pytest.raises(floatzip.FloatzipError, match="model.embed_tokens.weight is kept compressed"):
        model.get_input_embeddings().weight.sum()
    assert model.num_parameters() == reference.num_parameters()
    # the model reports its real device (its first parameter is a placeholder)
    assert model.device == torch.device("cpu")
    assert next(model.parameters()).device.type == "meta"


def test_swap_contents_swaps_as_torch_does(monkeypatch):
    """The hooks' swap: class, attributes and data change places, each
    Python object stays; with autograd holding a tensor, torch's own
    swap_tensors takes over (and refuses or poisons as it does)."""
    weight = torch.nn.Parameter(torch.randn(4, 4), requires_grad=False)
    value = weight.detach().clone()
    holder = weights.placeholder(weight, "layer.weight")
    ids = id(weight), id(holder)
    delegated = []
    monkeypatch.setattr(torch.utils, "swap_tensors", lambda a, b: delegated.append((a, b)))
    weights.swap_contents(weight, holder)          # its own path, not torch's
    assert (id(weight), id(holder)) == ids
    assert type(weight) is weights.CompressedWeight and weight.is_meta
    assert weight.__dict__ == {"_floatzip_name": "layer.weight"}
    assert type(holder) is torch.nn.Parameter and torch.equal(holder, value)
    weights.swap_contents(weight, holder)
    assert type(weight) is torch.nn.Parameter and torch.equal(weight, value)
    assert type(holder) is weights.CompressedWeight and weight.__dict__ == {}
    assert delegated == []

    x = torch.ones(1, 4, requires_grad=True)
    saved = torch.nn.functional.linear(x, weight)     # autograd keeps the weight
    weights.swap_contents(weight, holder)
    assert delegated == [(weight, holder)] and type(weight) is torch.nn.Parameter
    del saved
    watcher = weakref.ref(holder)                     # torch refuses weakly referenced tensors
    weights.swap_contents(weight, holder)
    assert delegated[-1] == (weight, holder) and len(delegated) == 2
    del watcher


def test_close_removes_the_hooks(packed_llama):
    _, packed = packed_llama
    model = floatzip.load_model(packed, prefetch=True)
    with torch.inference_mode():
        model(torch.tensor([[3, 4]]))
    runtime = model.floatzip_decoder
    runtime.close()
    assert all(not u.hooks for u in runtime.units)
    assert model.model.layers[0]._forward_pre_hooks == {}


@pytest.fixture
def triton_device(monkeypatch):
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"


def test_triton_block_decoder(tmp_path, triton_device):
    # Tiny dimensions: the interpreter costs per step of the lane loop.
    original = save_random_model(tmp_path / "o", "llama", tie=False, vocab_size=64,
                                 hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                 num_key_value_heads=1)
    assert cli(["compress", original, str(tmp_path / "p"), "-q"]) == 0
    reference = transformers.AutoModelForCausalLM.from_pretrained(original, local_files_only=True)
    reference.to(triton_device)
    ids = torch.tensor([[3, 4, 5, 6]], device=triton_device)
    for decode in ("on_the_fly", "at_load"):
        model = floatzip.load_model(tmp_path / "p", device=triton_device, backend="triton",
                                    decode=decode)
        if decode == "on_the_fly":
            runtime = model.floatzip_decoder
            assert all(isinstance(u.decoder, block_decoders.TritonBlockDecoder) for u in runtime.units)
            assert not runtime.prefetch and runtime.slots == 0
        with torch.inference_mode():
            assert torch.equal(model(ids).logits, reference(ids).logits)
        if decode == "on_the_fly":
            assert runtime.slots == 1 and runtime.stats.decodes == 4
