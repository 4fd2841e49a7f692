"""The Triton decoder of the fast in-memory code (backends/triton/fast_kernel.py,
fast_host.py) against the NumPy reference (codecs/fast_code.py), bit for bit.

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1,
set by the ``device`` fixture only while these tests run) on CPU tensors;
the interpreter's cost grows with the number of programs and steps, so the
tensors here are a few tiles. ``test_compiles_within_budget`` builds the
real kernel for sm_80 and sm_90 with no GPU and counts its SASS.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from floatzip.backends.triton import builds as kernel_builds  # noqa: E402
from floatzip.backends.triton import decode_fast  # noqa: E402
from floatzip.backends.triton import fast_host, fast_kernel  # noqa: E402
from floatzip.codecs import fast_code  # noqa: E402
from floatzip.errors import CorruptDataError, DecoderArgumentError  # noqa: E402


@pytest.fixture
def device(monkeypatch):
    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"


def bf16_weights(rng, n) -> np.ndarray:
    """N(0, 0.02) weights as BF16 bit patterns."""
    x = torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 0.02)
    return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def palette_of(values: np.ndarray, bits: int) -> np.ndarray:
    """The 2**bits most frequent exponents of ``values``, as the encoder ranks them."""
    order = np.lexsort((np.arange(256), -fast_code.exponent_histogram(values)))
    return order[:1 << bits].astype(np.uint8)


def assert_decodes(ft: fast_code.FastTensor, device):
    """Device decode == reference decode, into a new tensor and into ``out``."""
    want = fast_code.decode(ft)
    got = decode_fast(ft, device=device)
    assert got.dtype == torch.bfloat16 and tuple(got.shape) == (ft.count,)
    np.testing.assert_array_equal(got.view(torch.int16).cpu().numpy().view(np.uint16), want)
    out = torch.full((ft.count,), float("nan"), dtype=torch.bfloat16, device=device)
    assert decode_fast(ft, out=out) is out
    np.testing.assert_array_equal(out.view(torch.int16).cpu().numpy().view(np.uint16), want)


# -- bit-exactness ---------------------------------------------------------

@pytest.mark.parametrize("bits", fast_code.BITS)
def test_every_bf16_value(device, bits):
    """All 65,536 BF16 bit patterns (inf, NaN payloads, subnormals, +-0),
    shuffled, with the palette of real weights: most patterns escape, the
    rest decode through the palette."""
    rng = np.random.default_rng(bits)
    values = np.arange(1 << 16, dtype=np.uint16)
    rng.shuffle(values)
    ft = fast_code.encode(values, bits, palette_of(bf16_weights(rng, 4096), bits))
    assert 0 < ft.escapes < values.size
    assert_decodes(ft, device)


@pytest.mark.parametrize("bits", fast_code.BITS)
def test_weights(device, bits):
    """Real-looking weights (few escapes), over whole and partial steps."""
    rng = np.random.default_rng(10 + bits)
    values = bf16_weights(rng, 3 * fast_code.TILE + 1500)
    ft = fast_code.encode(values, bits, palette_of(values, bits))
    assert_decodes(ft, device)


@pytest.mark.parametrize("count", [1, 255, 256, 257, 4095, 4096, 4097, 5120, 5121])
def test_tails(device, count):
    """Sizes that end inside a group, a step, a tile, and just past them;
    the encoder's own choice of width."""
    rng = np.random.default_rng(count)
    values = bf16_weights(rng, count)
    values[rng.integers(0, count, max(1, count // 50))] = rng.integers(0, 1 << 16, max(1, count // 50),
                                                                     dtype=np.uint16)
    assert_decodes(fast_code.encode(values), device)


@pytest.mark.parametrize("bits", fast_code.BITS)
def test_escapes_at_tile_edges(device, bits):
    """Escapes on the first and last weight of tiles, of steps and of the
    tensor, and a tile made only of escapes."""
    rng = np.random.default_rng(20 + bits)
    n = 3 * fast_code.TILE + 777
    values = bf16_weights(rng, n)
    palette = palette_of(values, bits)
    outside = np.setdiff1d(np.arange(256), palette)
    edges = [0, 1, 1023, 1024, 4095, 4096, 4097, 8191, 8192, n - 778, n - 777, n - 2, n - 1]
    for i in edges:
        e = int(rng.choice(outside))
        values[i] = (values[i] & 0x807F) | (e << 7)
    tile2 = slice(2 * fast_code.TILE, 3 * fast_code.TILE)
    values[tile2] = (values[tile2] & 0x807F) | (rng.choice(outside, fast_code.TILE) << 7).astype(
        np.uint16)
    ft = fast_code.encode(values, bits, palette)
    starts = ft.esc_start.astype(np.int64)
    positions = set((np.repeat(np.arange(starts.size - 1), np.diff(starts)) * fast_code.TILE
                     + ft.esc_pos).tolist())
    assert set(edges) <= positions
    assert starts[3] - starts[2] == fast_code.TILE
    assert_decodes(ft, device)


def test_empty(device):
    ft = fast_code.encode(np.zeros(0, dtype=np.uint16))
    assert decode_fast(ft, device=device).numel() == 0


# -- what is refused, before any launch --------------------------------------

@pytest.fixture
def no_launch(monkeypatch):
    """Fails a test that reaches the kernel."""
    def launch(*args, **kw):
        raise AssertionError("the kernel was launched")
    monkeypatch.setattr(fast_host, "launchable", launch)


def small_code():
    values = bf16_weights(np.random.default_rng(5), 5000)
    values[[3, 4200]] = 0x7F80       # +inf: exponent 255, not in the palette
    ft = fast_code.encode(values, 3)
    assert ft.escapes >= 2
    return ft


@pytest.mark.parametrize("field, value, message", [
    ("esc_pos", np.array([3, 904], dtype=np.uint16), "offset 904 of tile 1, which holds 904"),
    ("esc_start", np.array([0, 2, 2], dtype=np.uint32), "esc_start runs from 0 to 2"),
    ("codes", np.zeros(10, dtype=np.uint8), "codes has 10 elements"),
    ("sm", np.zeros(5000, dtype=np.int8), "sm must be a 1-D uint8 array"),
    ("bits", 5, "bits must be one of"),
])
def test_invalid_code_is_refused(device, no_launch, field, value, message):
    ft = small_code()
    if field == "esc_start":
        value = np.array([0, 1, 3], dtype=np.uint32)[::-1].copy()     # decreasing, wrong ends
    if field == "esc_pos":
        value = ft.esc_pos.copy()
        value[-1] = 904                 # tile 1 holds 5000 - 4096 = 904 weights
    bad = dataclasses.replace(ft, **{field: value})
    with pytest.raises(CorruptDataError, match=re.escape(message) if field != "esc_start"
                       else "esc_start"):
        decode_fast(bad, device=device)
    with pytest.raises(CorruptDataError):
        fast_host.DeviceFastTensor(bad, device)


def test_bad_output_is_refused(device, no_launch):
    ft = small_code()
    with pytest.raises(DecoderArgumentError, match="dtype"):
        decode_fast(ft, out=torch.empty(ft.count, dtype=torch.int16, device=device))
    with pytest.raises(DecoderArgumentError, match="elements"):
        decode_fast(ft, out=torch.empty(ft.count + 1, dtype=torch.bfloat16, device=device))
    with pytest.raises(DecoderArgumentError, match="16-byte"):
        decode_fast(ft, out=torch.empty(ft.count + 1, dtype=torch.bfloat16, device=device)[1:])
    with pytest.raises(DecoderArgumentError, match="FastTensor"):
        decode_fast(fast_code.decode(ft), device=device)


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(Exception, match="TRITON_INTERPRET"):
        decode_fast(small_code(), device="cpu")


# -- the real compiler, without a GPU --------------------------------------

def assert_barrier_before_patch(sass: str) -> None:
    """Every store of the decode (the loop and the masked tail) comes
    before a barrier that every thread passes, which comes before the
    escape patch's loop: the patch's stores land after the decode's."""
    ops = [(int(m[1], 16), m[2]) for m in
           re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", sass)]
    patch_start = min(int(m[1], 16) for at, op in ops
                      if (m := re.search(r"BRA (0x[0-9a-f]+)", op)) and int(m[1], 16) < at
                      and any(a >= int(m[1], 16) and o.startswith("@") and "STG" in o
                              for a, o in ops if a <= at))
    before = [(at, op) for at, op in ops if at < patch_start]
    last_store = max(at for at, op in before if "STG" in op)
    barriers = [at for at, op in before if "BAR.SYNC" in op and not op.startswith("@")]
    assert barriers and max(barriers) > last_store, "no barrier between decode and patch"


needs_nvidia_backend = pytest.mark.skipif("nvidia" not in triton.backends.backends,
                                          reason="this Triton has no NVIDIA back end")


@needs_nvidia_backend
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("bits", fast_code.BITS)
@pytest.mark.parametrize("capability", [80, 90])
def test_compiles_within_budget(capability, bits):
    """The kernel compiles for Ampere and Hopper with no spills, and its
    unmasked decode loop costs at most SASS_BUDGET_PER_WEIGHT instructions
    a weight (issue 15), with vector loads and stores (8 weights a thread
    an iteration) and the barrier before the patch outside it."""
    compiled = fast_kernel.compile_fast_decoder(capability, bits)
    cubin, ptx = compiled.asm["cubin"], compiled.asm["ptx"]
    assert len(cubin) > 0 and f"sm_{capability}" in ptx
    assert "bar.sync" in ptx
    if kernel_builds.cuda_tool("cuobjdump") is None:
        pytest.skip("this Triton wheel ships no cuobjdump")
    assert "LOCAL:0" in kernel_builds.resource_usage(cubin)
    sass = kernel_builds.sass(cubin)
    assert_barrier_before_patch(sass)
    loop = fast_kernel.decode_loop(sass)
    weights = fast_kernel.weights_per_iteration(loop)
    threads = 32 * fast_kernel.NUM_WARPS
    assert weights * threads == fast_kernel.STEP_GROUPS * fast_code.GROUP
    assert not any("BAR" in op or "LDL" in op or "STL" in op for op in loop), loop
    per_weight = len(loop) / weights
    assert per_weight <= fast_kernel.SASS_BUDGET_PER_WEIGHT, (per_weight, loop)
