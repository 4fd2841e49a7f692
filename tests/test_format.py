"""Format v1 and v2 golden files: valid ones decode to pinned bytes forever,
damaged ones fail with a specific message; the worked example of
docs/FORMAT.md."""
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
V2 = os.path.join(FIXTURES, "v2")


def _must_fail(folder):
    listing = json.load(open(os.path.join(folder, "must_fail", "expected_errors.json")))
    return {os.path.join(os.path.basename(folder), name): words for name, words in listing.items()}


# "v1/name.fz.safetensors" -> the words its error must contain.
EXPECTED_ERRORS = {**_must_fail(V1), **_must_fail(V2)}


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# Compressed fixture -> the original it restores. mixed-no-header-checksum
# is mixed.fz.safetensors as floatzip wrote it before the header checksum,
# mixed-unreserved as it wrote it before the streaming writer (the same
# blobs, a header without the spaces that pad it to its reserved length).
VALID = {"v1/example-bf16": "example-bf16", "v1/mixed": "mixed",
         "v1/mixed-no-header-checksum": "mixed", "v1/mixed-unreserved": "mixed",
         "v2/example-bf16": "example-bf16", "v2/mixed": "mixed"}


@pytest.mark.parametrize("stem", sorted(VALID))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_valid_fixture_restores_original_bytes(tmp_path, stem, backend):
    out = tmp_path / "restored.safetensors"
    packed = os.path.join(FIXTURES, stem + ".fz.safetensors")
    floatzip.decompress(packed, out, backend=backend)
    original = os.path.join(FIXTURES, os.path.dirname(stem), VALID[stem] + ".safetensors")
    assert open(out, "rb").read() == open(original, "rb").read()
    assert floatzip.check(packed, backend=backend).ok


def test_written_files_carry_the_header_checksum():
    meta = FloatzipFile(os.path.join(V1, "mixed.fz.safetensors")).header.metadata
    assert meta["floatzip.source_header_xxh3"] == "%016x" % checksum(
        np.frombuffer(meta["floatzip.source_header"].encode(), np.uint8))
    old = FloatzipFile(os.path.join(V1, "mixed-no-header-checksum.fz.safetensors"))
    assert "floatzip.source_header_xxh3" not in old.header.metadata


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("version", [1, 2])
def test_encoder_reproduces_fixture_bytes(tmp_path, backend, version):
    # The encoder is deterministic and all back ends agree: compressing the
    # fixture's original again gives the committed file exactly; asked for
    # format 1 and 0.1's lane length, today's encoder writes floatzip 0.1's bytes.
    folder = V1 if version == 1 else V2
    out = tmp_path / "mixed.fz.safetensors"
    floatzip.compress(os.path.join(folder, "mixed.safetensors"), out, backend=backend, workers=2,
                      format_version=version, lane_symbols=1024 if version == 1 else 2048)
    assert sha256(out) == sha256(os.path.join(folder, "mixed.fz.safetensors"))


def test_v2_fixture_uses_what_format_2_adds():
    fz = FloatzipFile(os.path.join(V2, "mixed.fz.safetensors"))
    params = {name: t.params for name, t in fz.tensors.items()}
    assert fz.version == 2
    assert params["norm.ones"]["codec"] == params["bias.zeros"]["codec"] == "const"
    assert params["f32.cast_up"]["dropped_bits"] == 16
    assert params["f16.signed"]["sign_in_symbol"] == 1
    assert "sign_in_symbol" not in params["bf16.weight"]       # zero fields are left out
    assert fz.tensors["norm.ones"].blob_bytes == 2


def test_a_file_needing_nothing_of_format_2_says_version_1(tmp_path):
    # Readable by floatzip 0.1: the version is the highest its tensors need.
    src = os.path.join(V1, "example-bf16.safetensors")
    floatzip.compress(src, tmp_path / "x.fz", backend="numpy")
    assert FloatzipFile(str(tmp_path / "x.fz")).version == 1


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
NOT_DAMAGE = {"v1/not-floatzip.fz.safetensors": floatzip.FormatError,
              "v2/version-3.fz.safetensors": floatzip.UnsupportedError,
              "v1/unknown-codec.fz.safetensors": floatzip.UnsupportedError}


