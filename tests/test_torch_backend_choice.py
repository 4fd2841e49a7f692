"""Every entry point that decodes asks floatzip.backends.select for its back
end: $FLOATZIP_BACKEND naming one that cannot decode on the CPU (triton,
outside Triton's interpreter) gives one line of FloatzipError that names a
back end that can, through load_model (both decode modes), the block
decoders and floatzip.safe_open; one that can is used there."""
from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import floatzip  # noqa: E402
from floatzip.cli import main as cli  # noqa: E402
from floatzip.torch import block_decoders  # noqa: E402
from floatzip.torch.loading import CompressedCheckpoint  # noqa: E402
from floatzip.torch.testing import save_random_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CPU = torch.device("cpu")
WEIGHT = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    original = save_random_model(root / "o", "llama", tie=False)
    assert cli(["compress", original, str(root / "p"), "-q"]) == 0
    return root / "p"


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """FLOATZIP_BACKEND=triton where Triton cannot decode: the CPU, outside
    its interpreter."""
    monkeypatch.setenv("FLOATZIP_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def assert_names_a_cpu_back_end(exc_info) -> None:
    """One line, about triton, naming a back end that decodes on the CPU
    (and, where triton imports, the variable to unset)."""
    message = str(exc_info.value)
    assert "\n" not in message and "triton" in message, message
    assert "'numba'" in message or "numba," in message or "numpy" in message, message
    if "is not usable here" not in message:         # triton imports: select refused it
        assert "FLOATZIP_BACKEND" in message, message


def coded_source(packed, key=WEIGHT):
    checkpoint = CompressedCheckpoint(packed)
    src = checkpoint.tensors[key]
    assert src.encoded.codec == "tans"
    return checkpoint, src


@pytest.mark.parametrize("decode", ["on_the_fly", "at_load"])
def test_load_model(packed, triton_on_cpu, decode):
    with pytest.raises(floatzip.FloatzipError) as exc_info:
        floatzip.load_model(packed, decode=decode)
    assert_names_a_cpu_back_end(exc_info)


def test_block_decoders(packed, triton_on_cpu):
    _, src = coded_source(packed)
    param = torch.empty(src.shape, dtype=src.torch_dtype)
    placements = block_decoders.layout([(src, param)])
    with pytest.raises(floatzip.FloatzipError) as exc_info:
        block_decoders.make_block_decoder(placements, CPU)
    assert_names_a_cpu_back_end(exc_info)
    # A CPU decoder built without a back end asks the selector when it decodes.
    decoder = block_decoders.CpuBlockDecoder(placements)
    with pytest.raises(floatzip.FloatzipError) as exc_info:
        decoder.decode(torch.empty(decoder.nbytes, dtype=torch.uint8))
    assert_names_a_cpu_back_end(exc_info)
    rows = block_decoders.EmbeddingRows(placements[0])
    with pytest.raises(floatzip.FloatzipError) as exc_info:
        rows.lookup(torch.tensor([[1, 2]]))
    assert_names_a_cpu_back_end(exc_info)


def test_safe_open(packed, triton_on_cpu):
    with floatzip.safe_open(packed / "model.safetensors", framework="pt") as f:
        for read in (lambda: f.get_tensor(WEIGHT), lambda: f.get_slice(WEIGHT)[1:3],
                     lambda: f.get_bytes(WEIGHT)):
            with pytest.raises(floatzip.FloatzipError) as exc_info:
                read()
            assert_names_a_cpu_back_end(exc_info)


def test_a_back_end_the_variable_names_is_used(packed, monkeypatch):
    monkeypatch.setenv("FLOATZIP_BACKEND", "numpy")
    model = floatzip.load_model(packed, prefetch=False)
    runtime = model.floatzip_decoder
    assert {u.decoder.backend for u in runtime.units} == {"numpy"}
    assert runtime.units[0].rows is not None and runtime.units[0].rows.backend == "numpy"
    monkeypatch.delenv("FLOATZIP_BACKEND")
    reference = floatzip.load_model(packed, decode="at_load")
    with torch.inference_mode():
        ids = torch.tensor([[3, 4, 5]])
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_triton_in_its_interpreter_decodes_blocks_on_the_cpu(packed, monkeypatch):
    """Where triton can decode on the CPU (its interpreter, for tests), the
    selector picks it for the block decoders as for everything else."""
    pytest.importorskip("triton")
    key = "model.layers.0.self_attn.k_proj.weight"          # the smallest coded tensor
    _, src = coded_source(packed, key)
    placements = block_decoders.layout([(src, torch.empty(src.shape, dtype=src.torch_dtype))])
    monkeypatch.setenv("FLOATZIP_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    decoder = block_decoders.make_block_decoder(placements, CPU)
    assert isinstance(decoder, block_decoders.TritonBlockDecoder)
    (view,) = decoder.decode(torch.empty(decoder.nbytes, dtype=torch.uint8))
    monkeypatch.delenv("FLOATZIP_BACKEND")
    with floatzip.safe_open(packed / "model.safetensors", framework="pt") as f:
        assert torch.equal(view, f.get_tensor(key))
