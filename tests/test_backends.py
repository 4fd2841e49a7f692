"""Every back end against the NumPy reference, byte for byte.

The numba back end must give the reference's lane sizes, payload and raw
bytes exactly, decode them to the original values, and reject corrupt
streams exactly when the reference does. Both of its kernels (SIMD and
scalar) are checked on every machine.
"""
from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
from conftest import explicit_args

from floatzip.backends import numpy_ref
from floatzip.codecs import model, tans
from floatzip.decode import decode_tensor
from floatzip.encode import encode_tensor
from floatzip.codecs.layout import CodedGeometry
from floatzip.dtypes import FLOAT_LAYOUTS
from floatzip.errors import CorruptDataError

nb = pytest.importorskip("floatzip.backends.numba")
from floatzip.backends.numba import decoder, dispatch, encoder, threads

RNG_SEED = 20240607
# table_log 1 and 3 work once tans.spread_step is odd for them (it was not at first).
ODD_SMALL_LOGS = tuple(t for t in (1, 3) if tans.spread_step(t) % 2)


@pytest.fixture(params=[True, False], ids=["simd", "scalar"])
def kernel(request, monkeypatch):
    """Run the test once with each numba kernel, and split even small
    tensors between threads."""
    monkeypatch.setattr(dispatch, "use_simd", request.param)
    monkeypatch.setattr(threads, "MIN_VALUES_PER_JOB", 1)
    return request.param


# -- test data -------------------------------------------------------------

def normal_bits(dtype: str, n: int, scale: float, rng) -> np.ndarray:
    """N(0, scale) weights rounded to ``dtype``, as their unsigned bits."""
    x = rng.normal(0.0, scale, n).astype(np.float32)
    if dtype == "F32":
        return x.view(np.uint32)
    if dtype == "F16":
        return x.astype(np.float16).view(np.uint16)
    if dtype == "BF16":    # round to nearest even on the top 16 bits
        b = x.view(np.uint32).astype(np.uint64)
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return fp8_round(x, FLOAT_LAYOUTS[dtype])


def fp8_values(layout) -> np.ndarray:
    """float64 value of each of the 256 codes (NaN for the top exponent)."""
    code = np.arange(256)
    m = layout.mantissa_bits
    bias = (1 << (layout.exponent_bits - 1)) - 1
    exp = (code >> m) & ((1 << layout.exponent_bits) - 1)
    frac = (code & ((1 << m) - 1)) / (1 << m)
    mag = np.where(exp == 0, frac * 2.0 ** (1 - bias), (1 + frac) * 2.0 ** (exp - bias))
    mag = np.where(exp == (1 << layout.exponent_bits) - 1, np.nan, mag)
    return np.where(code >> 7, -mag, mag)


def fp8_round(x: np.ndarray, layout) -> np.ndarray:
    values = fp8_values(layout)
    finite = np.flatnonzero(np.isfinite(values))
    order = finite[np.argsort(values[finite], kind="stable")]
    sorted_values = values[order]
    i = np.clip(np.searchsorted(sorted_values, x), 1, len(order) - 1)
    nearer_low = np.abs(x - sorted_values[i - 1]) <= np.abs(sorted_values[i] - x)
    return order[np.where(nearer_low, i - 1, i)].astype(np.uint8)


def model_args(bits, dtype, lane_symbols=model.DEFAULT_LANE_SYMBOLS):
    layout = FLOAT_LAYOUTS[dtype]
    stats, varying = numpy_ref.statistics(bits, layout.width, model.histogram_bits(layout))
    choice = model.choose_coding(stats, layout, bits.size, varying=varying,
                                 first_value=int(bits[0]), lane_symbols=lane_symbols)
    assert choice is not None, "test data should be compressible"
    args = model.geometry_for(choice, layout, bits.size, 0).encode_args()
    return args, choice.counts


