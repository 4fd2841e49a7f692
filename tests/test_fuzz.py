"""Fuzzing the reader and decoders: damaged files must raise a FloatzipError
or decode to exactly the original bytes — never crash, hang or return wrong
data. Runs against every back end, since numba does no bounds checks."""

import numpy as np
import pytest
from conftest import bf16_bits, write_safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import floatzip
from floatzip.decode import decode_stored
from floatzip.format.container import FloatzipFile

BACKENDS = ["numpy", "numba"]


@pytest.fixture(scope="module", params=["format-1-features", "format-2-features"])
def valid_file(tmp_path_factory, request):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("fuzz")
    w = (rng.standard_normal(3000) * 0.02).astype(np.float32)
    tensors = [
        ("w", "BF16", [3000], bf16_bits(w)),
        ("h", "F16", [40, 25], w[:1000].astype(np.float16)),
        ("i", "I32", [3], np.arange(3, dtype="<i4")),
    ]
    if request.param == "format-2-features":
        signed = np.where(rng.random(3000) < 0.25, -4 * np.abs(w), np.abs(w))
        tensors = [
            ("w", "F16", [3000], signed.astype(np.float16)),                # sign in symbol
            ("c", "F32", [2000], (bf16_bits(w[:2000]).astype("<u4") << 16)),  # 16 dropped bits
            ("z", "BF16", [64], np.zeros(64, "<u2")),                       # const
            ("i", "I32", [3], np.arange(3, dtype="<i4")),
        ]
    src = write_safetensors(root / "orig.safetensors", tensors)
    packed = root / "orig.fz.safetensors"
    floatzip.compress(src, packed, workers=1)
    params = {name: t.params for name, t in FloatzipFile(packed).tensors.items()}
    # lane_symbols defaults shrink for tiny tensors; make sure tans is exercised
    assert params["w"]["codec"] == "tans"
    if request.param == "format-2-features":
        assert params["w"].get("sign_in_symbol") == 1 and params["c"]["dropped_bits"] == 16
        assert params["z"]["codec"] == "const"
    return src.read_bytes(), packed.read_bytes()


def decode_all(path, backend):
    fz = FloatzipFile(path)
    out = [len(fz.source.raw).to_bytes(8, "little"), fz.source.raw]
    for name in fz.source.tensors:
        out.append(decode_stored(fz, name, backend, 1).tobytes())
    return b"".join(out)


def check_damaged(tmp_path, original, damaged, backend):
    path = tmp_path / f"damaged-{backend}.fz.safetensors"
    path.write_bytes(damaged)
    try:
        restored = decode_all(path, backend)
    except floatzip.FloatzipError:
        return
    assert restored == original


mutation = st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1, max_size=4)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=mutation)
def test_flipped_bytes_anywhere(tmp_path, valid_file, backend, flips):
    original, packed = valid_file
    data = bytearray(packed)
    for position, xor in flips:
        data[position % len(data)] ^= xor
    check_damaged(tmp_path, original, bytes(data), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=mutation)
def test_flipped_bytes_in_the_data_section(tmp_path, valid_file, backend, flips):
    # Most of the file is coded data: aim there, where the decoders are tested.
    original, packed = valid_file
    start = 8 + int.from_bytes(packed[:8], "little")
    data = bytearray(packed)
    for position, xor in flips:
        data[start + position % (len(data) - start)] ^= xor
    check_damaged(tmp_path, original, bytes(data), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 2**31), extra=st.binary(max_size=64))
def test_truncated_or_extended(tmp_path, valid_file, backend, cut, extra):
    original, packed = valid_file
    check_damaged(tmp_path, original, packed[:cut % len(packed)] + extra, backend)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=400))
def test_arbitrary_bytes(tmp_path, blob):
    path = tmp_path / "arbitrary.fz.safetensors"
    path.write_bytes(blob)
    with pytest.raises(floatzip.FloatzipError):
        FloatzipFile(path)


def test_lane_stream_overrun_is_caught_for_every_back_end(tmp_path, valid_file):
    # Zeroed lane sizes shifted around keep the sums right but make lanes
    # read past their ends: decoders must stop at the end check, not crash.
    original, packed = valid_file
    fz = FloatzipFile(_write(tmp_path / "p.fz.safetensors", packed))
    t = fz.tensors["w"]
    lane_off, lane_len = t.geometry.sections()["lane_sizes"]
    data = bytearray(packed)
    sizes = np.frombuffer(packed, "<u2", lane_len // 2, t.blob_begin + lane_off).copy()
    sizes[-1] += sizes[0] - 1
    sizes[0] = 1
    data[t.blob_begin + lane_off:t.blob_begin + lane_off + lane_len] = sizes.tobytes()
    for backend in BACKENDS:
        with pytest.raises(floatzip.CorruptDataError):
            decode_all(_write(tmp_path / f"d-{backend}.fz.safetensors", bytes(data)), backend)


def _write(path, data):
    path.write_bytes(data)
    return path