def must_fail_path(name):
    """"v1/x.fz.safetensors" -> its path."""
    version, file = name.split("/")
    return os.path.join(FIXTURES, version, "must_fail", file)


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_must_fail_fixture_is_rejected(tmp_path, name):
    out = tmp_path / "out.safetensors"
    path = must_fail_path(name)
    with pytest.raises(floatzip.FloatzipError) as info:
        floatzip.decompress(path, out)
    assert EXPECTED_ERRORS[name] in str(info.value)
    assert os.path.basename(name) in str(info.value)          # the message names the file
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # check reports the same damage as a problem, naming the file; a plain
    # safetensors file or a newer format is no damage: it raises.
    if name in NOT_DAMAGE:
        with pytest.raises(NOT_DAMAGE[name], match=EXPECTED_ERRORS[name]):
            floatzip.check(path)
    else:
        result = floatzip.check(path)
        assert not result.ok and EXPECTED_ERRORS[name] in result.problems[0]
        assert os.path.basename(name) in result.problems[0]


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


def test_format_version_is_checked_and_reaches_the_cli(tmp_path):
    src = os.path.join(V2, "mixed.safetensors")
    with pytest.raises(floatzip.UnsupportedError, match="format_version must be 1 to 2"):
        floatzip.compress(src, tmp_path / "x.fz", format_version=3)
    from floatzip.cli import main
    assert main(["compress", "-q", "--format-version", "1", src, str(tmp_path / "v1.fz")]) == 0
    fz = FloatzipFile(str(tmp_path / "v1.fz"))
    assert fz.version == 1 and {t.params["codec"] for t in fz.tensors.values()} <= {"raw", "tans"}
    floatzip.decompress(tmp_path / "v1.fz", tmp_path / "back.safetensors")
    assert open(tmp_path / "back.safetensors", "rb").read() == open(src, "rb").read()


def test_constant_tensors_of_every_whole_byte_dtype_are_one_element(tmp_path):
    from conftest import write_safetensors
    tensors = [("i64", "I64", [1000], np.full(1000, 7, "<i8")),
               ("mask", "BOOL", [300], np.ones(300, np.uint8)),
               ("f64", "F64", [10], np.full(10, -0.0, "<f8")),
               ("nan", "F32", [50], np.full(50, 0x7FC00123, "<u4")),   # one NaN payload
               ("one", "I32", [1], np.array([5], "<i4")),                # a single element: raw
               ("mixed", "I16", [3], np.array([1, 1, 2], "<i2"))]
    src = write_safetensors(tmp_path / "c.safetensors", tensors)
    floatzip.compress(src, tmp_path / "c.fz")
    fz = FloatzipFile(str(tmp_path / "c.fz"))
    codecs = {name: t.params["codec"] for name, t in fz.tensors.items()}
    assert codecs == {"i64": "const", "mask": "const", "f64": "const", "nan": "const",
                      "one": "raw", "mixed": "raw"}
    assert fz.tensors["i64"].blob_bytes == 8 and fz.version == 2
    assert floatzip.verify(src, tmp_path / "c.fz").ok
    with floatzip.safe_open(tmp_path / "c.fz", framework="np") as f:
        assert f.get_slice("i64")[10:20].tolist() == [7] * 10


def test_info_bound_counts_unbounded_tensors_as_stored(tmp_path):
    # An I64 buffer of zeros has no bound_bits; stored const (8 bytes), it
    # must not count as 800 KB in the file's bound.
    from conftest import bf16_bits, write_safetensors
    from floatzip.info import summarize
    rng = np.random.default_rng(0)
    src = write_safetensors(tmp_path / "b.safetensors", [
        ("w", "BF16", [100_000], bf16_bits(rng.standard_normal(100_000) * 0.02)),
        ("mask", "I64", [100_000], np.zeros(100_000, "<i8"))])
    floatzip.compress(src, tmp_path / "b.fz")
    total = summarize(str(tmp_path / "b.fz"))
    assert total["bound_ratio"] <= total["ratio"] < 0.2
