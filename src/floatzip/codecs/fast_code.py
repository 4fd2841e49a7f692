"""The fast in-memory code for BF16 weights: its definition, its checks and
the NumPy reference encoder and decoder (docs/FAST_CODE.md is the spec;
this module reads like it, section by section).

Files stay tANS-coded (smallest at rest). ``load_model(memory="fast")``
transcodes BF16 weights, at load, into this code, built for decode speed:
no serial dependency between weights, a few shifts and a 16-entry table
lookup per weight (one ``pshufb`` for 32 weights on AVX2). It is not a file
codec: nothing here is ever written to disk, so it has no version field.

A BF16 value is sign (1 bit) | exponent (8) | mantissa (7). Per tensor:

* ``sm``: one byte per weight, sign << 7 | mantissa.
* ``palette``: the 2**bits most frequent exponents (bits = 2, 3 or 4,
  chosen per tensor for the smallest size), and ``codes``: each weight's
  index into it, packed in *planes* per group of GROUP = 256 weights (see
  :func:`plane_widths`).
* escapes, for weights whose exponent is not in the palette: per TILE of
  4096 weights, the offsets in the tile (uint16) and the exponents (uint8).
  The code of an escaped weight is 0; the decoder writes the palette's
  exponent, then overwrites it with the escape's (a patch while the tile is
  in cache; no weight's decode depends on another's).

The numba kernels (backends/numba/fast_code.py) produce and read the same
arrays, bit for bit; tests/test_fast_code.py checks it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptDataError, DecoderArgumentError

GROUP = 256             # weights per group of code planes
TILE = 4096             # weights per escape tile (uint16 offsets; 8 KB of output: L1)
GROUPS_PER_TILE = TILE // GROUP
BITS = (2, 3, 4)        # the code widths an encoder may choose


def plane_widths(bits: int) -> tuple[int, ...]:
    """Field widths of the planes that make a ``bits``-bit code: the first
    plane holds the code's low bits, the second (3 bits only) bit 2.

    In a plane of width w, a group's 32 * w bytes hold 8 // w fields each:
    the field of weight i of the group (0 <= i < 256) is bits
    w * (i // (32 * w)) .. + w - 1 of byte i % (32 * w). Weights 32 apart
    are thus in consecutive bytes: 32 weights decode from 32 consecutive
    bytes with one shift and one mask."""
    if bits == 2:
        return (2,)
    if bits == 3:
        return (2, 1)
    if bits == 4:
        return (4,)
    raise DecoderArgumentError(f"fast code: bits must be one of {BITS}, not {bits!r}")


def group_code_bytes(bits: int) -> int:
    """Bytes of ``codes`` per group: 32 * bits (the planes back to back)."""
    return 32 * bits


def groups(count: int) -> int:
    return -(-count // GROUP)


def tiles(count: int) -> int:
    return -(-count // TILE)


@dataclass(frozen=True, eq=False)
class FastTensor:
    """One BF16 tensor in the fast code. Made by :func:`encode` (or the
    numba encoder) and checked by :meth:`validate` before any kernel reads
    it; its arrays are read-only."""
    count: int                  # weights
    bits: int                   # 2, 3 or 4
    palette: np.ndarray         # uint8[2**bits]: exponent of each code
    codes: np.ndarray           # uint8[groups(count) * 32 * bits]: the code planes
    sm: np.ndarray              # uint8[count]: sign << 7 | mantissa
    esc_start: np.ndarray       # uint32[tiles(count) + 1]: tile t's escapes are
                                # esc_start[t] .. esc_start[t + 1] - 1
    esc_pos: np.ndarray         # uint16[escapes]: offset in its tile
    esc_exp: np.ndarray         # uint8[escapes]: the weight's exponent

    @property
    def escapes(self) -> int:
        return int(self.esc_pos.size)

    @property
    def nbytes(self) -> int:
        """Memory the code holds (what replaces 2 * count bytes of BF16)."""
        return sum(a.nbytes for a in self._arrays())

    def validate(self, where: str = "fast code") -> None:
        """Check every field against the others; CorruptDataError naming
        the field otherwise. After this, no index a decoder computes from
        these arrays falls outside them (docs/FAST_CODE.md, "checks").
        Done once: a FastTensor is frozen and its arrays read-only, so a
        decoder calls this before every decode at no cost."""
        if self.__dict__.get("_valid"):
            return
        self._check(where)
        if all(not a.flags.writeable for a in self._arrays()):
            object.__setattr__(self, "_valid", True)

    def _arrays(self):
        return (self.palette, self.codes, self.sm, self.esc_start, self.esc_pos, self.esc_exp)

    def _check(self, where: str) -> None:
        def bad(msg):
            raise CorruptDataError(f"{where}: {msg}")
        n = self.count
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            bad(f"count must be a non-negative integer, not {n!r}")
        if self.bits not in BITS:
            bad(f"bits must be one of {BITS}, not {self.bits!r}")
        want = {
            "palette": (np.uint8, 1 << self.bits),
            "codes": (np.uint8, groups(n) * group_code_bytes(self.bits)),
            "sm": (np.uint8, n),
            "esc_start": (np.uint32, tiles(n) + 1),
            "esc_pos": (np.uint16, None),
            "esc_exp": (np.uint8, self.esc_pos.size if isinstance(self.esc_pos, np.ndarray)
                        else None),
        }
        for name, (dtype, size) in want.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 1:
                bad(f"{name} must be a 1-D {np.dtype(dtype).name} array, not "
                    f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
            if not a.flags.c_contiguous:
                bad(f"{name} must be contiguous")
            if size is not None and a.size != size:
                bad(f"{name} has {a.size} elements, expected {size}")
        start = self.esc_start.astype(np.int64)
        if start[0] != 0 or start[-1] != self.esc_pos.size:
            bad(f"esc_start runs from {start[0]} to {start[-1]}, expected 0 to "
                f"{self.esc_pos.size} (the escape count)")
        per_tile = np.diff(start)
        if (per_tile < 0).any():
            bad(f"esc_start decreases at tile {int(np.argmax(per_tile < 0))}")
        if self.esc_pos.size:
            tile = np.repeat(np.arange(per_tile.size, dtype=np.int64), per_tile)
            limit = np.minimum(TILE, n - tile * TILE)
            over = self.esc_pos.astype(np.int64) >= limit
            if over.any():
                i = int(np.argmax(over))
                bad(f"escape {i} is at offset {int(self.esc_pos[i])} of tile {int(tile[i])}, "
                    f"which holds {int(limit[i])} weights")


def _read_only(*arrays):
    for a in arrays:
        a.flags.writeable = False


# -- choosing the palette and the width --------------------------------------------

def exponent_histogram(values: np.ndarray) -> np.ndarray:
    """int64[256]: how many of the BF16 ``values`` (uint16) have each exponent."""
    return np.bincount((values >> 7) & 0xFF, minlength=256).astype(np.int64)


def code_size(count: int, bits: int, escapes: int) -> int:
    """Bytes of the fast code of ``count`` weights with ``escapes`` escapes."""
    return ((1 << bits) + groups(count) * group_code_bytes(bits) + count
            + 4 * (tiles(count) + 1) + 3 * escapes)


def choose(histogram: np.ndarray, count: int) -> tuple[int, np.ndarray]:
    """(bits, palette) with the smallest code for an exponent ``histogram``:
    for each width, the 2**bits most frequent exponents (ties: the smaller
    exponent first), in decreasing frequency. Equal sizes: the wider code
    (fewer escapes to patch)."""
    order = np.lexsort((np.arange(256), -histogram))   # by count down, then exponent up
    best = None
    for bits in BITS:
        palette = order[:1 << bits]
        escapes = count - int(histogram[palette].sum())
        size = code_size(count, bits, escapes)
        if best is None or size <= best[0]:
            best = (size, bits, palette)
    return best[1], best[2].astype(np.uint8)


def code_table(palette: np.ndarray) -> np.ndarray:
    """uint8[256]: exponent -> its code, 0xFF where it is not in the palette."""
    table = np.full(256, 0xFF, dtype=np.uint8)
    table[palette[::-1]] = np.arange(palette.size, dtype=np.uint8)[::-1]   # first wins
    return table


# -- the reference encoder ---------------------------------------------------------

def check_values(values) -> np.ndarray:
    """The BF16 bit patterns as a flat uint16 array; DecoderArgumentError otherwise."""
    if not isinstance(values, np.ndarray) or values.dtype != np.uint16:
        raise DecoderArgumentError(f"fast code: values must be a uint16 array (BF16 bit "
                                   f"patterns), not {getattr(values, 'dtype', type(values).__name__)}")
    return np.ascontiguousarray(values).reshape(-1)


def pack_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """The planes of ``codes`` (uint8, one per weight, < 2**bits), group
    after group, as :func:`plane_widths` lays them out."""
    n = codes.size
    padded = np.zeros(groups(n) * GROUP, dtype=np.uint8)
    padded[:n] = codes
    padded = padded.reshape(-1, GROUP)
    planes, low = [], 0
    for w in plane_widths(bits):
        field = (padded >> low) & ((1 << w) - 1)
        field = field.reshape(-1, 8 // w, 32 * w)       # [group, field in byte, byte]
        shifts = (w * np.arange(8 // w, dtype=np.uint8)).reshape(1, -1, 1)
        planes.append(np.bitwise_or.reduce(field << shifts, axis=1).astype(np.uint8))
        low += w
    return np.concatenate(planes, axis=1).reshape(-1)


def encode(values: np.ndarray, bits: int | None = None,
           palette: np.ndarray | None = None) -> FastTensor:
    """The fast code of BF16 ``values`` (uint16 bit patterns). ``bits`` and
    ``palette`` default to :func:`choose`'s; given, the palette must have
    2**bits distinct exponents."""
    values = check_values(values)
    n = values.size
    if bits is None or palette is None:
        bits, palette = choose(exponent_histogram(values), n)
    palette = np.asarray(palette, dtype=np.uint8)
    plane_widths(bits)
    if palette.shape != (1 << bits,) or np.unique(palette).size != palette.size:
        raise DecoderArgumentError(f"fast code: a {bits}-bit palette needs {1 << bits} distinct "
                                   f"exponents, got {palette.tolist()}")
    exponent = ((values >> 7) & 0xFF).astype(np.uint8)
    sm = (((values >> 8) & 0x80) | (values & 0x7F)).astype(np.uint8)
    code = code_table(palette)[exponent]
    escaped = np.flatnonzero(code == 0xFF)
    code[escaped] = 0
    per_tile = np.bincount(escaped // TILE, minlength=tiles(n))
    esc_start = np.zeros(tiles(n) + 1, dtype=np.uint32)
    np.cumsum(per_tile, out=esc_start[1:])
    ft = FastTensor(n, bits, palette.copy(), pack_planes(code, bits), sm, esc_start,
                    (escaped % TILE).astype(np.uint16), exponent[escaped])
    _read_only(ft.palette, ft.codes, ft.sm, ft.esc_start, ft.esc_pos, ft.esc_exp)
    return ft


# -- the reference decoder ---------------------------------------------------------

def unpack_planes(codes: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_planes`: each weight's code (uint8[count])."""
    per_group = group_code_bytes(bits)
    rows = codes.reshape(-1, per_group)
    out = np.zeros((rows.shape[0], GROUP), dtype=np.uint8)
    start, low = 0, 0
    for w in plane_widths(bits):
        plane = rows[:, start:start + 32 * w]                   # [group, byte]
        shifts = (w * np.arange(8 // w, dtype=np.uint8)).reshape(1, -1, 1)
        field = (plane[:, None, :] >> shifts) & ((1 << w) - 1)  # [group, field in byte, byte]
        out |= (field.reshape(-1, GROUP) << low).astype(np.uint8)
        start += 32 * w
        low += w
    return out.reshape(-1)[:count]


def check_out(ft: FastTensor, out) -> np.ndarray:
    """``out`` as the flat uint16 array decode writes; DecoderArgumentError
    unless it is a writable, contiguous uint16 or uint8 array of exactly
    the tensor's size."""
    if out is None:
        return np.empty(ft.count, dtype=np.uint16)
    if (not isinstance(out, np.ndarray) or out.dtype not in (np.uint16, np.uint8)
            or not out.flags.c_contiguous or not out.flags.writeable
            or out.nbytes != 2 * ft.count):
        raise DecoderArgumentError(
            f"fast code: out must be a writable contiguous uint16 (or uint8) array of "
            f"{2 * ft.count} bytes, not {getattr(out, 'dtype', type(out).__name__)} "
            f"{getattr(out, 'shape', '')}")
    return out.reshape(-1).view(np.uint16)


def check_tensor(ft) -> None:
    """What a decoder checks of its input: a FastTensor, valid."""
    if not isinstance(ft, FastTensor):
        raise DecoderArgumentError(f"fast code: expected a FastTensor, not {type(ft).__name__}")
    ft.validate()


def decode(ft: FastTensor, out: np.ndarray | None = None) -> np.ndarray:
    """The BF16 bit patterns (uint16[count]) of a fast code, into ``out``
    when given. Validates ``ft`` first."""
    check_tensor(ft)
    out16 = check_out(ft, out)
    exponent = ft.palette[unpack_planes(ft.codes, ft.bits, ft.count)]
    if ft.escapes:
        per_tile = np.diff(ft.esc_start.astype(np.int64))
        tile = np.repeat(np.arange(per_tile.size, dtype=np.int64), per_tile)
        exponent[tile * TILE + ft.esc_pos] = ft.esc_exp
    sm = ft.sm.astype(np.uint16)
    out16[:] = ((sm & 0x80) << 8) | (exponent.astype(np.uint16) << 7) | (sm & 0x7F)
    return out16 if out is None else out
