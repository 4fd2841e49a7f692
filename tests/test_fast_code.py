"""The fast in-memory code (codecs/fast_code.py, docs/FAST_CODE.md): the
NumPy reference and the numba kernels agree bit for bit, every BF16 pattern
round-trips, escapes land where they should, and bad inputs raise instead
of reaching a kernel."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from floatzip import backends
from floatzip.codecs import fast_code as ref
from floatzip.errors import CorruptDataError, DecoderArgumentError

nb = pytest.importorskip("floatzip.backends.numba.fast_code")
from floatzip.backends.numba import dispatch  # noqa: E402

ALL_PATTERNS = np.arange(1 << 16, dtype=np.uint16)
FIELDS = ("palette", "codes", "sm", "esc_start", "esc_pos", "esc_exp")


def gaussian_bf16(n, seed=0, scale=0.02):
    x = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def assert_same_code(a: ref.FastTensor, b: ref.FastTensor):
    assert (a.count, a.bits) == (b.count, b.bits)
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


@pytest.fixture(params=[True, False], ids=["simd", "scalar"])
def simd(request, monkeypatch):
    if request.param and not dispatch.use_simd:
        pytest.skip("no AVX2 here")
    monkeypatch.setattr(dispatch, "use_simd", request.param)
    return request.param


@pytest.mark.parametrize("bits", ref.BITS)
@pytest.mark.parametrize("palette_seed", [0, 1])
def test_every_bf16_pattern_round_trips(bits, palette_seed, simd):
    # All 65,536 patterns (±0, subnormals, inf, every NaN payload): with a
    # 2-4 bit palette most exponents are escapes, so escapes are covered
    # in every tile and every position.
    palette = np.random.default_rng(palette_seed).permutation(256)[:1 << bits].astype(np.uint8)
    a = ref.encode(ALL_PATTERNS, bits, palette)
    b = nb.encode(ALL_PATTERNS, bits, palette)
    assert_same_code(a, b)
    assert np.array_equal(ref.decode(a), ALL_PATTERNS)
    assert np.array_equal(nb.decode(a), ALL_PATTERNS)
    assert a.escapes == 65536 - (1 << bits) * 256


def test_every_pattern_with_the_chosen_palette():
    a = ref.encode(ALL_PATTERNS)
    assert_same_code(a, nb.encode(ALL_PATTERNS))
    assert np.array_equal(nb.decode(a), ALL_PATTERNS)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 255, 256, 257, 4095, 4096, 4097, 3 * 4096 + 300])
@pytest.mark.parametrize("bits", ref.BITS)
def test_sizes_and_tails(n, bits, simd):
    values = gaussian_bf16(n, seed=n)
    # the most frequent exponents, as many as the width holds
    order = np.lexsort((np.arange(256), -ref.exponent_histogram(values)))
    palette = order[:1 << bits].astype(np.uint8)
    a = ref.encode(values, bits, palette)
    b = nb.encode(values, bits, palette)
    assert_same_code(a, b)
    assert a.codes.size == ref.groups(n) * 32 * bits and a.sm.size == n
    out = np.full(n, 0xABCD, dtype=np.uint16)
    nb.decode(a, out)
    assert np.array_equal(out, values)
    assert np.array_equal(ref.decode(b), values)
    # into a byte buffer (the runtime's slots are uint8)
    out8 = np.zeros(2 * n, dtype=np.uint8)
    nb.decode(a, out8)
    assert np.array_equal(out8.view(np.uint16), values)


def test_escapes_at_tile_edges(simd):
    n = 3 * 4096 + 17
    values = np.full(n, 0x3C00, dtype=np.uint16)        # one exponent: no escape
    odd = [0, 1, 4095, 4096, 8191, 8192, n - 1]
    values[odd] = [0x7F80, 0xFF81, 0x0001, 0x8000, 0x0280, 0x7FFF, 0xC2AA]
    a = ref.encode(values, 2, np.array([0x78, 1, 2, 3], dtype=np.uint8))
    assert a.escapes == len(odd)
    assert a.esc_start.tolist() == [0, 3, 5, 6, 7]
    assert a.esc_pos.tolist() == [0, 1, 4095, 0, 4095, 0, 16]
    assert_same_code(a, nb.encode(values, 2, a.palette))
    assert np.array_equal(nb.decode(a), values)


def test_threads_split_tiles_alike(monkeypatch):
    monkeypatch.setattr(nb, "MIN_TILES_PER_JOB", 1)
    values = gaussian_bf16(20 * 4096 + 5, seed=3)
    a = nb.encode(values)
    for workers in (1, 2, 3, 7):
        assert np.array_equal(nb.decode(a, workers=workers), values)


def test_palette_choice():
    # Gaussian weights: 8 binades cover nearly everything
    g = gaussian_bf16(100_000)
    bits, palette = ref.choose(ref.exponent_histogram(g), g.size)
    assert bits == 3 and palette.size == 8
    hist = ref.exponent_histogram(g)
    assert hist[palette].sum() == np.sort(hist)[-8:].sum()
    # four exponents only: two bits do
    four = (np.arange(10_000) % 4 + 120).astype(np.uint16) << 7
    assert ref.choose(ref.exponent_histogram(four), four.size)[0] == 2
    # sixteen, evenly: four bits
    sixteen = (np.arange(10_000) % 16 + 110).astype(np.uint16) << 7
    bits, palette = ref.choose(ref.exponent_histogram(sixteen), sixteen.size)
    assert bits == 4 and sorted(palette.tolist()) == list(range(110, 126))
    # the size the choice minimises is the size the code has
    ft = ref.encode(g)
    assert ft.nbytes == ref.code_size(g.size, ft.bits, ft.escapes)


def test_minilm_bf16_fast_code_is_at_most_072_of_bf16():
    """The issue's size target, on real weights (the bundled MiniLM)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from floatzip.demo import bundled_model_dir
    import os
    tensors = load_file(os.path.join(bundled_model_dir(), "model.safetensors"))
    bf16 = fast = 0
    for t in tensors.values():
        if not t.is_floating_point():
            continue
        values = t.to(torch.bfloat16).contiguous().view(torch.uint16).numpy().reshape(-1)
        ft = nb.encode(values)
        bf16 += values.nbytes
        fast += ft.nbytes
    assert fast / bf16 <= 0.72, fast / bf16


