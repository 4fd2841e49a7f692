"""Fast CPU back end: the reference coder compiled with numba.

Same streams as ``numpy_ref``, byte for byte; tests/test_backends.py checks it.
What makes it fast:

* Lane interleaving. A core decodes the 32 lanes of a group together, the
  step loop outside and the lane loop inside: the 32 lanes' dependency
  chains (table read -> bit read -> next state) overlap, and the values of
  one step are 32 consecutive outputs, written in order.
* One table read per symbol. The decoding table is rebuilt so each uint32
  entry holds the next-state base, the bit count and the symbol already
  shifted and sign-rotated into its place in the output word; the output is
  that OR the raw field, whose lowest bit (the sign) moves to the top.
* Unaligned 64-bit loads (one per symbol and one per raw field) instead of
  byte-by-byte reads. They may read up to 8 bytes past the field, so every
  group that could read past the end of ``payload`` or ``raw`` (only the last
  one or two, even on a corrupt stream) is decoded from a zero-padded copy
  of the tail instead.
* Groups are split over threads; the kernels release the GIL.

Kernels are compiled on first use (``cache=True`` keeps them on disk), one
specialization per value storage type (uint8/16/32); everything else is a
run-time argument.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..codecs import tans
from ..codecs.layout import LANES, CodedGeometry
from ..errors import CorruptDataError

name = "numba"

if sys.byteorder != "little":      # the unaligned loads assume it
    raise ImportError("the numba back end needs a little-endian machine")

_NJIT = dict(cache=True, nogil=True)
# Widest field a step reads: a bit-reader load returns 64 bits, a field is at
# most 12 (payload) or 24 + 7 (raw) of them from the load's first bit.
_LOAD_BYTES = 8

# Packed decoding-table entry (ours, not the format's tans entry):
#   bits  0..11  base      next state = base + (nbits bits from the stream)
#   bits 12..15  nbits
#   bits 16..31  the symbol's part of the output word, >> out_shift
_E_NBITS_SHIFT = 12
_E_OUT_SHIFT = 16

# Packed encoding parameters of one symbol (0 marks a symbol with count 0):
#   bits  0..15  threshold  states below it emit nbits0 - 1 bits, others nbits0
#   bits 16..19  nbits0
#   bits 32..47  cumulative - count + 2**table_log  (kept non-negative)
_P_NBITS_SHIFT = 16
_P_DELTA_SHIFT = 32

# Encoder's error codes (negative; -1 - index names the offending value)
_OK = 0


# -- unaligned little-endian loads and stores ------------------------------

@intrinsic
def _load_u64(typingctx, buf, index):
    """8 bytes of a uint8 array from ``index`` on, as a little-endian uint64.
    No bounds check: the caller guarantees index + 8 <= buf.size."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(ary.data, [idx]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)
    return types.uint64(buf, index), codegen


