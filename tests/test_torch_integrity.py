"""Integrity in load_model: every weight a model gets from a compressed
directory is covered by a verified checksum before any of its bytes reach
the model, whichever way it is decoded (at load, a block on the fly, the
embedding's rows, the output head, tied weights), and the directory is
checked against its manifest first.

A bit flipped in a tensor's raw section decodes without a murmur (raw fields
are copied as they are, no lane can notice), so only the checksum catches
it: load_model or the first forward must raise an error that names the file
and the tensor, and no forward may return outputs afterwards."""
from __future__ import annotations

import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import floatzip  # noqa: E402
from floatzip.cli import main as cli  # noqa: E402
from floatzip.format.container import FloatzipFile  # noqa: E402
from floatzip.torch.testing import random_model, save_random_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IDS = torch.tensor([[5, 6, 7, 9]])


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    out = {}
    for name, arch, tie in (("llama", "llama", False), ("llama-tied", "llama", True),
                            ("gpt2", "gpt2", None)):
        original = save_random_model(root / name, arch, tie=tie)
        out[name] = root / f"{name}.fz"
        assert cli(["compress", original, str(out[name]), "-q"]) == 0
    sharded = root / "sharded"
    random_model("llama", tie=False).save_pretrained(sharded, max_shard_size="100KB")
    out["sharded"] = root / "sharded.fz"
    assert cli(["compress", str(sharded), str(out["sharded"]), "-q"]) == 0
    return out


def copy_of(path, tmp_path):
    dst = tmp_path / os.path.basename(path)
    shutil.copytree(path, dst)
    return dst


def flip_raw_bit(path, name) -> str:
    """Flip one bit in the middle of the raw section of tensor ``name`` (the
    whole blob for a tensor stored raw or const); returns how it is stored."""
    fz = FloatzipFile(path)
    stored = fz.tensors[name]
    g = stored.geometry
    size = stored.blob_bytes if g is None else g.raw_bytes
    assert size > 2 or stored.codec.codec_id == "const"
    offset = stored.blob_begin + (0 if g is None else g.sections()["raw"][0]) + size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))
    return stored.codec.codec_id


MODES = [("on_the_fly", False), ("on_the_fly", True), ("at_load", None)]

# (model, tensor, how it is stored, what decodes it on the fly)
DAMAGED = [
    ("llama", "model.layers.1.mlp.up_proj.weight", "tans", "block"),
    ("llama", "model.layers.0.input_layernorm.weight", "const", "block"),     # all 1.0
    ("llama", "model.embed_tokens.weight", "tans", "embedding rows"),
    ("llama", "lm_head.weight", "tans", "head"),
    ("llama", "model.norm.weight", "const", "decoded at load"),
    ("llama-tied", "model.embed_tokens.weight", "tans", "embedding rows and tied head"),
    ("gpt2", "transformer.wte.weight", "tans", "embedding rows and tied head"),
    ("gpt2", "transformer.wpe.weight", "tans", "decoded at load"),
    ("gpt2", "transformer.h.1.attn.c_attn.bias", "const", "block"),     # all 0
]


@pytest.mark.parametrize("decode,prefetch", MODES, ids=["on_the_fly", "prefetch", "at_load"])
@pytest.mark.parametrize("model_name,tensor,stored,kind", DAMAGED,
                         ids=[f"{m}:{t}" for m, t, *_ in DAMAGED])
def test_damaged_weight_never_reaches_the_model(packed, tmp_path, model_name, tensor, stored,
                                                kind, decode, prefetch):
    bad = copy_of(packed[model_name], tmp_path)
    path = str(bad / "model.safetensors")
    assert flip_raw_bit(path, tensor) == stored
    errors = []
    try:
        model = floatzip.load_model(bad, decode=decode, prefetch=prefetch)
    except floatzip.CorruptDataError as exc:
        errors.append(exc)
    else:
        assert decode == "on_the_fly" and kind != "decoded at load"
        if kind.startswith("embedding"):
            runtime = model.floatzip_decoder
            assert runtime.units[0].rows is not None        # the row path is what runs
        # Raised by the first forward, and by every one after it: a failed
        # check leaves nothing behind that a later forward would trust.
        for _ in range(2):
            with torch.inference_mode(), pytest.raises(floatzip.CorruptDataError) as info:
                model(IDS)
            errors.append(info.value)
    assert errors
    for exc in errors:
        assert f"{path}: tensor {tensor!r}" in str(exc)
        assert "checksum" in str(exc)


def test_embedding_checked_before_any_row_is_looked_up(packed, tmp_path):
    """On the fly, the embedding is decoded a few rows at a time, which no
    checksum can cover: it is checked whole at load instead."""
    bad = copy_of(packed["llama"], tmp_path)
    path = bad / "model.safetensors"
    flip_raw_bit(str(path), "model.embed_tokens.weight")
    with pytest.raises(floatzip.CorruptDataError,
                       match=f"{path}: tensor 'model.embed_tokens.weight': decoded bytes fail "
                             "their xxh3-64 checksum"):
        floatzip.load_model(bad, prefetch=False)


