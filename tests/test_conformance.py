"""One suite for every back end floatzip has (python-zstandard's habit): the
same bytes as the NumPy reference for every dtype and edge case, the same
errors for the must-fail fixtures. Triton runs in its interpreter
(TRITON_INTERPRET=1, on the CPU); a decode-only back end must refuse to
encode, which is checked, not skipped."""
import json
import os

import numpy as np
import pytest
from conftest import FIXTURES, explicit_args

import floatzip
from floatzip import backends
from floatzip.backends import numpy_ref
from floatzip.codecs.encoded import CODEC_TANS, EncodedTensor, checksum
from floatzip.codecs.layout import CodedGeometry
from floatzip.encode import encode_tensor
from floatzip.dtypes import FLOAT_LAYOUTS
from floatzip.errors import UnsupportedError

# "v1/name.fz.safetensors" -> the words its error must contain, both versions.
EXPECTED_ERRORS = {
    f"{version}/{name}": words
    for version in ("v1", "v2")
    for name, words in json.load(open(os.path.join(FIXTURES, version, "must_fail",
                                                   "expected_errors.json"))).items()}


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



def _low_bits_set(bits, dropped_bits, dropped_value):
    """``bits`` with their low ``dropped_bits`` bits set to ``dropped_value``."""
    mask = bits.dtype.type((1 << dropped_bits) - 1)
    return (bits & ~mask) | bits.dtype.type(dropped_value)


# Format 2's mappings, forced (the encoder would store these raw or pick
# another): (case, dtype, bits, lane_symbols, symbol_bits, sign_in_symbol,
# dropped_bits, dropped_value).
MAPPED = [
    ("bf16-every-value-sign-in-symbol", "BF16", np.arange(65536, dtype=np.uint16), 1024,
     12, 1, 0, 0),
    ("f16-every-value-sign-in-symbol", "F16", np.arange(65536, dtype=np.uint16), 64, 6, 1, 0, 0),
    ("bf16-dropped", "BF16", _low_bits_set(np.arange(65536, dtype=np.uint16), 3, 5), 256,
     10, 0, 3, 5),
    ("bf16-dropped-whole-word", "BF16", _low_bits_set(np.arange(65536, dtype=np.uint16), 5, 17),
     32, 11, 0, 5, 17),
    ("bf16-all-mantissa-dropped-sign-in-symbol", "BF16",
     _low_bits_set(np.arange(65536, dtype=np.uint16), 7, 0x55), 128, 8, 1, 7, 0x55),
    ("f32-specials-sign-in-symbol-dropped", "F32", _low_bits_set(_f32_specials(), 9, 0x101), 16,
     12, 1, 9, 0x101),
    ("f8e4m3-every-value-sign-in-symbol", "F8_E4M3",
     np.tile(np.arange(256, dtype=np.uint8), 4), 8, 5, 1, 0, 0),
    ("f8e5m2-dropped", "F8_E5M2", _low_bits_set(np.tile(np.arange(256, dtype=np.uint8), 4), 1, 1),
     8, 7, 0, 1, 1),
    ("bf16-129-values-sign-in-symbol-dropped", "BF16",
     _low_bits_set(_normal_bits("BF16", 129, 129), 2, 0), 4, 9, 1, 2, 0),
]


def forced_encoding(dtype, bits, lane_symbols, symbol_bits, sign_in_symbol, dropped_bits,
                    dropped_value) -> EncodedTensor:
    """``bits`` coded by the reference with exactly this mapping."""
    args, counts = explicit_args(bits, dtype, symbol_bits, 12, lane_symbols,
                                 sign_in_symbol=sign_in_symbol, dropped_bits=dropped_bits,
                                 dropped_value=dropped_value)
    lane_sizes, payload, raw = numpy_ref.encode(bits, args, counts)
    g = CodedGeometry(count=bits.size, table_symbols=counts.size,
                      payload_bytes=int(payload.size), **args)
    return EncodedTensor(dtype, bits.shape, CODEC_TANS, checksum(bits), g, counts, lane_sizes,
                         payload, raw)


@pytest.fixture(scope="module", params=CASES + MAPPED, ids=[c[0] for c in CASES + MAPPED])
def coded(request):
    """The case coded by the reference."""
    _, dtype, bits, lane_symbols, *mapping = request.param
    if mapping:
        return dtype, bits, forced_encoding(dtype, bits, lane_symbols, *mapping)
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
    top = min(layout.width - 1, 12, layout.exponent_bits + 4)
    if not backend.can_encode:
        with pytest.raises(UnsupportedError, match="numba|numpy"):
            backend.statistics(bits, layout.width, top)
        with pytest.raises(UnsupportedError, match="numba|numpy"):
            backend.encode(bits, {}, np.ones(1, np.uint16))
        return
    counts, varying = backend.statistics(bits, layout.width, top, workers=2)
    ref_counts, ref_varying = numpy_ref.statistics(bits, layout.width, top)
    assert np.array_equal(counts, ref_counts) and varying == ref_varying
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
    version, file = name.split("/")
    path = os.path.join(FIXTURES, version, "must_fail", file)
    expected = _outcome(path, tmp_path / "ref", "numpy")
    got = _outcome(path, tmp_path / "out", backend.name)
    assert got is not None and got[0] is expected[0], (got, expected)
    assert EXPECTED_ERRORS[name] in got[1]
    assert not (tmp_path / "out").exists()