def geometry(bits, args, counts, payload) -> CodedGeometry:
    return CodedGeometry(count=bits.size, table_symbols=len(counts),
                         payload_bytes=int(payload.size), **args)


_reference_cache: dict = {}


def reference(bits, args, counts):
    """numpy_ref's encoding, computed once per input (it is slow)."""
    key = (bits.tobytes(), tuple(sorted(args.items())), counts.tobytes())
    if key not in _reference_cache:
        _reference_cache[key] = numpy_ref.encode(bits, args, counts)
    return _reference_cache[key]


def check_identical(bits, args, counts, workers=(1, 3)):
    """numba encodes ``bits`` to numpy_ref's bytes and decodes them back."""
    ref_sizes, ref_payload, ref_raw = reference(bits, args, counts)
    geo = geometry(bits, args, counts, ref_payload)
    for w in workers:
        sizes, payload, raw = nb.encode(bits, args, counts, workers=w)
        assert sizes.dtype == np.uint16 and payload.dtype == np.uint8 and raw.dtype == np.uint8
        np.testing.assert_array_equal(sizes, ref_sizes)
        np.testing.assert_array_equal(payload, ref_payload)
        np.testing.assert_array_equal(raw, ref_raw)
        decoded = nb.decode(geo, counts, ref_sizes, ref_payload, ref_raw, bits.dtype, workers=w)
        assert decoded.dtype == bits.dtype
        np.testing.assert_array_equal(decoded, bits)
    return geo


# -- byte-identical streams --------------------------------------------------

@pytest.mark.parametrize("dtype,scale", [
    ("BF16", 0.02), ("BF16", 1.0), ("BF16", 1e-30),
    ("F16", 0.02), ("F16", 30.0),
    ("F32", 0.02), ("F32", 1e5),
    ("F8_E4M3", 0.5), ("F8_E4M3", 40.0),
    ("F8_E5M2", 0.02), ("F8_E5M2", 3.0),
])
def test_normal_weights(kernel, dtype, scale):
    rng = np.random.default_rng(RNG_SEED)
    bits = normal_bits(dtype, 70_001, scale, rng)          # 2 groups and a bit
    check_identical(bits, *model_args(bits, dtype))


