"""The Triton GPU decoder against the NumPy reference, bit for bit.

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1,
set by the ``device`` fixture only while these tests run) on CPU tensors.
The interpreter costs a few milliseconds per step whatever the number of
lanes, so the tests use short lanes (small ``lane_symbols``) and many groups
per program. ``test_compiles_for`` builds the real kernel for sm_80 and
sm_90 with no GPU, so a kernel that the interpreter accepts but the compiler
rejects still fails here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from conftest import explicit_args  # noqa: E402

from floatzip.backends import numpy_ref  # noqa: E402
from floatzip.backends import triton as td  # noqa: E402
from floatzip.backends.triton import block, kernel  # noqa: E402
from floatzip.backends.triton import builds as kernel_builds  # noqa: E402
from floatzip.codecs import model, tans  # noqa: E402
from floatzip.codecs.encoded import CODEC_RAW, CODEC_TANS, EncodedTensor, checksum  # noqa: E402
from floatzip.codecs.layout import CodedGeometry  # noqa: E402
from floatzip.decode import decode_tensor  # noqa: E402
from floatzip.dtypes import FLOAT_LAYOUTS  # noqa: E402
from floatzip.encode import encode_tensor  # noqa: E402
from floatzip.errors import (  # noqa: E402
    CorruptDataError,
    DecoderArgumentError,
    FloatzipError,
    FormatError,
    UnsupportedError,
)

# Many groups per program: the interpreter's cost is per step, not per lane.
# A GPU compiles one thread per lane: there, a launch shape it is built for.
WIDE = 4 if torch.cuda.is_available() else 64
# Every (table_memory, prefetch, staging) build of the kernel: each table
# memory with each prefetch, and the staged payloads, alone and with the
# best of those (shared table, prefetch of raw rows).
ALL_BUILDS = ([(m, p, "none") for m in td.TABLE_MEMORIES for p in td.PREFETCHES]
              + [("global", "none", "fifo"), ("global", "none", "async"),
                 ("shared", "none", "async"), ("shared", "L2", "async")])
# What the interpreter runs: no inline PTX.
INTERPRETED_BUILDS = [("global", "none", "none"), ("global", "none", "fifo")]


@pytest.fixture
def device(monkeypatch):
    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"


# -- helpers ---------------------------------------------------------------

def bf16_bits(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).view(torch.int16) \
        .numpy().view(np.uint16)


def weights(rng, n, dtype) -> np.ndarray:
    """N(0, 0.02) weights as their bits."""
    x = rng.standard_normal(n).astype(np.float32) * 0.02
    if dtype == "BF16":
        return bf16_bits(x)
    if dtype == "F16":
        return x.astype(np.float16).view(np.uint16)
    if dtype == "F32":
        return x.view(np.uint32)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        t = torch.from_numpy(x * 50).to(td.TORCH_DTYPES[dtype])
        return t.view(torch.uint8).numpy()
    raise AssertionError(dtype)


def encode(bits: np.ndarray, dtype: str, shape=None, **kw) -> EncodedTensor:
    shape = (bits.size,) if shape is None else shape
    return encode_tensor(bits.view(np.uint8), dtype, shape, backend="numpy", **kw)


def force_tans(bits: np.ndarray, dtype: str, symbol_bits: int, table_log: int,
               lane_symbols: int, shape=None) -> EncodedTensor:
    """Tans-code with the given parameters even where raw would be smaller."""
    layout = FLOAT_LAYOUTS[dtype]
    args, counts = explicit_args(bits.ravel(), dtype, symbol_bits, table_log, lane_symbols)
    first = args["first_symbol"]
    lane_sizes, payload, raw = numpy_ref.encode(bits.ravel(), args, counts)
    geometry = CodedGeometry(count=bits.size, width=layout.width, symbol_bits=symbol_bits,
                             table_log=table_log, first_symbol=first,
                             table_symbols=len(counts), lane_symbols=lane_symbols,
                             payload_bytes=int(payload.size))
    return EncodedTensor(dtype, (bits.size,) if shape is None else shape, CODEC_TANS,
                         checksum(bits.view(np.uint8)), geometry, counts, lane_sizes, payload, raw)


def device_bytes(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy()


def builds(device, groups_per_program=WIDE) -> list[tuple[str, str, str]]:
    """The (table_memory, prefetch, staging) builds a device runs: those
    with inline PTX (shared-memory table, prefetches, cp.async) on a GPU
    only, cp.async with at least a lane a thread (4 warps) only."""
    if device != "cuda":
        return INTERPRETED_BUILDS
    return [b for b in ALL_BUILDS if b[2] != "async" or groups_per_program >= 4]


def block_decoder(encoded, device, build, **kw) -> td.DeviceBlockDecoder:
    table_memory, prefetch, staging = build
    return td.DeviceBlockDecoder.from_encoded(encoded, device, table_memory=table_memory,
                                              prefetch=prefetch, staging=staging, **kw)


def assert_decodes(enc: EncodedTensor, device, groups_per_program=WIDE, **kw):
    """Device decode == reference decode == the original bytes, with every
    build the device runs."""
    ref = decode_tensor(enc, backend="numpy")
    for build in builds(device, groups_per_program):
        dec = block_decoder([enc], device, build, groups_per_program=groups_per_program, **kw)
        (out,) = dec.decode()
        dec.check()
        assert out.dtype == td.TORCH_DTYPES[enc.dtype]
        assert tuple(out.shape) == tuple(enc.shape)
        np.testing.assert_array_equal(device_bytes(out), ref, err_msg=str(build))


# -- bit-exactness ---------------------------------------------------------

def test_every_bf16_value(device):
    """All 65,536 BF16 bit patterns (inf, NaN payloads, subnormals, +-0),
    mixed into weights so that the tans codec is chosen."""
    rng = np.random.default_rng(1)
    bits = np.concatenate((np.arange(1 << 16, dtype=np.uint16), weights(rng, 3 << 16, "BF16")))
    rng.shuffle(bits)
    enc = encode(bits, "BF16", (512, 512), lane_symbols=128)
    assert enc.codec == CODEC_TANS
    assert_decodes(enc, device)


@pytest.mark.parametrize("dtype", ["F16", "F32", "F8_E4M3", "F8_E5M2"])
def test_random_weights(device, dtype):
    rng = np.random.default_rng(2)
    enc = encode(weights(rng, 24_000, dtype), dtype, (40, 600), lane_symbols=64)
    assert enc.codec == CODEC_TANS
    assert_decodes(enc, device)


def test_default_lane_symbols(device):
    """The default geometry: DEFAULT_LANE_SYMBOLS a lane, a second group of 5 lanes."""
    rng = np.random.default_rng(3)
    enc = encode(weights(rng, 32 * model.DEFAULT_LANE_SYMBOLS + 5, "BF16"), "BF16")
    assert enc.geometry.lane_symbols == model.DEFAULT_LANE_SYMBOLS
    assert enc.geometry.groups == 2
    assert_decodes(enc, device)


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "F8_E4M3"])
def test_one_value(device, dtype):
    """A single value: one group with one lane of one symbol, 31 empty lanes."""
    bits = weights(np.random.default_rng(4), 1, dtype)
    layout = FLOAT_LAYOUTS[dtype]
    enc = force_tans(bits, dtype, layout.exponent_bits, 5, 1, shape=())
    assert_decodes(enc, device)
    assert encode(bits, dtype, (1,)).codec == CODEC_RAW     # what the encoder picks


@pytest.mark.parametrize("groups_per_program", [1, 4])
@pytest.mark.parametrize("count", [32 * 16 * 5 + 37, 32 * 16 * 4 - 1, 33])
def test_tails(device, count, groups_per_program):
    """Tails that fill neither a group nor a lane, and programs that get
    fewer groups than they could take."""
    rng = np.random.default_rng(count)
    enc = force_tans(weights(rng, count, "BF16"), "BF16", 9, 10, 16)
    assert_decodes(enc, device, groups_per_program)


@pytest.mark.parametrize("groups_per_program, min_steps", [(1, [16, 16, 1]), (2, [16, 0])])
def test_unmasked_phase(device, groups_per_program, min_steps):
    """A program runs steps without masks only when it has all its groups,
    and only while its shortest lane (DESC_MIN_STEPS) still holds the raw
    row loaded raw_ahead steps ahead: here the first 8 of 16.
    16-symbol lanes, 2 full groups + 40 values."""
    rng = np.random.default_rng(5)
    enc = force_tans(weights(rng, 32 * 16 * 2 + 40, "BF16"), "BF16", 9, 10, 16)
    dec = td.DeviceBlockDecoder.from_encoded([enc], device, groups_per_program=groups_per_program)
    assert dec.desc[:, kernel.DESC_MIN_STEPS].tolist() == min_steps
    assert_decodes(enc, device, groups_per_program, raw_ahead=8)


@pytest.mark.parametrize("raw_ahead", [1, 4, 16])
def test_raw_ahead(device, raw_ahead):
    """Any ring depth decodes the same bytes; the full programs' 64-symbol
    lanes run unmasked for 63, 60 and 48 of their steps. A depth that is no
    power of two is refused."""
    rng = np.random.default_rng(14)
    enc = force_tans(weights(rng, 32 * 64 * 3 + 100, "BF16"), "BF16", 10, 11, 64)
    ref = decode_tensor(enc, backend="numpy")
    dec = td.DeviceBlockDecoder.from_encoded([enc], device, groups_per_program=1,
                                             raw_ahead=raw_ahead)
    np.testing.assert_array_equal(device_bytes(dec.decode()[0]), ref)
    dec.check()
    for bad in (3, 32, 0):
        with pytest.raises(DecoderArgumentError, match="raw_ahead"):
            td.DeviceBlockDecoder.from_encoded([enc], device, raw_ahead=bad)


def test_alphabet_of_one_symbol(device):
    bits = np.full(5000, bf16_bits(np.array([0.5]))[0], dtype=np.uint16)
    bits[::7] ^= 1          # the sign is a raw bit: the symbol stays the same
    enc = encode(bits, "BF16", table_log=2, lane_symbols=32)
    assert enc.codec == CODEC_TANS
    assert enc.geometry.table_symbols == 1 and enc.geometry.table_log == 2
    assert_decodes(enc, device)


def test_alphabet_of_4096_symbols(device):
    """The largest alphabet and table: 12-bit symbols, table_log 12, every
    entry a different symbol."""
    rng = np.random.default_rng(5)
    low = rng.integers(0, 1 << 20, 8192, dtype=np.uint32)
    symbols = np.concatenate((np.arange(4096), rng.integers(0, 4096, 4096))).astype(np.uint32)
    rotated = (symbols << np.uint32(20)) | low
    bits = (rotated >> np.uint32(1)) | ((rotated & np.uint32(1)) << np.uint32(31))   # rotate up
    enc = force_tans(bits, "F32", 12, 12, 64)
    assert enc.geometry.table_symbols == 4096 and enc.geometry.table_log == 12
    assert_decodes(enc, device)


def block_of_tensors(rng):
    encs = [
        encode(weights(rng, 40 * 96, "BF16"), "BF16", (40, 96), lane_symbols=16),
        encode(weights(rng, 5001, "F16"), "F16", (5001,), lane_symbols=32),
        encode(weights(rng, 3000, "F32"), "F32", (30, 100), lane_symbols=8),
        encode(weights(rng, 4000, "F8_E4M3"), "F8_E4M3", (4000,), lane_symbols=16),
        encode(rng.integers(0, 9, 10).astype(np.int64), "I64", (2, 5)),          # raw codec
        force_tans(weights(rng, 1, "BF16"), "BF16", 8, 4, 1),
        encode(np.full(999, bf16_bits(np.array([1.0]))[0]), "BF16", (999,), lane_symbols=8),
        encode(weights(rng, 7, "F32"), "F32", (7,)),                               # raw codec
    ]
    return encs


def test_block_in_one_launch(device):
    rng = np.random.default_rng(6)
    encs = block_of_tensors(rng)
    assert {e.codec for e in encs} == {CODEC_TANS, CODEC_RAW}
    names = [f"layer.{i}" for i in range(len(encs))]
    dec = td.DeviceBlockDecoder.from_encoded(encs, device, names=names, groups_per_program=8)
    refs = [decode_tensor(e, backend="numpy") for e in encs]

    def check(outs):
        assert len(outs) == len(encs)
        for enc, out, ref in zip(encs, outs, refs):
            assert out.dtype == td.TORCH_DTYPES[enc.dtype]
            assert tuple(out.shape) == enc.shape
            np.testing.assert_array_equal(device_bytes(out), ref)

    check(dec.decode())
    buf = dec.new_output()
    buf.fill_(0xA5)                   # poison: every byte of every slot must be written
    check(dec.decode(buf))
    check(dec.decode())               # the reused internal buffer, again
    dec.check()

    # The same block assembled from DeviceCodedTensors.
    tensors = [td.DeviceCodedTensor(e, device, name=n) for e, n in zip(encs, names)]
    check(td.DeviceBlockDecoder(tensors, groups_per_program=2).decode())
    check([t.decode() for t in tensors])


def test_single_tensor_into_typed_output(device):
    enc = encode(weights(np.random.default_rng(7), 3000, "F16"), "F16", (3, 1000), lane_symbols=16)
    t = td.DeviceCodedTensor(enc, device, name="w")
    out = torch.full((3, 1000), float("nan"), dtype=torch.float16, device=device)
    assert t.decode(out) is not None
    np.testing.assert_array_equal(device_bytes(out), decode_tensor(enc, backend="numpy"))
    t.check()
    # The table (4 << table_log bytes) dominates so small a tensor.
    assert enc.geometry.payload_bytes + enc.geometry.raw_bytes < t.nbytes


def test_backend_interface(device):
    """The contract of backends.base.Backend: decode(..., out=) on the
    device it picks itself (the CPU under the interpreter), as the
    reference decodes; encode and statistics refused, naming what encodes."""
    from floatzip import backends
    from floatzip.backends.base import Backend
    assert backends.select("triton", device=device) is td
    assert isinstance(td, Backend) and td.name == "triton" and not td.can_encode
    assert device in td.devices()
    enc = encode(weights(np.random.default_rng(8), 2000, "BF16"), "BF16", lane_symbols=16)
    g = enc.geometry
    args = (g, enc.counts, enc.lane_sizes, enc.payload, enc.raw, np.uint16)
    ref = numpy_ref.decode(*args)
    np.testing.assert_array_equal(td.decode(*args), ref)
    out = np.zeros(g.count, dtype=np.uint16)
    assert td.decode(*args, out=out) is out
    np.testing.assert_array_equal(out, ref)
    for bad in (np.zeros(g.count - 1, dtype=np.uint16), np.zeros(g.count, dtype=np.int16),
                np.zeros(2 * g.count, dtype=np.uint16)[::2]):
        with pytest.raises(DecoderArgumentError, match="out="):
            td.decode(*args, out=bad)
    for refused in (lambda: td.encode(None, None, None), lambda: td.statistics(None, 16, 12)):
        with pytest.raises(UnsupportedError, match="'numba' or 'numpy'"):
            refused()


# -- corrupt streams -------------------------------------------------------

@pytest.mark.parametrize("build", ALL_BUILDS, ids="-".join)
def test_corrupt_lanes_are_flagged_like_the_reference(device, build):
    """A flipped payload byte is flagged by the kernel exactly when the
    reference rejects it; decoding never reads outside the buffers. One
    program of 8 groups: most steps run unmasked, where the staged builds
    read words they copied FIFO_MIN_STEPS steps earlier or more."""
    if build not in builds(device, 8):
        pytest.skip("the inline-PTX builds run on CUDA only")
    rng = np.random.default_rng(9)
    enc = encode(weights(rng, 8 * 32 * 64, "BF16"), "BF16", lane_symbols=64)
    g = enc.geometry
    corrupt = []
    for at in rng.choice(g.payload_bytes, 12, replace=False):
        payload = enc.payload.copy()
        payload[at] ^= 1 << int(rng.integers(8))
        corrupt.append(EncodedTensor(enc.dtype, enc.shape, CODEC_TANS, enc.checksum, g,
                                     enc.counts, enc.lane_sizes, payload, enc.raw))
    dec = block_decoder(corrupt, device, build, groups_per_program=8)
    unmasked = dec.desc[:, kernel.DESC_MIN_STEPS] - dec.raw_ahead
    assert (unmasked > kernel.FIFO_MIN_STEPS + kernel.FIFO_SLOTS.value).all()
    dec.decode()
    flagged = int(dec.errors.item())
    rejected = 0
    for c in corrupt:
        try:
            numpy_ref.decode(g, c.counts, c.lane_sizes, c.payload, c.raw, np.uint16)
        except CorruptDataError:
            rejected += 1
    assert rejected > 0
    assert (flagged > 0) == (rejected > 0)
    with pytest.raises(CorruptDataError, match="lane"):
        dec.check()
    dec.check()                   # the count was reset
    # Each corrupt tensor alone: flagged iff the reference rejects it.
    for c in corrupt:
        one = block_decoder([c], device, build, groups_per_program=8)
        one.decode()
        try:
            numpy_ref.decode(g, c.counts, c.lane_sizes, c.payload, c.raw, np.uint16)
            ref_bad = False
        except CorruptDataError:
            ref_bad = True
        assert (int(one.errors.item()) > 0) == ref_bad


@pytest.mark.parametrize("groups_per_program", [WIDE, 8])
def test_worst_lane_stays_inside_the_buffers(device, monkeypatch, groups_per_program):
    """Every address the kernel loads or stores (mask on) lies inside one
    buffer, for the worst lane there is: every state reads table_log = 12
    bits and the last lane starts at the payload's end (size 0, its bytes
    given to the lane before), so it reads its full 12 * (K + 1) bits and
    its look-ahead word from the slack. The interpreter does no bounds
    checks itself, so its loads and stores are watched. With 8 groups a
    program, the program runs unmasked steps first, where the "fifo" build
    asks for words FIFO_AHEAD past its look-ahead word."""
    if device != "cpu":
        pytest.skip("watches the interpreter's memory accesses")
    from triton.runtime import interpreter
    rng = np.random.default_rng(13)
    k = 48          # 8 groups of 48-symbol lanes: unmasked steps past the FIFO's depth
    symbols = np.tile(np.arange(4096, dtype=np.uint32), 3)     # 8 full groups of 32 lanes
    rng.shuffle(symbols)
    rotated = (symbols << np.uint32(20)) | rng.integers(0, 1 << 20, symbols.size, dtype=np.uint32)
    bits = (rotated >> np.uint32(1)) | ((rotated & np.uint32(1)) << np.uint32(31))
    enc = force_tans(bits, "F32", 12, 12, k)
    assert np.all(enc.counts == 1)            # every state reads 12 bits
    sizes = enc.lane_sizes.copy()
    sizes[-2] += sizes[-1]
    sizes[-1] = 0
    bad = EncodedTensor(enc.dtype, enc.shape, CODEC_TANS, enc.checksum, enc.geometry,
                        enc.counts, sizes, enc.payload, enc.raw)
    outside = []

    def watch(ptrs, mask):
        at = np.asarray(ptrs.data, dtype=np.uint64)[np.asarray(mask.data, dtype=bool)]
        if at.size and not any(lo <= at.min() and at.max() < hi for lo, hi in spans):
            outside.append((int(at.min()), int(at.max())))

    load = interpreter.InterpreterBuilder.create_masked_load
    store = interpreter.InterpreterBuilder.create_masked_store

    def watched_load(self, ptrs, mask, *args):
        watch(ptrs, mask)
        return load(self, ptrs, mask, *args)

    def watched_store(self, ptrs, value, mask, *args):
        watch(ptrs, mask)
        return store(self, ptrs, value, mask, *args)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", watched_load)
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_store", watched_store)
    for build in INTERPRETED_BUILDS:
        dec = block_decoder([bad], device, build, groups_per_program=groups_per_program)
        unmasked = dec.desc[:, kernel.DESC_MIN_STEPS] - td.RAW_AHEAD
        # The staged build reads words it copied in the loop.
        assert (unmasked > kernel.FIFO_MIN_STEPS + kernel.FIFO_SLOTS.value).any() \
            == (groups_per_program == 8)
        out = dec.new_output()
        buffers = [dec.desc, dec.table, dec.lane_bits, dec.payload, dec.raw, out, dec.errors,
                   dec.fifo]
        spans = [(b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()) for b in buffers]
        dec.decode(out)
        assert not outside, f"{build}: {len(outside)} loads or stores leave the buffers"
        with pytest.raises(CorruptDataError):
            dec.check()


# -- host-side checks ------------------------------------------------------

def test_the_back_end_stays_below_the_torch_integration():
    """Back ends sit below floatzip.torch: importing this one loads none of it."""
    code = ("import sys, floatzip.backends.triton; "
            "print(sorted(m for m in sys.modules if m.startswith('floatzip.torch')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_cpu_needs_the_interpreter(monkeypatch):
    enc = encode(weights(np.random.default_rng(10), 100, "BF16"), "BF16")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(UnsupportedError, match="TRITON_INTERPRET"):
        td.DeviceCodedTensor(enc, "cpu")
    with pytest.raises(UnsupportedError):
        td.DeviceBlockDecoder.from_encoded([enc], "meta")


def test_inline_ptx_builds_need_a_gpu(monkeypatch):
    """The shared-table and prefetching builds (inline PTX) cannot run in
    the interpreter: a clear error at construction, not at the first
    decode; by default the interpreter gets the plain build, a GPU the
    tuned one; unknown builds are refused."""
    if torch.cuda.is_available():
        pytest.skip("a GPU runs the inline-PTX builds")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    enc = encode(weights(np.random.default_rng(12), 100, "BF16"), "BF16")
    for option, value in (("table_memory", "shared"), ("prefetch", "L2"), ("staging", "async")):
        with pytest.raises(UnsupportedError, match=f"{option}='{value}'.*TRITON_INTERPRET"):
            td.DeviceBlockDecoder.from_encoded([enc], "cpu", **{option: value})
    # The cp.async FIFO wants a thread (or more lanes) a lane, in static
    # shared memory: refused anywhere otherwise.
    for groups in (1, 2 * kernel.MAX_ASYNC_GROUPS):
        with pytest.raises(UnsupportedError, match="num_warps <= groups_per_program"):
            td.DeviceBlockDecoder.from_encoded([enc], "cpu", staging="async", num_warps=4,
                                               groups_per_program=groups)
    dec = td.DeviceBlockDecoder.from_encoded([enc], "cpu")
    assert (dec.table_memory, dec.prefetch, dec.staging) == ("global", "none", "none")
    assert td.resolve_build(interpreted=False) == td.CUDA_BUILD
    for option, value in (("table_memory", "texture"), ("prefetch", "L3"), ("staging", "tma")):
        with pytest.raises(DecoderArgumentError, match=option):
            td.DeviceBlockDecoder.from_encoded([enc], "cpu", **{option: value})


def test_a_gpu_launch_gets_the_arguments_of_its_build(monkeypatch):
    """What a decoder hands Triton on a GPU, checked without one (Triton's
    launch replaced by a recorder): one program per descriptor row, the
    kernel's tensor arguments in its order, and the constexprs of each
    CUDA build, which the launch must not refuse."""
    import inspect
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    enc = encode(weights(np.random.default_rng(15), 3000, "BF16"), "BF16", lane_symbols=32)
    dec = td.DeviceBlockDecoder.from_encoded([enc], "cpu", staging="fifo")
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((grid, args, kw))

    monkeypatch.setattr(block, "launchable", lambda name: Recorder())
    monkeypatch.delenv("TRITON_INTERPRET")
    params = inspect.signature(kernel._decode_kernel).parameters
    tensor_args = [n for n, p in params.items() if p.annotation != "tl.constexpr"]
    assert tensor_args == [n for n, t in kernel_builds.SIGNATURE.items() if t != "constexpr"]
    for build in (td.CUDA_BUILD._replace(prefetch="L2"), td.CUDA_BUILD._replace(prefetch="none"),
                  td.KernelBuild("shared", "none", 16, "async"),
                  td.KernelBuild("global", "none", 8, "fifo"),
                  td.KernelBuild("shared", "none", 16, "none", 64)):
        dec.build = build
        dec.decode()
        grid, args, kw = launches[-1]
        assert grid == (dec.programs,)
        assert args == (dec.desc, dec.table, dec.lane_bits, dec.payload, dec.raw, args[5],
                        dec.errors, dec.fifo)
        assert len(args) == len(tensor_args)
        cap = {"maxnreg": build.max_registers} if build.max_registers else {}
        assert kw == {**kernel_builds.kernel_constants(4, 4, build), "num_warps": 4, **cap}
        assert kw["STAGING"] == td.STAGINGS.index(build.staging)


def test_auto_prefetch_follows_the_launch_size(monkeypatch):
    """prefetch="auto" prefetches when a launch has fewer lanes than the
    GPU keeps resident (PREFETCH_LANES_PER_SM a multiprocessor), else not;
    without CUDA it never does."""
    monkeypatch.setattr(kernel_builds, "_multiprocessors", lambda device: 2)
    auto = td.KernelBuild("shared", "auto", 16)
    cuda = torch.device("cuda", 0)
    resident = 2 * kernel_builds.PREFETCH_LANES_PER_SM
    resolve = kernel_builds.resolve_prefetch
    assert resolve(auto, resident - 32, cuda).prefetch == td.AUTO_PREFETCH
    assert resolve(auto, resident, cuda).prefetch == "none"
    assert resolve(auto._replace(prefetch="L1"), resident, cuda).prefetch == "L1"
    assert resolve(auto, 32, torch.device("cpu")).prefetch == "none"
    assert td.resolve_build(prefetch="auto", interpreted=True).prefetch == "none"


def test_bad_inputs_raise_floatzip_errors(device):
    rng = np.random.default_rng(11)
    enc = encode(weights(rng, 3000, "BF16"), "BF16", (3000,), lane_symbols=32)
    dec = td.DeviceBlockDecoder.from_encoded([enc], device)
    good = dec.new_output()
    for bad in (good.view(torch.int16), good[:dec.out_nbytes - 1],
                good[1:], torch.zeros(2, dec.out_nbytes, dtype=torch.uint8, device=device)[:, 0],
                "not a tensor"):
        with pytest.raises(DecoderArgumentError):
            dec.decode(bad)
    t = td.DeviceCodedTensor(enc, device)
    with pytest.raises(DecoderArgumentError, match="dtype"):
        t.decode(torch.empty(3000, dtype=torch.float16, device=device))
    with pytest.raises(DecoderArgumentError, match="elements"):
        t.decode(torch.empty(2999, dtype=torch.bfloat16, device=device))
    with pytest.raises(DecoderArgumentError, match="contiguous"):
        t.decode(torch.empty(6000, dtype=torch.bfloat16, device=device)[::2])

    broken = EncodedTensor(enc.dtype, enc.shape, enc.codec, enc.checksum, enc.geometry,
                           enc.counts, enc.lane_sizes[:-1], enc.payload, enc.raw)
    with pytest.raises(FormatError, match="lane_sizes"):
        td.DeviceCodedTensor(broken, device, name="w")
    odd = EncodedTensor(enc.dtype, enc.shape, "zstd", enc.checksum)
    with pytest.raises(UnsupportedError, match="zstd"):
        td.DeviceCodedTensor(odd, device)
    assert issubclass(DecoderArgumentError, FloatzipError)


def test_a_table_that_leaves_itself_is_rejected(device, monkeypatch):
    """The kernel reads the table unmasked, so every next state must stay
    inside it; the host checks the table before it goes to the device."""
    enc = encode(weights(np.random.default_rng(12), 3000, "BF16"), "BF16", lane_symbols=32)
    real = tans.build_decode_table

    def broken(counts, first_symbol, table_log):
        table = real(counts, first_symbol, table_log).copy()
        table[7] = (table[7] & ~np.uint32(0xFFFF)) | np.uint32(1 << table_log)   # base = size
        return table

    monkeypatch.setattr(tans, "build_decode_table", broken)
    with pytest.raises(FormatError, match="decode table"):
        td.DeviceCodedTensor(enc, device, name="w")


def test_staged_words_are_asked_for_early_enough():
    """The "async" build reads a FIFO word FIFO_AHEAD word moves after it
    asked for it, and by then has waited for every copy group but the
    FIFO_WAIT newest (one group a step). Walk a lane that moves as fast as
    the format allows (12 bits a step) from every bit it can enter a word
    at: FIFO_AHEAD moves never take fewer than FIFO_MIN_STEPS steps, so
    the copy has landed when it is read. The
    FIFO holds the word read and the FIFO_AHEAD asked for after it."""
    ahead = kernel.FIFO_AHEAD.value
    fewest = None
    for entered_at in range(tans.MAX_TABLE_LOG):      # bit a lane enters a word at
        pos, steps, moves = entered_at, 0, 0
        while moves < ahead:
            pos += tans.MAX_TABLE_LOG
            steps += 1
            if pos >= 32:
                pos -= 32
                moves += 1
        fewest = steps if fewest is None else min(fewest, steps)
    assert fewest == kernel.FIFO_MIN_STEPS
    # Asked for in step s (its group committed at the end of s), read in
    # step s + FIFO_MIN_STEPS at the earliest, after the wait at the end of
    # the step before, where the group of step s is the FIFO_MIN_STEPS-th
    # newest: complete if more than FIFO_WAIT.
    assert kernel.FIFO_MIN_STEPS > kernel.FIFO_WAIT
    assert kernel.FIFO_SLOTS.value >= ahead + 1
    assert kernel.FIFO_SLOTS.value & (kernel.FIFO_SLOTS.value - 1) == 0


def test_descriptor_columns_match_the_kernel():
    """The kernel reads descriptor columns by number; each read is tagged
    with the DESC_* name whose value it must equal."""
    import inspect
    import re
    source = inspect.getsource(kernel._decode_kernel)
    reads = re.findall(r"tl\.load\(row \+ (\d+)\).*# (DESC_\w+)", source)
    assert len(reads) == 16
    for column, name in reads:
        assert getattr(kernel, name) == int(column), name
    assert max(int(c) for c, _ in reads) < kernel.DESC_FIELDS


# -- the real compiler, without a GPU --------------------------------------

def assert_compiles(capability, groups, num_warps, build):
    """The kernel compiles to machine code with no spills to local memory;
    the shared build reads its table from shared memory and waits for it
    once, outside the loops; the prefetching builds prefetch two lines a
    step in the unmasked loops (one with a staged payload) and none in the
    masked ones; the "async" build copies, commits and waits once a step
    in the unmasked loops, and reads its FIFO from shared memory."""
    table_memory, prefetch, raw_ahead, staging, *max_registers = build
    compiled = kernel_builds.compile_decoder(capability, groups, num_warps, table_memory,
                                             raw_ahead, prefetch, staging, *max_registers)
    if prefetch == "auto":
        prefetch = td.AUTO_PREFETCH      # what a launch small enough gets
    cubin, ptx = compiled.asm["cubin"], compiled.asm["ptx"]
    assert len(cubin) > 0 and f"sm_{capability}" in ptx
    if table_memory == "shared":
        # Declared once, filled, read: the inline PTX survived.
        assert ptx.count("floatzip_decode_table[16384]") == 1
        assert "st.shared.u32" in ptx and "ld.shared.u32" in ptx
    staged = staging != "none"
    fifo_bytes = 4 * kernel.FIFO_SLOTS.value * 32 * groups
    assert ptx.count(f"floatzip_payload_fifo[{fifo_bytes}]") == (staging == "async")
    # Per step of the unmasked loops, for each output width (and the
    # copies that fill the FIFO before them).
    steps = raw_ahead * 3
    assert ptx.count("prefetch.global.") == (prefetch != "none") * (2 - staged) * steps
    assert ptx.count(f"prefetch.global.{prefetch}") == ptx.count("prefetch.global.")
    async_copies = (staging == "async") * (steps + kernel.FIFO_AHEAD.value)
    assert ptx.count("cp.async.ca.shared.global") == async_copies
    assert ptx.count(f"cp.async.wait_group {kernel.FIFO_WAIT};") == (staging == "async") * steps
    if kernel_builds.cuda_tool("cuobjdump") is None:
        return
    assert "LOCAL:0" in kernel_builds.resource_usage(cubin)
    loops = kernel_builds.decode_loops(kernel_builds.sass(cubin))
    assert len(loops) == 6          # per output width: unmasked, masked
    for i, loop in enumerate(loops):
        unmasked = i % 2 == 0
        # Stores of values (the "fifo" build also stores to its FIFOs).
        stores = sum("STG" in op for op in loop) // (1 + (staging == "fifo" and unmasked))
        # One shared-memory table read per symbol stored, and one FIFO read
        # ("@!PT LDS" are the no-ops ptxas puts before LDGSTS).
        shared_reads = sum("LDS" in op and "@!PT" not in op for op in loop)
        fifo_reads = (staging == "async" and unmasked)
        assert shared_reads == ((table_memory == "shared") + fifo_reads) * stores
        assert not any(" BAR" in op or op.startswith("BAR") for op in loop), loop
        copies = sum("LDGSTS" in op for op in loop)
        waits = sum(f"DEPBAR.LE SB0, {hex(kernel.FIFO_WAIT)}" in op for op in loop)
        assert copies == waits == fifo_reads * stores
        prefetches = sum("CCTL" in op for op in loop)
        assert prefetches == (prefetch != "none" and unmasked) * (2 - staged) * stores


needs_nvidia_backend = pytest.mark.skipif("nvidia" not in triton.backends.backends,
                                          reason="this Triton has no NVIDIA back end")


@needs_nvidia_backend
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("build", ALL_BUILDS, ids="-".join)
@pytest.mark.parametrize("capability", [80, 90])
def test_compiles_for(capability, build):
    """Every build for Ampere and Hopper, with the plain ring of raw rows (a
    ring of 16 takes ~4x as long to compile): every launch shape of the
    table builds without prefetch, one for the others."""
    assert set(kernel.KERNELS) == {"decode"}
    table_memory, prefetch, staging = build
    shapes = ((1, 1), (2, 1), (4, 4)) if (prefetch, staging) == ("none", "none") else ((4, 4),)
    for groups, num_warps in shapes:
        assert_compiles(capability, groups, num_warps,
                        (table_memory, prefetch, td.RAW_AHEAD, staging))


@needs_nvidia_backend
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("capability", [80, 90])
def test_cuda_default_build_compiles_for(capability):
    """What a GPU launches by default (CUDA_BUILD), for Ampere and Hopper."""
    assert_compiles(capability, 4, 4, td.CUDA_BUILD)


@needs_nvidia_backend
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("prefetch, staging", [("none", "none"), (td.AUTO_PREFETCH, "none"),
                                               ("none", "async")])
def test_register_cap(prefetch, staging):
    """max_registers reaches ptxas: the default build (72-80 registers a
    thread uncapped, 6-7 programs an SM), with and without its prefetch,
    and the async one, capped at 64 (8 programs) use no more and spill
    nothing inside their decode loops."""
    if kernel_builds.cuda_tool("cuobjdump") is None:
        pytest.skip("this Triton wheel ships no cuobjdump")
    build = td.CUDA_BUILD._replace(prefetch=prefetch, staging=staging, max_registers=64)
    compiled = kernel_builds.compile_decoder(90, 4, 4, **build._asdict())
    assert ".maxnreg 64" in compiled.asm["ptx"]
    registers = int(re.search(r"REG:(\d+)", kernel_builds.resource_usage(compiled.asm["cubin"]))[1])
    assert registers <= 64
    loops = kernel_builds.decode_loops(kernel_builds.sass(compiled.asm["cubin"]))
    assert len(loops) == 6
    assert not [op for loop in loops for op in loop if "LDL" in op or "STL" in op]
    with pytest.raises(DecoderArgumentError, match="max_registers"):
        td.resolve_build(max_registers=60, interpreted=False)
    assert td.resolve_build(max_registers=64, interpreted=True).max_registers == 0


def test_lane_ending_in_a_wrong_state_is_flagged(device):
    # The must-fail fixture whose only fault is lane 0's final state.
    from floatzip.format.container import FloatzipFile
    path = os.path.join(os.path.dirname(__file__), "fixtures", "v1", "must_fail",
                        "lane-final-state.fz.safetensors")
    enc = FloatzipFile(path).encoded("x")
    for build in builds(device):
        dec = block_decoder([enc], device, build)
        dec.decode()
        with pytest.raises(CorruptDataError, match="lane"):
            dec.check()
