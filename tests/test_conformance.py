"""One suite for every back end floatzip has (python-zstandard's habit): the
same bytes as the NumPy reference for every dtype and edge case, the same
errors for the must-fail fixtures. Triton runs in its interpreter
(TRITON_INTERPRET=1, on the CPU); a decode-only back end must refuse to
encode, which is checked, not skipped."""
import json
import os

import numpy as np
import pytest
from conftest import FIXTURES

import floatzip
from floatzip import backends
from floatzip.backends import numpy_ref
from floatzip.codecs.encoded import CODEC_TANS
from floatzip.encode import encode_tensor
from floatzip.dtypes import FLOAT_LAYOUTS
from floatzip.errors import UnsupportedError

MUST_FAIL = os.path.join(FIXTURES, "v1", "must_fail")
EXPECTED_ERRORS = json.load(open(os.path.join(MUST_FAIL, "expected_errors.json")))


@pytest.fixture(params=backends.names())
def backend(request, monkeypatch):
    if request.param == "triton":
        pytest.importorskip("torch")
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")      # the CPU, for tests
    try:
        return backends.select(request.param, device="cpu")
    except UnsupportedError as exc:
        pytest.skip(f"not usable here: {exc}")


def _normal_bits(dtype, count, seed):
    values = np.random.default_rng(seed).standard_normal(count).astype(np.float32) * 0.02
    if dtype == "BF16":
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    if dtype == "F16":
        return values.astype(np.float16).view(np.uint16)
    if dtype == "F32":
        return values.view(np.uint32)
    return (values.astype(np.float16).view(np.uint16) >> 8).astype(np.uint8)


def _f32_specials():
    special = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001,
                        0xFFFFFFFF, 0x00000001, 0x807FFFFF, 0x3F800000], dtype=np.uint32)
    return np.concatenate([special, _normal_bits("F32", 3000, 3)])


# (case, dtype, bits, lane_symbols): every value table, the specials, and
# counts on each side of lane and group boundaries.
CASES = [
    ("bf16-every-value", "BF16", np.arange(65536, dtype=np.uint16), 1024),
    ("f16-every-value", "F16", np.arange(65536, dtype=np.uint16), 64),
    ("f32-specials", "F32", _f32_specials(), 16),
    ("f8e4m3-every-value", "F8_E4M3", np.tile(np.arange(256, dtype=np.uint8), 4), 8),
    ("f8e5m2-every-value", "F8_E5M2", np.tile(np.arange(256, dtype=np.uint8), 4), 8),
] + [(f"bf16-{n}-values", "BF16", _normal_bits("BF16", n, n), 4)
     for n in (1, 31, 33, 128, 129, 5000)]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def coded(request):
    """The case coded by the reference."""
    _, dtype, bits, lane_symbols = request.param
    enc = encode_tensor(bits.view(np.uint8), dtype, bits.shape, backend="numpy",
                        lane_symbols=lane_symbols, table_log=12)
    return dtype, bits, enc


def test_decodes_the_reference_bytes(backend, coded):
    dtype, bits, enc = coded
    if enc.codec != CODEC_TANS:
        pytest.skip("stored raw: no back end involved")
    storage = FLOAT_LAYOUTS[dtype].storage
    args = (enc.geometry, enc.counts, enc.lane_sizes, enc.payload, enc.raw, storage)
    assert np.array_equal(backend.decode(*args), bits)
    out = np.full(bits.size, 0xA5, dtype=storage)
    backend.decode(*args, out=out)
    assert np.array_equal(out, bits)


def test_encodes_the_reference_bytes_or_refuses(backend, coded):
    dtype, bits, enc = coded
    layout = FLOAT_LAYOUTS[dtype]
    top = min(layout.width, 12, layout.exponent_bits + 4)
    if not backend.can_encode:
        with pytest.raises(UnsupportedError, match="numba|numpy"):
            backend.histogram(bits, layout.width, top)
        with pytest.raises(UnsupportedError, match="numba|numpy"):
            backend.encode(bits, {}, np.ones(1, np.uint16))
        return
    assert np.array_equal(backend.histogram(bits, layout.width, top, workers=2),
                          numpy_ref.histogram(bits, layout.width, top))
    if enc.codec != CODEC_TANS:
        return
    lane_sizes, payload, raw = backend.encode(bits, enc.geometry.encode_args(), enc.counts,
                                              workers=2)
    assert np.array_equal(lane_sizes, enc.lane_sizes)
    assert payload.tobytes() == enc.payload.tobytes() and raw.tobytes() == enc.raw.tobytes()


def _outcome(path, out, backend_name):
    """What decompress makes of a file: None, or the error's type and text."""
    try:
        floatzip.decompress(path, out, backend=backend_name, overwrite=True)
    except floatzip.FloatzipError as exc:
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_must_fail_fixtures_fail_alike(backend, name, tmp_path):
    path = os.path.join(MUST_FAIL, name)
    expected = _outcome(path, tmp_path / "ref", "numpy")
    got = _outcome(path, tmp_path / "out", backend.name)
    assert got is not None and got[0] is expected[0], (got, expected)
    assert EXPECTED_ERRORS[name] in got[1]
    assert not (tmp_path / "out").exists()