@pytest.mark.parametrize("lane_symbols,table_log", [
    (1, 9), (3, 10), (64, 11), (1024, 12), (4096, 12), (777, 8),
])
def test_lane_and_table_sizes(kernel, lane_symbols, table_log):
    rng = np.random.default_rng(RNG_SEED + lane_symbols)
    bits = normal_bits("BF16", 40_000 + lane_symbols, 0.05, rng)
    for symbol_bits in (8, 10):
        check_identical(bits, *explicit_args(bits, "BF16", symbol_bits, table_log, lane_symbols))


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 95, 100, 1000])
@pytest.mark.parametrize("dtype", ["BF16", "F32", "F8_E4M3"])
def test_tiny_tensors(kernel, n, dtype):
    rng = np.random.default_rng(RNG_SEED + n)
    bits = normal_bits(dtype, n, 0.1, rng)
    layout = FLOAT_LAYOUTS[dtype]
    for lane_symbols in (1, 2, 5, 1024):
        check_identical(bits, *explicit_args(bits, dtype, layout.exponent_bits, 12, lane_symbols),
                        workers=(1, 2))
    check_identical(bits, *explicit_args(bits, dtype, layout.exponent_bits + 1, 5, 3),
                    workers=(1,))


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F8_E4M3", "F8_E5M2"])
@pytest.mark.parametrize("n", [1, 1000, 33_000])
def test_single_symbol(kernel, dtype, n):
    layout = FLOAT_LAYOUTS[dtype]
    value = {8: 0x38, 16: 0x3C00, 32: 0x3F800000}[layout.width]
    bits = np.full(n, value, dtype=layout.storage)
    shapes = tuple((t, t) for t in ODD_SMALL_LOGS) + ((2, 1), (12, 1024), (5, 7))
    for table_log, lane_symbols in shapes:
        args, counts = explicit_args(bits, dtype, layout.exponent_bits, table_log, lane_symbols)
        assert len(counts) == 1
        check_identical(bits, args, counts, workers=(1, 2))


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_every_16_bit_value(kernel, dtype):
    """All 65,536 patterns (inf, NaN payloads, subnormals, -0) amid weights,
    through the codec entry points, so the tans codec is really chosen."""
    rng = np.random.default_rng(RNG_SEED)
    bits = np.concatenate([normal_bits(dtype, 300_000, 0.02, rng),
                           np.arange(1 << 16, dtype=np.uint16)])
    rng.shuffle(bits)
    data = bits.view(np.uint8)
    fast = encode_tensor(data, dtype, bits.shape, backend="numba", workers=2)
    slow = encode_tensor(data, dtype, bits.shape, backend="numpy")
    assert fast.codec == slow.codec == "tans"
    assert fast.geometry == slow.geometry
    for field in ("counts", "lane_sizes", "payload", "raw"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field))
    np.testing.assert_array_equal(decode_tensor(fast, backend="numba"), data)
    # And with the widest symbols: 4096 of them, one table slot each.
    args, counts = explicit_args(bits, dtype, 12, 12, 1024)
    assert len(counts) == 4096 and counts.max() == 1
    check_identical(bits, args, counts, workers=(2,))


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2"])
def test_every_fp8_value(kernel, dtype):
    rng = np.random.default_rng(RNG_SEED)
    every = np.arange(256, dtype=np.uint8)
    mixed = np.concatenate([normal_bits(dtype, 50_000, 0.3, rng), every])
    rng.shuffle(mixed)
    check_identical(mixed, *model_args(mixed, dtype))
    layout = FLOAT_LAYOUTS[dtype]
    for symbol_bits in (layout.exponent_bits, 6, 8):      # 8: no raw bits at all
        check_identical(every, *explicit_args(every, dtype, symbol_bits, 12, 2))
        check_identical(mixed, *explicit_args(mixed, dtype, symbol_bits, 11, 300))


def test_more_counts_than_table_slots(kernel):
    """Counts span first..last symbol, zeros included, so there can be more
    of them than table slots."""
    rng = np.random.default_rng(RNG_SEED)
    bits = np.where(rng.random(3000) < 0.5, 0x3F80, 0x2F80).astype(np.uint16)  # 1.0, 2**-32
    bits ^= (rng.random(3000) < 0.5).astype(np.uint16) << 15
    args, counts = explicit_args(bits, "BF16", 8, 2, 10)
    assert len(counts) > 1 << args["table_log"]
    check_identical(bits, args, counts)


def test_wide_raw_fields(kernel):
    """F32 with 4-bit symbols: 28-bit raw fields, wider than the vector
    decoder's gathers hold, so it must take the scalar path."""
    bits = normal_bits("F32", 20_000, 1.0, np.random.default_rng(RNG_SEED))
    check_identical(bits, *explicit_args(bits, "F32", 4, 10, 100))


def test_simd_compile_failure_falls_back(monkeypatch):
    import numba

    def broken(*args):
        raise numba.core.errors.TypingError("no vector gathers here")

    monkeypatch.setattr(dispatch, "use_simd", True)
    monkeypatch.setattr(dispatch, "_simd_failure", None)
    monkeypatch.setattr(decoder, "_decode_groups_simd", broken)
    monkeypatch.setattr(encoder, "_encode_groups_simd", broken)
    bits = normal_bits("BF16", 5000, 0.02, np.random.default_rng(RNG_SEED))
    args, counts = model_args(bits, "BF16")
    with pytest.warns(RuntimeWarning, match="scalar"):
        geo = check_identical(bits, args, counts, workers=(1,))
    assert "no vector gathers" in dispatch._simd_failure
    # The decoder falls back on its own too (above, the encoder failed first).
    monkeypatch.setattr(dispatch, "_simd_failure", None)
    with pytest.warns(RuntimeWarning, match="scalar"):
        decoded = nb.decode(geo, counts, *reference(bits, args, counts), np.uint16)
    np.testing.assert_array_equal(decoded, bits)


