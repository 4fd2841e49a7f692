"""Reference back end in plain NumPy: the educational coder.

It follows docs/FORMAT.md step by step and is the ground truth every other
back end is tested against, byte for byte. It is vectorised across lanes
(all lanes advance one symbol per step, as GPU threads would), so it is slow
on small tensors but never wrong.
"""
from __future__ import annotations

import numpy as np

from ..codecs import tans, words
from ..codecs.layout import LANES, CodedGeometry, lane_order, lane_symbol_counts
from ..errors import CorruptDataError

name = "numpy"
can_encode = True


def devices() -> frozenset[str]:
    return frozenset({"cpu"})


# -- raw fields ------------------------------------------------------------

def pack_raw(raw: np.ndarray, raw_bits: int) -> np.ndarray:
    """Fixed-width fields, least significant bit first, value 0 first."""
    if raw_bits == 0 or raw.size == 0:
        return np.zeros((raw.size * raw_bits + 7) // 8, dtype=np.uint8)
    planes = ((raw[:, None] >> np.arange(raw_bits, dtype=raw.dtype)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_raw(packed: np.ndarray, count: int, raw_bits: int, dtype) -> np.ndarray:
    """Inverse of pack_raw: field ``i`` is the ``raw_bits`` bits at bit
    ``i * raw_bits``, least significant first."""
    if raw_bits == 0:
        return np.zeros(count, dtype=dtype)
    # Every 8 fields fill exactly ``raw_bits`` bytes, so view the bytes as rows
    # of 8 fields; field j of a row starts at bit j * raw_bits of the row.
    rows = -(-count // 8)
    data = np.zeros(rows * raw_bits, dtype=np.uint8)
    data[:packed.size] = packed
    data = data.reshape(rows, raw_bits)
    wide = np.uint32 if raw_bits <= 24 else np.uint64
    out = np.empty((rows, 8), dtype=wide)
    for j in range(8):
        first, shift = divmod(j * raw_bits, 8)
        value = np.zeros(rows, dtype=wide)
        for k in range((shift + raw_bits + 7) // 8):
            value |= data[:, first + k].astype(wide) << wide(8 * k)
        out[:, j] = (value >> wide(shift)) & wide((1 << raw_bits) - 1)
    return out.reshape(-1)[:count].astype(dtype)


def byte_windows(data: np.ndarray, width: int) -> np.ndarray:
    """``w[j]`` = bytes ``j .. j+width-1`` as a little-endian integer (bytes
    past the end read as zero), for every ``j``; width <= 4."""
    padded = np.concatenate((np.asarray(data, dtype=np.uint8), np.zeros(width, dtype=np.uint8)))
    window = np.zeros(len(data) + 1, dtype=np.uint32)
    for k in range(width):
        window |= padded[k:k + len(window)].astype(np.uint32) << np.uint32(8 * k)
    return window


# -- symbols ---------------------------------------------------------------

def statistics(bits: np.ndarray, width: int, top_bits: int, workers: int = 1):
    """What every coding decision is made from: (counts, varying).
    ``counts`` (int64[2**(top_bits+1)]): how many values have each
    combination of the top ``top_bits`` bits below the sign (exponent, then
    mantissa) and the sign, at index ``top << 1 | sign``. ``varying``: the
    bits in which some value differs from the first (OR of ``v ^ v[0]``)."""
    v = np.ascontiguousarray(bits).reshape(-1).astype(np.int64)
    if v.size == 0:
        return np.zeros(2 << top_bits, dtype=np.int64), 0
    index = ((v & ((1 << (width - 1)) - 1)) >> (width - 1 - top_bits)) << 1 | (v >> (width - 1))
    varying = int(np.bitwise_or.reduce(v ^ v[0]))
    return np.bincount(index, minlength=2 << top_bits), varying


def encode(bits: np.ndarray, geometry_args: dict, counts: np.ndarray, workers: int = 1):
    """Encode the values ``bits`` (unsigned ints of the value width) with the
    given parameters. Returns (lane_sizes u16, payload u8, raw u8)."""
    g = CodedGeometry(count=bits.size, table_symbols=len(counts), payload_bytes=0,
                      **geometry_args)
    table_log, first_symbol, lane_symbols = g.table_log, g.first_symbol, g.lane_symbols
    size = 1 << table_log
    n = bits.size

    symbols, raw = words.split(bits, g)
    packed_raw = pack_raw(raw, g.raw_bits)

    next_state, cumulative = tans.build_encode_table(counts, table_log)
    freq = counts.astype(np.int64)
    order = lane_order(n, lane_symbols)
    per_lane = lane_symbol_counts(n, lane_symbols)
    lane_syms = np.append(symbols - first_symbol, 0)[order]   # [lanes, K]
    lanes = order.shape[0]

    # Encode each lane backwards from state L; record (value, nbits) fields.
    values = np.zeros((lanes, lane_symbols + 1), dtype=np.int64)
    nbits = np.zeros((lanes, lane_symbols + 1), dtype=np.int64)
    x = np.full(lanes, size, dtype=np.int64)
    for step in range(lane_symbols - 1, -1, -1):
        active = step < per_lane
        s = lane_syms[:, step]
        f = freq[s]
        nb = tans.highest_bit(x) - tans.highest_bit(f)
        nb -= (x >> nb) < f
        nb = np.where(active, nb, 0)
        values[:, step + 1] = x & ((1 << nb) - 1)
        nbits[:, step + 1] = nb
        x = np.where(active, next_state[cumulative[s] + (x >> nb) - f], x)
    # The decoder starts from the encoder's final state, written first.
    has_symbols = per_lane > 0
    values[:, 0] = np.where(has_symbols, x - size, 0)
    nbits[:, 0] = np.where(has_symbols, table_log, 0)

    lane_bits = nbits.sum(axis=1)
    lane_sizes = (lane_bits + 7) // 8
    lane_start = np.concatenate(([0], np.cumsum(lane_sizes)[:-1])) * 8
    field_start = lane_start[:, None] + np.cumsum(nbits, axis=1) - nbits
    stream = np.zeros(int(lane_sizes.sum()) * 8, dtype=np.uint8)
    for bit in range(tans.MAX_TABLE_LOG):
        has = nbits > bit
        stream[field_start[has] + bit] = (values[has] >> bit) & 1
    payload = np.packbits(stream, bitorder="little")
    return lane_sizes.astype(np.uint16), payload, packed_raw


def check_final_state(state: np.ndarray, ended: np.ndarray) -> None:
    """A lane's decoder must end in state 0, where its encoder started (L)."""
    bad = np.flatnonzero(ended & (state != 0))
    if bad.size:
        lane = int(bad[0])
        raise CorruptDataError(f"lane {lane}: ends in state {int(state[lane])}, not 0")


def decode(geometry: CodedGeometry, counts: np.ndarray, lane_sizes: np.ndarray,
           payload: np.ndarray, raw: np.ndarray, dtype, workers: int = 1,
           out: np.ndarray | None = None) -> np.ndarray:
    """Decode validated sections into the values' bits (``dtype``, flat), or
    into ``out`` (``count`` values of that dtype) when given.
    Raises CorruptDataError if a lane does not end exactly where it should."""
    n = geometry.count
    dtype = np.dtype(dtype)
    size = 1 << geometry.table_log
    # One extra entry, index ``size``: a lane that has decoded all its symbols
    # parks there (0 bits, next state ``size`` again), so the loop needs no masks.
    table = np.append(tans.build_decode_table(counts, geometry.first_symbol, geometry.table_log)
                      .astype(np.int64), size)

    per_lane = lane_symbol_counts(n, geometry.lane_symbols)
    sizes = lane_sizes.astype(np.int64)
    lane_start = np.concatenate(([0], np.cumsum(sizes)[:-1])) * 8
    # A read at bit p takes the 3 bytes from p >> 3: <= 12 bits at offset <= 7.
    # A corrupt stream can overrun its lane by at most lane_symbols * 12 bits;
    # reads past the payload see zeros, and the end-of-lane check rejects it.
    slack = geometry.lane_symbols * tans.MAX_TABLE_LOG // 8 + 8
    window = byte_windows(np.concatenate((payload, np.zeros(slack, dtype=np.uint8))), 3)

    lanes = per_lane.size
    position = lane_start.copy()
    state = np.where(per_lane > 0, (window[position >> 3] >> (position & 7)).astype(np.int64) & (size - 1), size)
    position += np.where(per_lane > 0, geometry.table_log, 0)
    lane_syms = np.zeros((geometry.lane_symbols, lanes), dtype=np.uint16)
    for step in range(geometry.lane_symbols):
        ending = per_lane == step
        if step and ending.any():
            check_final_state(state, ending)
            state[ending] = size
        entry = table[state]
        lane_syms[step] = entry >> tans.ENTRY_SYMBOL_SHIFT
        nbits = (entry >> tans.ENTRY_NBITS_SHIFT) & 0xF
        bits = (window[position >> 3] >> (position & 7)).astype(np.int64) & ((1 << nbits) - 1)
        state = (entry & tans.ENTRY_BASE_MASK) + bits
        position += nbits

    check_final_state(state, per_lane == geometry.lane_symbols)
    used_bits = position - lane_start
    if np.any((used_bits + 7) // 8 != sizes):
        bad = int(np.flatnonzero((used_bits + 7) // 8 != sizes)[0])
        raise CorruptDataError(
            f"lane {bad}: decoding used {int(used_bits[bad])} bits but the lane holds "
            f"{int(sizes[bad])} bytes")
    tail = (-used_bits) % 8
    if np.any((window[position >> 3] >> (position & 7)).astype(np.int64) & ((1 << tail) - 1)):
        raise CorruptDataError("non-zero padding bits at the end of a lane")

    # [step, group, lane] -> value order: value g*32*K + 32*step + lane.
    symbols = lane_syms.reshape(geometry.lane_symbols, geometry.groups, LANES)
    symbols = symbols.transpose(1, 0, 2).reshape(-1)[:n]
    raw_vals = unpack_raw(raw, n, geometry.raw_bits, np.int64)
    values = words.join(symbols, raw_vals, geometry).astype(dtype)
    if out is None:
        return values
    out[...] = values
    return out