# -- bad inputs --------------------------------------------------------------------

def corrupted(ft, **changes):
    return dataclasses.replace(ft, **changes)


def ro(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


@pytest.fixture
def coded():
    values = gaussian_bf16(2 * 4096 + 100, seed=5)
    values[[7, 4100, 8200]] = 0x7F80                     # escapes in each tile
    return ref.encode(values)


@pytest.mark.parametrize("decode", [ref.decode, nb.decode], ids=["reference", "numba"])
@pytest.mark.parametrize("change, message", [
    (lambda ft: dict(bits=5), "bits must be one of"),
    (lambda ft: dict(count=-1), "count"),
    (lambda ft: dict(count=ft.count + 1), "expected"),
    (lambda ft: dict(codes=ro(ft.codes[:-1])), "codes has"),
    (lambda ft: dict(sm=ro(ft.sm[:-1])), "sm has"),
    (lambda ft: dict(sm=ro(ft.sm.astype(np.uint16))), "sm must be a 1-D uint8"),
    (lambda ft: dict(palette=ro(ft.palette[:3])), "palette has"),
    (lambda ft: dict(esc_start=ro(ft.esc_start[:-1])), "esc_start has"),
    (lambda ft: dict(esc_start=ro(np.r_[1, ft.esc_start[1:]].astype(np.uint32))), "runs from 1"),
    (lambda ft: dict(esc_start=ro(np.r_[ft.esc_start[:-1], 99].astype(np.uint32))), "expected 0 to"),
    (lambda ft: dict(esc_start=ro(np.array([0, 3, 1, ft.escapes], dtype=np.uint32))), "decreases"),
    (lambda ft: dict(esc_exp=ro(ft.esc_exp[:-1])), "esc_exp has"),
    (lambda ft: dict(esc_pos=ro(np.r_[ft.esc_pos[:-1], 100].astype(np.uint16))), "holds 100"),
    (lambda ft: dict(esc_pos=ro(np.r_[ft.esc_pos[:1], 4096, ft.esc_pos[2:]].astype(np.uint16))),
     "offset 4096"),
    (lambda ft: dict(codes=list(ft.codes)), "codes must be"),
])
def test_corrupt_codes_raise(coded, decode, change, message):
    bad = corrupted(coded, **change(coded))
    with pytest.raises(CorruptDataError, match=message):
        decode(bad)


@pytest.mark.parametrize("decode", [ref.decode, nb.decode], ids=["reference", "numba"])
def test_bad_outputs_and_arguments_raise(coded, decode):
    n = coded.count
    for out in (np.empty(n - 1, np.uint16), np.empty(n, np.float32), np.empty(n, np.int16),
                np.empty(2 * n, np.uint16)[::2], ro(np.empty(n, np.uint16)), [0] * n):
        with pytest.raises(DecoderArgumentError, match="out must be"):
            decode(coded, out)
    with pytest.raises(DecoderArgumentError, match="expected a FastTensor"):
        decode(np.zeros(4, np.uint8))


@pytest.mark.parametrize("encode", [ref.encode, nb.encode], ids=["reference", "numba"])
def test_bad_encoder_arguments_raise(encode):
    with pytest.raises(DecoderArgumentError, match="uint16"):
        encode(np.zeros(4, np.float32))
    with pytest.raises(DecoderArgumentError, match="bits must be"):
        encode(np.zeros(4, np.uint16), 5, np.arange(32, dtype=np.uint8))
    with pytest.raises(DecoderArgumentError, match="distinct"):
        encode(np.zeros(4, np.uint16), 2, np.array([1, 1, 2, 3], dtype=np.uint8))


def test_valid_code_is_checked_once_and_writable_copies_every_time(coded):
    coded.validate()
    assert coded.__dict__.get("_valid")
    writable = corrupted(coded, sm=coded.sm.copy())         # a writable array: not remembered
    writable.validate()
    assert not writable.__dict__.get("_valid")
    writable.sm.resize(0, refcheck=False)                   # shrunk after a check
    with pytest.raises(CorruptDataError):
        nb.decode(writable)


def test_select_fast_code():
    assert backends.select_fast_code("numba").name == "numba"
    fast = backends.select_fast_code("numpy")
    values = gaussian_bf16(5000)
    assert fast.name == "numpy" and np.array_equal(fast.decode(fast.encode(values)), values)