def test_workers_do_not_change_bytes(kernel):
    rng = np.random.default_rng(RNG_SEED)
    bits = normal_bits("BF16", 1_200_001, 0.02, rng)
    args, counts = model_args(bits, "BF16", lane_symbols=64)
    one = nb.encode(bits, args, counts, workers=1)
    geo = geometry(bits, args, counts, one[1])
    for w in (None, 0, 2, 5):
        for a, b in zip(one, nb.encode(bits, args, counts, workers=w)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(nb.decode(geo, counts, *one, np.uint16, workers=w), bits)
    # Spot-check the reference on this bigger input too: its decoder.
    np.testing.assert_array_equal(numpy_ref.decode(geo, counts, *one, np.uint16), bits)


def numba_kernels():
    """Every jitted function of the numba back end, whichever of its modules
    holds it. Self-contained: test_import_compiles_nothing runs its source."""
    import importlib
    import pkgutil

    import numba

    import floatzip.backends.numba as package
    modules = [importlib.import_module(f"{package.__name__}.{m.name}")
               for m in pkgutil.iter_modules(package.__path__)]
    return list({id(v): v for m in modules for v in vars(m).values()
                 if isinstance(v, numba.core.dispatcher.Dispatcher)}.values())


def test_kernels_release_the_gil():
    """Every kernel is nogil, and two threads decoding at once agree."""
    import threading
    kernels = numba_kernels()
    assert kernels and all(k.targetoptions.get("nogil") for k in kernels)
    rng = np.random.default_rng(RNG_SEED)
    bits = normal_bits("BF16", 500_000, 0.02, rng)
    args, counts = model_args(bits, "BF16")
    enc = nb.encode(bits, args, counts)
    geo = geometry(bits, args, counts, enc[1])
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        nb.decode(geo, counts, *enc, np.uint16))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and all(np.array_equal(r, bits) for r in results)


def test_tables_match_tans():
    rng = np.random.default_rng(RNG_SEED)
    for table_log in ODD_SMALL_LOGS + (2, 4, 5, 9, 12):
        size = 1 << table_log
        for symbols in sorted({1, 2, min(size, 7), min(size, 300), size}):
            hist = rng.integers(0, 1000, symbols) * (rng.random(symbols) < 0.8)
            hist[rng.integers(symbols)] += 1
            counts = tans.normalize_counts(hist, table_log)
            geo = CodedGeometry(count=1, width=16, symbol_bits=12, table_log=table_log,
                                first_symbol=3, table_symbols=symbols, lane_symbols=1,
                                payload_bytes=0)
            ref = tans.build_decode_table(counts, 3, table_log)
            ours = nb.decode_table(counts, geo)
            np.testing.assert_array_equal(ours & 0xFFF, ref & tans.ENTRY_BASE_MASK)
            np.testing.assert_array_equal((ours >> 12) & 0xF,
                                          (ref >> tans.ENTRY_NBITS_SHIFT) & 0xF)
            params, next_state = nb.encode_table(counts, table_log)
            ref_next, _ = tans.build_encode_table(counts, table_log)
            np.testing.assert_array_equal(next_state[:size], ref_next)


def test_spread_leaving_slots_empty_is_refused(monkeypatch):
    """A spread stride that misses table slots (tans.spread_step was even
    for L = 2 and 8 before it was forced odd) must be refused: the numba
    tables are indexed without bounds checks."""
    monkeypatch.setattr(tans, "spread_step", lambda table_log: 4)
    table_log = 3
    counts = np.array([6, 2], dtype=np.uint16)
    geo = CodedGeometry(count=1, width=16, symbol_bits=8, table_log=table_log, first_symbol=0,
                        table_symbols=2, lane_symbols=1, payload_bytes=1)
    with pytest.raises(CorruptDataError, match="slots"):
        nb.decode(geo, counts, np.array([1] + [0] * 31, np.uint16), np.zeros(1, np.uint8),
                  np.zeros(1, np.uint8), np.uint16)
    args = dict(width=16, symbol_bits=8, table_log=table_log, first_symbol=0, lane_symbols=1)
    with pytest.raises(ValueError, match="slots"):
        nb.encode(np.zeros(1, np.uint16), args, counts)