@intrinsic
def _store_u64(typingctx, buf, index, value):
    """Write ``value`` as 8 little-endian bytes at ``index`` of a uint8 array.
    No bounds check: the caller guarantees index + 8 <= buf.size."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        val = context.cast(builder, args[2], signature.args[2], types.uint64)
        ptr = builder.bitcast(builder.gep(ary.data, [idx]), ir.IntType(64).as_pointer())
        builder.store(val, ptr, align=1)
        return context.get_dummy_value()
    return types.none(buf, index, value), codegen


# -- decoder ---------------------------------------------------------------

@numba.njit(**_NJIT)
def _decode_groups(table, payload, lane_start, raw, out, count, lane_symbols, table_log,
                   raw_bits, width, out_shift, err):
    """Decode whole groups into ``out``.

    table        uint32[2**table_log]  packed entries (see _E_* above)
    payload      uint8[]   holds every lane of these groups, 8+ bytes of slack
                           past the furthest bit any step could reach
    lane_start   int64[32*groups+1]  byte offset of each lane in ``payload``,
                           then the end of the last lane
    raw          uint8[]   packed raw fields, from the first value of ``out``,
                           8+ bytes of slack
    out          uint8/16/32[count]  the values of these groups
    err          int64[3]  on failure: lane (relative), bits used, kind (1 size, 2 padding)
    Returns 0, or 1 on failure.
    """
    group = LANES * lane_symbols
    groups = (count + group - 1) // group
    state_mask = (1 << table_log) - 1
    raw_mask = (1 << raw_bits) - 1
    sign_shift = width - 1
    state = np.zeros(LANES, np.int64)
    pos = np.zeros(LANES, np.int64)
    raw_byte = np.empty(LANES, np.int64)
    raw_shift = np.empty(LANES, np.int64)
    for lane in range(LANES):
        raw_byte[lane] = (lane * raw_bits) >> 3
        raw_shift[lane] = (lane * raw_bits) & 7
    step_raw_bytes = LANES * raw_bits // 8
    for g in range(groups):
        first = g * group
        left = count - first
        full_steps = min(lane_symbols, left // LANES)
        partial = left - full_steps * LANES if left < group else 0
        for lane in range(LANES):
            start = lane_start[g * LANES + lane] * 8
            if lane < left:
                state[lane] = np.int64(_load_u64(payload, start >> 3)) & state_mask
                pos[lane] = start + table_log
            else:
                state[lane] = 0
                pos[lane] = start
        rbase = first * raw_bits // 8
        for step in range(full_steps + (1 if partial else 0)):
            lanes = LANES if step < full_steps else partial
            obase = first + step * LANES
            for lane in range(lanes):
                e = np.int64(table[state[lane]])
                p = pos[lane]
                # Arithmetic shifts of the signed load only smear the top
                # bits; the fields taken are at most 12 + 7 and 24 + 7 bits.
                window = np.int64(_load_u64(payload, p >> 3)) >> (p & 7)
                nb = (e >> _E_NBITS_SHIFT) & 15
                state[lane] = (e & 0xFFF) + (window & ((1 << nb) - 1))
                pos[lane] = p + nb
                r = (np.int64(_load_u64(raw, rbase + raw_byte[lane])) >> raw_shift[lane]) & raw_mask
                out[obase + lane] = (((e >> _E_OUT_SHIFT) << out_shift)
                                     | (r >> 1) | ((r & 1) << sign_shift))
            rbase += step_raw_bytes
        for lane in range(LANES):
            start = lane_start[g * LANES + lane] * 8
            end = lane_start[g * LANES + lane + 1] * 8
            p = pos[lane]
            used = p - start
            if (used + 7) // 8 * 8 != end - start:
                err[0] = g * LANES + lane
                err[1] = used
                err[2] = 1
                return 1
            tail = (-used) & 7
            if tail and (np.int64(_load_u64(payload, p >> 3)) >> (p & 7)) & ((1 << tail) - 1):
                err[0] = g * LANES + lane
                err[1] = used
                err[2] = 2
                return 1
    return 0


def _decode_table(counts, geometry: CodedGeometry):
    """Packed entries (see _E_*) and the shift of their output part."""
    size = 1 << geometry.table_log
    counts = np.asarray(counts)
    if (counts.ndim != 1 or counts.size == 0 or counts.size > size
            or int(counts.astype(np.int64).sum()) != size):
        raise CorruptDataError(f"symbol counts do not sum to the table size {size}")
    table = tans.build_decode_table(counts, geometry.first_symbol, geometry.table_log)
    base = (table & tans.ENTRY_BASE_MASK).astype(np.int64)
    nbits = ((table >> tans.ENTRY_NBITS_SHIFT) & 0xF).astype(np.int64)
    symbol = (table >> tans.ENTRY_SYMBOL_SHIFT).astype(np.int64)
    # The kernel indexes the table with the next state unchecked; this is
    # what keeps every state below ``size`` whatever bits the stream holds.
    if table.size != size or np.any(base + (1 << nbits) - 1 >= size):
        raise CorruptDataError("symbol counts do not give a valid decoding table")
    width, raw_bits = geometry.width, geometry.raw_bits
    wmask = (1 << width) - 1
    rotated = (symbol << raw_bits) & wmask            # the reference truncates, then rotates
    out_part = (rotated >> 1) | ((rotated & 1) << (width - 1))
    out_shift = max(0, width - 16)
    if np.any(out_part & ((1 << out_shift) - 1)) or np.any(out_part >> out_shift >= 1 << 16):
        raise CorruptDataError(
            f"symbol_bits {geometry.symbol_bits} is too wide for a {width}-bit value")
    packed = base | (nbits << _E_NBITS_SHIFT) | ((out_part >> out_shift) << _E_OUT_SHIFT)
    return packed.astype(np.uint32), out_shift


def _resolve_workers(workers) -> int:
    if workers is None or workers <= 0:
        return os.cpu_count() or 1
    return int(workers)


def _split(first: int, end: int, parts: int) -> list[tuple[int, int]]:
    """[first, end) cut into at most ``parts`` contiguous, non-empty ranges."""
    parts = max(1, min(parts, end - first))
    cuts = np.linspace(first, end, parts + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _padded(buf: np.ndarray, start: int, slack: int) -> np.ndarray:
    out = np.zeros(max(0, buf.size - start) + slack, dtype=np.uint8)
    out[: buf.size - start] = buf[start:]
    return out


def decode(geometry: CodedGeometry, counts: np.ndarray, lane_sizes: np.ndarray,
           payload: np.ndarray, raw: np.ndarray, dtype, workers: int = 1) -> np.ndarray:
    """Decode validated sections into the values' bits (``dtype``, flat).
    Raises CorruptDataError if a lane does not end exactly where it should."""
    n = geometry.count
    dtype = np.dtype(dtype)
    native = dtype.newbyteorder("=")
    out = np.empty(n, dtype=native)
    if n == 0:
        return out.astype(dtype, copy=False)
    K = geometry.lane_symbols
    group = LANES * K
    groups = geometry.groups
    raw_bits = geometry.raw_bits
    table, out_shift = _decode_table(counts, geometry)

    payload = np.ascontiguousarray(payload, dtype=np.uint8).reshape(-1)
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    sizes = np.asarray(lane_sizes).astype(np.int64).reshape(-1)
    if sizes.size != groups * LANES or int(sizes.sum()) != payload.size:
        raise CorruptDataError(
            f"lane sizes add up to {int(sizes.sum())} bytes in {sizes.size} lanes; expected "
            f"{payload.size} bytes in {groups * LANES} lanes")
    if raw.size != geometry.raw_bytes:
        raise CorruptDataError(f"raw section holds {raw.size} bytes, expected {geometry.raw_bytes}")
    lane_start = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=lane_start[1:])

    # Furthest byte a lane's steps may load from, counted from its start,
    # whatever its content: every step advances at most 12 bits.
    reach = (geometry.table_log + tans.MAX_TABLE_LOG * K + 7) // 8 + _LOAD_BYTES
    group_ends = np.minimum(np.arange(1, groups + 1, dtype=np.int64) * group, n)
    fits = ((lane_start[LANES - 1::LANES][:groups] + reach <= payload.size)
            & ((group_ends * raw_bits + 7) // 8 + _LOAD_BYTES <= raw.size))
    # Groups from ``direct`` on are decoded from padded copies.
    direct = int(np.argmin(fits)) if not fits.all() else groups

    jobs = []   # (group range, payload, lane_start, raw)
    for g0, g1 in _split(0, direct, _resolve_workers(workers)):
        jobs.append((g0, g1, payload, lane_start[g0 * LANES: g1 * LANES + 1],
                     raw[g0 * group * raw_bits // 8:]))
    if direct < groups:
        pstart = int(lane_start[direct * LANES])
        rstart = direct * group * raw_bits // 8
        jobs.append((direct, groups, _padded(payload, pstart, reach),
                     lane_start[direct * LANES:] - pstart,
                     _padded(raw, rstart, 2 * _LOAD_BYTES)))

    def run(job):
        g0, g1, data, starts, raw_part = job
        err = np.zeros(3, dtype=np.int64)
        block = out[g0 * group: min(g1 * group, n)]
        if raw_part.size < _LOAD_BYTES:     # raw_bits == 0 leaves nothing to load from
            raw_part = np.zeros(_LOAD_BYTES, dtype=np.uint8)
        failed = _decode_groups(table, data, starts, raw_part, block, block.size, K,
                                geometry.table_log, raw_bits, geometry.width, out_shift, err)
        return (int(err[0]) + g0 * LANES, int(err[1]), int(err[2])) if failed else None

    if len(jobs) == 1 or _resolve_workers(workers) == 1:
        failures = [run(job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=min(len(jobs), _resolve_workers(workers))) as pool:
            failures = list(pool.map(run, jobs))
    failures = [f for f in failures if f is not None]
    if failures:
        lane, used, kind = min(failures)
        if kind == 1:
            raise CorruptDataError(
                f"lane {lane}: decoding used {used} bits but the lane holds "
                f"{int(sizes[lane])} bytes")
        raise CorruptDataError(f"lane {lane}: non-zero padding bits at the end of the lane")
    return out.view(dtype) if native == dtype else out.astype(dtype)
