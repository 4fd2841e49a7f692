"""Format v1 golden files: valid ones decode to pinned bytes forever, damaged
ones fail with a specific message; the worked example of docs/FORMAT.md."""
import hashlib
import json
import os

import numpy as np
import pytest
from conftest import FIXTURES

import floatzip
from floatzip.codecs import tans
from floatzip.codecs.encoded import checksum
from floatzip.format.container import FloatzipFile

V1 = os.path.join(FIXTURES, "v1")
MUST_FAIL = os.path.join(V1, "must_fail")
EXPECTED_ERRORS = json.load(open(os.path.join(MUST_FAIL, "expected_errors.json")))


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# Compressed fixture -> the original it restores. mixed-no-header-checksum
# is mixed.fz.safetensors as floatzip wrote it before the header checksum,
# mixed-unreserved as it wrote it before the streaming writer (the same
# blobs, a header without the spaces that pad it to its reserved length).
VALID = {"example-bf16": "example-bf16", "mixed": "mixed", "mixed-no-header-checksum": "mixed",
         "mixed-unreserved": "mixed"}


@pytest.mark.parametrize("stem", sorted(VALID))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_valid_fixture_restores_original_bytes(tmp_path, stem, backend):
    out = tmp_path / "restored.safetensors"
    packed = os.path.join(V1, stem + ".fz.safetensors")
    floatzip.decompress(packed, out, backend=backend)
    original = os.path.join(V1, VALID[stem] + ".safetensors")
    assert open(out, "rb").read() == open(original, "rb").read()
    assert floatzip.check(packed, backend=backend).ok


def test_written_files_carry_the_header_checksum():
    meta = FloatzipFile(os.path.join(V1, "mixed.fz.safetensors")).header.metadata
    assert meta["floatzip.source_header_xxh3"] == "%016x" % checksum(
        np.frombuffer(meta["floatzip.source_header"].encode(), np.uint8))
    old = FloatzipFile(os.path.join(V1, "mixed-no-header-checksum.fz.safetensors"))
    assert "floatzip.source_header_xxh3" not in old.header.metadata


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_encoder_reproduces_fixture_bytes(tmp_path, backend):
    # The encoder is deterministic and all back ends agree: compressing the
    # fixture's original again gives the committed file exactly.
    out = tmp_path / "mixed.fz.safetensors"
    floatzip.compress(os.path.join(V1, "mixed.safetensors"), out, backend=backend, workers=2)
    assert sha256(out) == sha256(os.path.join(V1, "mixed.fz.safetensors"))


def test_header_reserve_costs_a_few_bytes_a_tensor():
    # The streaming writer reserves room for the widest header the file
    # could need and pads the real one with spaces: the same JSON, the
    # same blobs, a few bytes more a tensor.
    def parts(path):
        data = open(path, "rb").read()
        n = int.from_bytes(data[:8], "little")
        return data[8:8 + n], data[8 + n:]
    new_header, new_data = parts(os.path.join(V1, "mixed.fz.safetensors"))
    old_header, old_data = parts(os.path.join(V1, "mixed-unreserved.fz.safetensors"))
    assert new_data == old_data
    assert json.loads(new_header) == json.loads(old_header)
    assert new_header.rstrip(b" ") == old_header.rstrip(b" ")
    tensors = len(FloatzipFile(os.path.join(V1, "mixed.fz.safetensors")).tensors)
    assert len(new_header) - len(old_header) <= 8 * tensors


def test_fixture_choices_cover_both_codecs():
    fz = FloatzipFile(os.path.join(V1, "mixed.fz.safetensors"))
    codecs = {name: t.params["codec"] for name, t in fz.tensors.items()}
    assert codecs["bf16.all_values"] == codecs["f8.all_values"] == "tans"
    assert codecs["ids"] == codecs["mask"] == codecs["empty"] == "raw"


# Must-fail fixtures that are not damaged, for floatzip check: what it raises.
NOT_DAMAGE = {"not-floatzip.fz.safetensors": floatzip.FormatError,
              "version-2.fz.safetensors": floatzip.UnsupportedError,
              "unknown-codec.fz.safetensors": floatzip.UnsupportedError}


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_must_fail_fixture_is_rejected(tmp_path, name):
    out = tmp_path / "out.safetensors"
    with pytest.raises(floatzip.FloatzipError) as info:
        floatzip.decompress(os.path.join(MUST_FAIL, name), out)
    assert EXPECTED_ERRORS[name] in str(info.value)
    assert name in str(info.value)          # the message names the file
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # check reports the same damage as a problem, naming the file; a plain
    # safetensors file or a newer format is no damage: it raises.
    if name in NOT_DAMAGE:
        with pytest.raises(NOT_DAMAGE[name], match=EXPECTED_ERRORS[name]):
            floatzip.check(os.path.join(MUST_FAIL, name))
    else:
        result = floatzip.check(os.path.join(MUST_FAIL, name))
        assert not result.ok and EXPECTED_ERRORS[name] in result.problems[0]
        assert name in result.problems[0]


def test_worked_example_tables():
    counts = tans.normalize_counts(np.array([3, 4, 1]), 2)
    assert counts.tolist() == [1, 2, 1]
    assert tans.spread_symbols(counts, 2).tolist() == [0, 1, 1, 2]
    table = tans.build_decode_table(counts, 126, 2)
    fields = [(int(e) >> 20, (int(e) >> 16) & 15, int(e) & 0xFFFF) for e in table]
    assert fields == [(126, 2, 0), (127, 1, 0), (127, 1, 2), (128, 2, 0)]


def test_worked_example_blob_bytes():
    fz = FloatzipFile(os.path.join(V1, "example-bf16.fz.safetensors"))
    enc = fz.encoded("x")
    assert enc.counts.tolist() == [1, 2, 1]
    assert enc.lane_sizes.tolist() == [1] * 8 + [0] * 24
    assert bytes(enc.payload) == bytes([0x01, 0x01, 0x00, 0x00, 0x01, 0x03, 0x01, 0x00])
    assert bytes(enc.raw) == bytes([0, 1, 0, 0, 0, 0, 0, 1])
    assert fz.tensors["x"].blob_bytes == 88


def test_compressed_file_is_valid_safetensors():
    from safetensors import safe_open
    path = os.path.join(V1, "mixed.fz.safetensors")
    with safe_open(path, framework="np") as f:
        assert f.metadata()["floatzip.version"] == "1"
        assert set(f.keys()) == set(FloatzipFile(path).tensors)