def test_symbol_outside_the_alphabet_is_an_error(kernel):
    bits = normal_bits("BF16", 5000, 0.02, np.random.default_rng(RNG_SEED))
    args, counts = explicit_args(bits[:-1], "BF16", 8, 12, 16)
    bits[-1] = 0x7F80          # +inf: exponent 255, not in these counts
    with pytest.raises(ValueError, match="value 4999"):
        nb.encode(bits, args, counts)


def test_import_compiles_nothing():
    code = (inspect.getsource(numba_kernels) + "kernels = numba_kernels()\n"
            "assert len(kernels) > 10 and all(not k.signatures for k in kernels)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- corrupt streams ---------------------------------------------------------

@pytest.fixture(scope="module")
def coded():
    """A BF16 tensor of 13 groups, the last one partial, and its streams."""
    bits = normal_bits("BF16", 100_000, 0.02, np.random.default_rng(RNG_SEED))
    args, counts = explicit_args(bits, "BF16", 9, 12, 256)
    sizes, payload, raw = reference(bits, args, counts)
    return bits, counts, geometry(bits, args, counts, payload), sizes, payload, raw


def same_verdict(geo, counts, sizes, payload, raw):
    """numba raises CorruptDataError exactly when numpy_ref does, and
    otherwise decodes the same values."""
    try:
        expected = numpy_ref.decode(geo, counts, sizes, payload, raw, np.uint16)
    except CorruptDataError:
        expected = None
    for w in (1, 2):
        if expected is None:
            with pytest.raises(CorruptDataError, match="lane"):
                nb.decode(geo, counts, sizes, payload, raw, np.uint16, workers=w)
        else:
            got = nb.decode(geo, counts, sizes, payload, raw, np.uint16, workers=w)
            np.testing.assert_array_equal(got, expected)
    return expected is None


def test_flipped_bits(kernel, coded):
    bits, counts, geo, sizes, payload, raw = coded
    rng = np.random.default_rng(RNG_SEED)
    rejected = 0
    for _ in range(25):
        bad = payload.copy()
        bad[rng.integers(bad.size)] ^= np.uint8(1 << rng.integers(8))
        rejected += same_verdict(geo, counts, sizes, bad, raw)
    assert rejected > 0


@pytest.mark.parametrize("fill", ["zeros", "ones", "random"])
def test_garbage_payload(kernel, coded, fill):
    bits, counts, geo, sizes, payload, raw = coded
    rng = np.random.default_rng(1)
    bad = {"zeros": np.zeros_like(payload), "ones": np.full_like(payload, 0xFF),
           "random": rng.integers(0, 256, payload.size).astype(np.uint8)}[fill]
    assert same_verdict(geo, counts, sizes, bad, raw)


def test_garbage_in_the_last_lanes(kernel, coded):
    """Lanes near the end of the payload overrun into the padded tail."""
    bits, counts, geo, sizes, payload, raw = coded
    bad = payload.copy()
    bad[-200:] = 0xFF
    assert same_verdict(geo, counts, sizes, bad, raw)
    tiny_sizes = sizes.copy()            # one huge lane, the rest emptied in front of it
    tiny_sizes[:] = 0
    tiny_sizes[-1] = payload.size
    assert same_verdict(geo, counts, tiny_sizes, np.full_like(payload, 0xFF), raw)


def test_moved_lane_boundaries(kernel, coded):
    bits, counts, geo, sizes, payload, raw = coded
    for lane in (0, 31, 100, len(sizes) - 40, len(sizes) - 2):
        moved = sizes.copy()
        if moved[lane + 1] == 0:
            continue
        moved[lane] += 1
        moved[lane + 1] -= 1
        assert same_verdict(geo, counts, moved, payload, raw)


def test_padding_bits(kernel, coded):
    bits, counts, geo, sizes, payload, raw = coded
    ends = np.cumsum(sizes.astype(np.int64))
    for lane in np.flatnonzero(sizes)[:40]:
        bad = payload.copy()
        bad[ends[lane] - 1] |= 0x80      # the last bit of the lane's last byte
        if same_verdict(geo, counts, sizes, bad, raw):
            with pytest.raises(CorruptDataError, match=f"lane {lane}"):
                nb.decode(geo, counts, sizes, bad, raw, np.uint16)
            return
    pytest.fail("no lane ends with padding")


def test_bad_counts(coded):
    bits, counts, geo, sizes, payload, raw = coded
    wrong = counts.copy()
    wrong[0] += 1
    with pytest.raises(CorruptDataError, match="sum"):
        nb.decode(geo, wrong, sizes, payload, raw, np.uint16)


def test_checksum_catches_what_lanes_cannot(coded):
    """End to end: a corruption the lanes accept still fails the checksum."""
    bits, counts, geo, sizes, payload, raw = coded
    enc = encode_tensor(bits.view(np.uint8), "BF16", bits.shape, backend="numba")
    enc.raw = enc.raw.copy()
    enc.raw[7] ^= 1                      # raw fields carry no structure to check
    with pytest.raises(CorruptDataError, match="checksum"):
        decode_tensor(enc, backend="numba")


@pytest.mark.parametrize("dtype", sorted(FLOAT_LAYOUTS))
@pytest.mark.parametrize("workers", [1, 3])
def test_statistics_match_reference(dtype, workers):
    layout = FLOAT_LAYOUTS[dtype]
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 1 << layout.width, 700_001, dtype=np.uint64).astype(layout.storage)
    bits[:1000] = bits[0]            # runs of one value: the interleaved counters
    low = (bits & ~layout.storage.type(7)) | layout.storage.type(5)     # 3 constant low bits
    for data in (bits, low, bits[:0], bits[:1]):
        for top in (1, model.histogram_bits(layout), min(layout.width - 1, 12)):
            counts, varying = nb.statistics(data, layout.width, top, workers)
            ref_counts, ref_varying = numpy_ref.statistics(data, layout.width, top)
            np.testing.assert_array_equal(counts, ref_counts)
            assert varying == ref_varying
    assert model.dropped_bits(nb.statistics(low, layout.width, 1, workers)[1], layout) == \
        min(3, layout.mantissa_bits)


def test_decode_into_out_and_bad_out_is_refused():
    from floatzip.errors import DecoderArgumentError
    bits = (np.random.default_rng(2).standard_normal(5000).astype(np.float32)
            .view(np.uint32) >> 16).astype(np.uint16)
    args, counts = explicit_args(bits, "BF16", 9, 12, 64)
    sizes, payload, raw = numpy_ref.encode(bits, args, counts)
    geo = CodedGeometry(count=bits.size, table_symbols=len(counts),
                        payload_bytes=int(payload.size), **args)
    for impl in (numpy_ref, nb):
        out = np.full(bits.size, 0xFFFF, np.uint16)
        assert np.shares_memory(impl.decode(geo, counts, sizes, payload, raw, np.uint16, out=out), out)
        np.testing.assert_array_equal(out, bits)
    for bad in (np.empty(bits.size - 1, np.uint16), np.empty(bits.size, np.uint32),
                np.empty(2 * bits.size, np.uint16)[::2]):
        with pytest.raises(DecoderArgumentError):
            nb.decode(geo, counts, sizes, payload, raw, np.uint16, out=bad)
