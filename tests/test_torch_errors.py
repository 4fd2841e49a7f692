"""Bad input to load_model and `floatzip run`: each gets a FloatzipError that
names what is wrong, and the CLI prints it without a traceback."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import xxhash

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import floatzip  # noqa: E402
from floatzip.cli import main as cli  # noqa: E402
from floatzip.torch.testing import random_model, save_random_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    original = save_random_model(root / "original", "llama", tie=False)
    packed = root / "packed"
    assert cli(["compress", original, str(packed), "-q"]) == 0
    sharded = root / "sharded"
    random_model("llama", tie=False).save_pretrained(sharded, max_shard_size="100KB")
    sharded_packed = root / "sharded.fz"
    assert cli(["compress", str(sharded), str(sharded_packed), "-q"]) == 0
    return {"root": root, "original": original, "packed": packed, "sharded": sharded_packed}


def copy_of(path, tmp_path):
    dst = tmp_path / os.path.basename(path)
    shutil.copytree(path, dst)
    return dst


def edit_config(directory, **changes):
    """Change config.json, and its entry in the manifest to match (a config
    changed behind the manifest's back is refused: test_torch_integrity.py)."""
    path = directory / "config.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    data = json.dumps(doc).encode()
    path.write_bytes(data)
    manifest_path = directory / "floatzip.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["copied"]["config.json"] = {"bytes": len(data), "xxh3": xxhash.xxh3_64_hexdigest(data)}
    manifest_path.write_text(json.dumps(manifest))


def test_missing_directory(tmp_path):
    with pytest.raises(floatzip.FormatError, match="does not exist; load_model expects a compressed"):
        floatzip.load_model(tmp_path / "nope")


def test_uncompressed_directory(dirs):
    with pytest.raises(floatzip.FormatError, match=r"not a floatzip model directory \(no floatzip.json\)"):
        floatzip.load_model(dirs["original"])


def test_uncompressed_weights_in_a_compressed_directory(dirs, tmp_path):
    bad = copy_of(dirs["packed"], tmp_path)
    shutil.copy(os.path.join(dirs["original"], "model.safetensors"), bad / "model.safetensors")
    with pytest.raises(floatzip.CorruptDataError,
                       match=r"does not match its floatzip.json, so load_model refuses it \(1 "
                             r"problem\): .*model.safetensors: \d+ bytes, but floatzip.json lists"):
        floatzip.load_model(bad)
    # Also when the manifest does not list it (a directory assembled by hand).
    (bad / "floatzip.json").write_text(json.dumps({"format": "floatzip", "version": 1,
                                                    "files": {}}))
    with pytest.raises(floatzip.FormatError, match="model.safetensors: not a floatzip file"):
        floatzip.load_model(bad)


def test_missing_shard(dirs, tmp_path):
    bad = copy_of(dirs["sharded"], tmp_path)
    shards = sorted(p.name for p in bad.glob("model-*.safetensors"))
    assert len(shards) > 1
    (bad / shards[1]).unlink()
    with pytest.raises(floatzip.FormatError,
                       match=f"{shards[1]}: listed in floatzip.json but missing"):
        floatzip.load_model(bad)
    # Also when the manifest does not list it (a directory assembled by hand).
    manifest = json.loads((bad / "floatzip.json").read_text())
    del manifest["files"][shards[1]]
    (bad / "floatzip.json").write_text(json.dumps(manifest))
    with pytest.raises(floatzip.FormatError, match=f"shards that model.safetensors.index.json "
                                                   f"lists are missing: {shards[1]}"):
        floatzip.load_model(bad)


@pytest.mark.parametrize("name", ["model.safetensors.index.json", "config.json"])
def test_json_that_is_not_utf8(dirs, tmp_path, name):
    # A manifest from before it listed copied files has no checksum to
    # catch this: the reader must still raise floatzip's error, not Python's.
    bad = copy_of(dirs["sharded"], tmp_path)
    manifest = json.loads((bad / "floatzip.json").read_text())
    del manifest["copied"]
    (bad / "floatzip.json").write_text(json.dumps(manifest))
    data = bytearray((bad / name).read_bytes())
    data[len(data) // 2] = 0xA4
    (bad / name).write_bytes(bytes(data))
    with pytest.raises(floatzip.FormatError, match=f"{bad / name}: .*utf-8"):
        floatzip.load_model(bad)


def test_no_weights(dirs, tmp_path):
    bad = copy_of(dirs["packed"], tmp_path)
    (bad / "model.safetensors").unlink()
    (bad / "floatzip.json").write_text(json.dumps({"format": "floatzip", "version": 1, "files": {}}))
    with pytest.raises(floatzip.FormatError, match="no model.safetensors or model.safetensors.index.json"):
        floatzip.load_model(bad)


def test_unknown_model_type(dirs, tmp_path):
    bad = copy_of(dirs["packed"], tmp_path)
    edit_config(bad, model_type="floatzip-imaginary")
    with pytest.raises(floatzip.UnsupportedError,
                       match=r"config.json: model_type 'floatzip-imaginary' is not known to the "
                             r"installed transformers"):
        floatzip.load_model(bad)


def test_unknown_architecture(dirs, tmp_path):
    bad = copy_of(dirs["packed"], tmp_path)
    edit_config(bad, architectures=["LlamaForTimeTravel"])
    with pytest.raises(floatzip.UnsupportedError, match="architecture 'LlamaForTimeTravel' is not in"):
        floatzip.load_model(bad)
    # model_class= overrides it
    model = floatzip.load_model(bad, model_class=transformers.LlamaForCausalLM, decode="at_load")
    assert type(model).__name__ == "LlamaForCausalLM"


def test_config_without_architectures(dirs, tmp_path):
    bad = copy_of(dirs["packed"], tmp_path)
    edit_config(bad, architectures=None)
    with pytest.raises(floatzip.FormatError, match="no 'architectures' entry.*pass model_class="):
        floatzip.load_model(bad)


def test_mismatched_tensor(dirs, tmp_path):
    bad = copy_of(dirs["packed"], tmp_path)
    edit_config(bad, intermediate_size=96)
    with pytest.raises(floatzip.FormatError,
                       match=r"model.safetensors: tensor 'model.layers.0.mlp.down_proj.weight': shape "
                             r"\[64, 128\] does not match 'model.layers.0.mlp.down_proj.weight' of "
                             r"LlamaForCausalLM, which .*config.json makes \[64, 96\]"):
        floatzip.load_model(bad)


def test_corrupt_weights_fail_when_decoded(dirs, tmp_path):
    bad = copy_of(dirs["packed"], tmp_path)
    path = bad / "model.safetensors"
    fz = floatzip.safe_open(path)._file
    t = fz.tensors["model.layers.1.mlp.up_proj.weight"]
    data = bytearray(path.read_bytes())
    data[t.blob_begin + t.blob_bytes - 9] ^= 0x5A          # inside the raw section
    path.write_bytes(bytes(data))
    model = floatzip.load_model(bad)        # nothing decoded yet
    with pytest.raises(floatzip.CorruptDataError, match="tensor 'model.layers.1.mlp.up_proj.weight'"):
        with torch.inference_mode():
            model(torch.tensor([[5, 6, 7]]))
    with pytest.raises(floatzip.CorruptDataError, match="tensor 'model.layers.1.mlp.up_proj.weight'"):
        floatzip.load_model(bad, decode="at_load")


def test_bad_arguments(dirs):
    with pytest.raises(floatzip.UnsupportedError, match="decode must be one of 'on_the_fly', 'at_load'"):
        floatzip.load_model(dirs["packed"], decode="lazy")
    with pytest.raises(floatzip.UnsupportedError, match="not a torch device"):
        floatzip.load_model(dirs["packed"], device="gpu0")
    with pytest.raises(floatzip.UnsupportedError, match="dtype must be"):
        floatzip.load_model(dirs["packed"], dtype="float99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when there is no GPU")
@pytest.mark.parametrize("decode", ["on_the_fly", "at_load"])
def test_cuda_without_cuda(dirs, decode):
    with pytest.raises(floatzip.FloatzipError, match="device='cuda'.*sees no CUDA device"):
        floatzip.load_model(dirs["packed"], device="cuda", decode=decode)


# -- the CLI ---------------------------------------------------------------------------

def test_cli_prints_errors_without_traceback(dirs, capsys):
    assert cli(["run", str(dirs["original"]), "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("floatzip: error: ") and "no floatzip.json" in err
    assert "Traceback" not in err
    assert cli(["run", str(dirs["packed"]), "--text", "hi"]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer files" in err and "Traceback" not in err
    # The model loads before the tokenizer: without CUDA that fails first.
    assert cli(["run", str(dirs["packed"]), "--text", "hi", "--device", "cuda:0"]) == 2
    err = capsys.readouterr().err
    expected = "no tokenizer files" if torch.cuda.is_available() else "sees no CUDA device"
    assert expected in err and "Traceback" not in err