# -- the directory against its manifest --------------------------------------------------

def shards_of(directory):
    return sorted(p.name for p in directory.glob("model-*.safetensors"))


def refused(directory, *fragments):
    for decode in ("on_the_fly", "at_load"):
        with pytest.raises(floatzip.CorruptDataError) as info:
            floatzip.load_model(directory, decode=decode)
        message = str(info.value)
        assert message.startswith(f"{directory}: does not match its floatzip.json, so "
                                  "load_model refuses it")
        for fragment in fragments:
            assert fragment in message


def test_missing_shard_named(packed, tmp_path):
    bad = copy_of(packed["sharded"], tmp_path)
    gone = shards_of(bad)[1]
    (bad / gone).unlink()
    refused(bad, f"{bad / gone}: listed in floatzip.json but missing")


def test_shard_of_another_size(packed, tmp_path):
    bad = copy_of(packed["sharded"], tmp_path)
    shard = bad / shards_of(bad)[0]
    size = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(b"\0" * 8)
    refused(bad, f"{shard}: {size + 8} bytes, but floatzip.json lists {size}")


def test_unlisted_floatzip_shard(packed, tmp_path):
    bad = copy_of(packed["sharded"], tmp_path)
    extra = bad / "model-00099-of-00099.safetensors"
    shutil.copy(bad / shards_of(bad)[0], extra)
    refused(bad, f"{extra}: a floatzip file that floatzip.json does not list")


def test_manifest_entry_leading_out(packed, tmp_path):
    bad = copy_of(packed["llama"], tmp_path)
    shutil.copy(bad / "model.safetensors", tmp_path / "elsewhere.safetensors")
    manifest = json.loads((bad / "floatzip.json").read_text())
    manifest["files"]["../elsewhere.safetensors"] = dict(manifest["files"]["model.safetensors"])
    (bad / "floatzip.json").write_text(json.dumps(manifest))
    refused(bad, "entry '../elsewhere.safetensors' points outside")


@pytest.mark.parametrize("name", ["config.json", "generation_config.json",
                                  "model.safetensors.index.json"])
def test_changed_file_it_reads(packed, tmp_path, name):
    """A file load_model reads, changed but of the same size (a digit of the
    config: another model, silently) fails the XXH3-64 the manifest lists."""
    bad = copy_of(packed["sharded"], tmp_path)
    path = bad / name
    text = path.read_text()
    digit = next(i for i, c in enumerate(text) if c in "123456789")
    changed = text[:digit] + str(int(text[digit]) % 9 + 1) + text[digit + 1:]
    assert len(changed) == len(text) and changed != text
    path.write_text(changed)
    refused(bad, f"{path}: its XXH3-64 is ", "changed since the directory was compressed")


def test_links_out_of_the_directory_are_checked_like_files(packed, tmp_path):
    # The Hugging Face cache layout: every file a link into a blobs/ folder.
    # It loads (it was refused for a while); a link to other bytes does not.
    cached = copy_of(packed["llama"], tmp_path)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for path in sorted(cached.iterdir()):
        shutil.move(path, blobs / path.name)
        os.symlink(blobs / path.name, path)
    reference = floatzip.load_model(packed["llama"], decode="at_load")
    with torch.inference_mode():
        assert torch.equal(floatzip.load_model(cached)(IDS).logits, reference(IDS).logits)
    other = tmp_path / "other-config.json"
    other.write_text((blobs / "config.json").read_text().replace("2", "3", 1))
    os.unlink(cached / "config.json")
    os.symlink(other, cached / "config.json")
    with pytest.raises(floatzip.FloatzipError, match="config.json"):
        floatzip.load_model(cached)


def test_intact_directory_loads(packed):
    reference = floatzip.load_model(packed["sharded"], decode="at_load")
    model = floatzip.load_model(packed["sharded"])
    with torch.inference_mode():
        assert torch.equal(model(IDS).logits, reference(IDS).logits)


@pytest.mark.parametrize("decode", ["on_the_fly", "at_load"])
def test_device_decoding_checks_checksums_at_load(packed, tmp_path, monkeypatch, decode):
    # The GPU kernels check lane structure only: a flipped raw-section bit
    # decoded there would reach the model. load_model checks every tensor on
    # the CPU first (the Triton path, in its interpreter on the CPU here).
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    bad = copy_of(packed["llama"], tmp_path)
    path = str(bad / "model.safetensors")
    tensor = "model.layers.1.mlp.up_proj.weight"
    flip_raw_bit(path, tensor)
    with pytest.raises(floatzip.CorruptDataError, match=f"{path}: tensor {tensor!r}.*checksum"):
        floatzip.load_model(bad, decode=decode, backend="triton")
    model = floatzip.load_model(bad, decode="at_load", backend="triton", verify=False)
    reference = floatzip.load_model(packed["llama"], decode="at_load")
    with torch.inference_mode():         # unchecked, the damage goes through: what it prevents
        assert not torch.equal(model(IDS).logits, reference(IDS).logits)
