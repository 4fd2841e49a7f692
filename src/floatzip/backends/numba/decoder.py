"""Decoding in the numba back end: the kernels and the host code around them.

:func:`decode` checks every argument and size in Python, plans which groups
can be decoded in place and which from zero-padded copies of the tail (the
kernels' unaligned loads read a few bytes past a field, and check no
bounds), splits the groups over threads and turns a kernel's failure report
into a CorruptDataError. Two kernels decode groups, ``_decode_groups``
(scalar) and ``_decode_groups_simd`` (its full steps by
intrinsics.decode_steps); dispatch.call_kernel picks one.
"""
from __future__ import annotations

import numba
import numpy as np

from ...codecs import tans
from ...codecs.layout import LANES, MAX_LANE_SYMBOLS, CodedGeometry
from ...errors import CorruptDataError, DecoderArgumentError
from ...io_utils import resolve_workers
from .dispatch import call_kernel
from .intrinsics import decode_steps, load_u64
from .packing import E_NBITS_SHIFT, E_OUT_SHIFT, LOAD_BYTES, NJIT, RAW_SLACK
from .tables import decode_table, entry_out_shift
from ...memory import empty_faulted
from .threads import run_jobs, split_groups

# Decoder failure kinds (err[2])
_BAD_SIZE = 1
_BAD_PADDING = 2
_BAD_STATE = 3

# Arguments shared by the decoding kernels:
#   table        uint32[2**table_log]  packed entries (see packing.E_*)
#   payload      uint8[]   holds every lane of these groups, with slack past
#                          the furthest byte any step could load
#   lane_start   int64[32*groups+1]  byte offset of each lane in ``payload``,
#                          then the end of the last lane
#   raw          uint8[]   packed raw fields from the first value of ``out``
#                          on, with RAW_SLACK bytes of slack
#   out          uint8/16/32[count]  the values of these groups
#   state, pos   uint32[32]  each lane's state, and its bit position counted
#                          from the group's first byte
#   raw_offset, raw_shift  uint32[32]: lane l's raw field in a step is at
#                          byte raw_offset[l], bit raw_shift[l] of the step
#   err          int64[3]  on failure: lane (counted from these groups'
#                          first), bits it used, kind (_BAD_*)


@numba.njit(**NJIT)
def _lane_scratch(raw_bits):
    """(state, pos, raw_offset, raw_shift) for a decoding kernel."""
    raw_offset = np.empty(LANES, np.uint32)
    raw_shift = np.empty(LANES, np.uint32)
    for lane in range(LANES):
        raw_offset[lane] = (lane * raw_bits) >> 3
        raw_shift[lane] = (lane * raw_bits) & 7
    return np.zeros(LANES, np.uint32), np.zeros(LANES, np.uint32), raw_offset, raw_shift


@numba.njit(**NJIT)
def _start_group(payload, lane_start, g, count, lane_symbols, table_log, state, pos):
    """Read the initial state of each lane of group ``g`` that has symbols;
    returns (the group's first value, its full steps, how many lanes have a
    symbol in the partial step after them)."""
    group = LANES * lane_symbols
    first = g * group
    left = count - first
    full_steps = min(lane_symbols, left // LANES)
    group_byte = lane_start[g * LANES]
    for lane in range(LANES):
        start = (lane_start[g * LANES + lane] - group_byte) * 8
        if lane < left:
            state[lane] = (np.int64(load_u64(payload, group_byte + (start >> 3)))
                           & ((1 << table_log) - 1))
            pos[lane] = start + table_log
        else:
            state[lane] = 0
            pos[lane] = start
    return first, full_steps, min(left, group) - full_steps * LANES


@numba.njit(**NJIT)
def _decode_scalar_steps(table, payload, group_byte, state, pos, raw, raw_byte, raw_offset,
                         raw_shift, out, first, step, full_steps, partial, raw_bits, width,
                         out_shift, sign_in_raw, dropped_bits, dropped_value):
    """Decode steps ``step``..full_steps-1 of all lanes of the group whose
    first value is out[first], then step full_steps of lanes < ``partial``.
    A value is its symbol's part (from the table), its raw field's part
    (codecs.words.raw_part: with ``sign_in_raw`` 1 the field's bit 0 is
    the sign) and the dropped value."""
    raw_mask = (1 << raw_bits) - 1
    sign_shift = width - 1
    step_raw_bytes = LANES * raw_bits // 8
    while step < full_steps + (1 if partial else 0):
        lanes = LANES if step < full_steps else partial
        step_byte = raw_byte + step * step_raw_bytes
        out_index = first + step * LANES
        for lane in range(lanes):
            # Unsigned indices spare numba's negative-index handling.
            e = np.int64(table[state[lane]])
            p = np.int64(pos[lane])
            # The arithmetic shift of the signed load only smears bits far
            # above the 12 + 7 kept.
            window = np.int64(load_u64(payload, np.uint64(group_byte + (p >> 3)))) >> (p & 7)
            nbits = (e >> E_NBITS_SHIFT) & 15
            state[lane] = (e & 0xFFF) + (window & ((1 << nbits) - 1))
            pos[lane] = p + nbits
            r = (np.int64(load_u64(raw, np.uint64(step_byte + raw_offset[lane])))
                 >> raw_shift[lane]) & raw_mask
            out[np.uint64(out_index + lane)] = (((e >> E_OUT_SHIFT) << out_shift)
                                                | ((r >> sign_in_raw) << dropped_bits)
                                                | ((r & sign_in_raw) << sign_shift)
                                                | dropped_value)
        step += 1


@numba.njit(**NJIT)
def _check_group(payload, lane_start, g, pos, state, err):
    """Each lane of group ``g`` must have used exactly its bytes, the
    padding bits after its last field all zero, and end in state 0 (lanes
    without symbols start there). Returns 0, or 1 with ``err`` filled."""
    group_byte = lane_start[g * LANES]
    for lane in range(LANES):
        start = (lane_start[g * LANES + lane] - group_byte) * 8
        end = (lane_start[g * LANES + lane + 1] - group_byte) * 8
        p = np.int64(pos[lane])
        used = p - start
        kind = 0
        if (used + 7) // 8 * 8 != end - start:
            kind = _BAD_SIZE
        elif used & 7 and ((np.int64(load_u64(payload, group_byte + (p >> 3))) >> (p & 7))
                           & ((1 << ((-used) & 7)) - 1)):
            kind = _BAD_PADDING
        elif state[lane] != 0:
            kind = _BAD_STATE
            used = state[lane]
        if kind:
            err[0] = g * LANES + lane
            err[1] = used
            err[2] = kind
            return 1
    return 0


@numba.njit(**NJIT)
def _decode_groups(table, payload, lane_start, raw, out, count, lane_symbols, table_log,
                   raw_bits, width, out_shift, sign_in_raw, dropped_bits, dropped_value, err):
    """Decode whole groups into ``out``; returns 0, or 1 on failure."""
    group = LANES * lane_symbols
    state, pos, raw_offset, raw_shift = _lane_scratch(raw_bits)
    for g in range((count + group - 1) // group):
        first, full_steps, partial = _start_group(payload, lane_start, g, count, lane_symbols,
                                                  table_log, state, pos)
        _decode_scalar_steps(table, payload, lane_start[g * LANES], state, pos, raw,
                             first * raw_bits // 8, raw_offset, raw_shift, out, first, 0,
                             full_steps, partial, raw_bits, width, out_shift, sign_in_raw,
                             dropped_bits, dropped_value)
        if _check_group(payload, lane_start, g, pos, state, err):
            return 1
    return 0


@numba.njit(**NJIT)
def _decode_groups_simd(table, payload, lane_start, raw, out, count, lane_symbols, table_log,
                        raw_bits, width, out_shift, sign_in_raw, dropped_bits, dropped_value,
                        err):
    """_decode_groups with the full steps done by intrinsics.decode_steps
    (and only the partial one by _decode_scalar_steps)."""
    group = LANES * lane_symbols
    state, pos, raw_offset, raw_shift = _lane_scratch(raw_bits)
    for g in range((count + group - 1) // group):
        first, full_steps, partial = _start_group(payload, lane_start, g, count, lane_symbols,
                                                  table_log, state, pos)
        group_byte = lane_start[g * LANES]
        raw_byte = first * raw_bits // 8
        if full_steps:
            decode_steps(table, payload, group_byte, state, pos, raw, raw_byte, raw_offset,
                         raw_shift, out, first, full_steps, raw_bits, width, out_shift,
                         sign_in_raw, dropped_bits, dropped_value)
        if partial:
            _decode_scalar_steps(table, payload, group_byte, state, pos, raw, raw_byte,
                                 raw_offset, raw_shift, out, first, full_steps, full_steps,
                                 partial, raw_bits, width, out_shift, sign_in_raw,
                                 dropped_bits, dropped_value)
        if _check_group(payload, lane_start, g, pos, state, err):
            return 1
    return 0


@numba.njit(**NJIT)
def _plan_decode(sizes, lane_start, payload_bytes, raw_bytes, count, lane_symbols, reach,
                 raw_bits):
    """Fill ``lane_start`` (int64[lanes+1]) with each lane's first byte and
    the payload's end; return the first group that must be decoded from
    padded copies because its loads could pass the end of the payload or
    raw section, or -1 if the lane sizes do not add up to the payload."""
    group = LANES * lane_symbols
    groups = sizes.size // LANES
    lane_start[0] = 0
    for lane in range(sizes.size):
        if sizes[lane] < 0:
            return -1
        lane_start[lane + 1] = lane_start[lane] + sizes[lane]
    if lane_start[sizes.size] != payload_bytes:
        return -1
    for g in range(groups):
        end = min((g + 1) * group, count)
        if (lane_start[g * LANES + LANES - 1] + reach > payload_bytes
                or (end * raw_bits + 7) // 8 + RAW_SLACK > raw_bytes):
            return g
    return groups


def _padded(buf: np.ndarray, start: int, slack: int) -> np.ndarray:
    out = np.zeros(buf.size - start + slack, dtype=np.uint8)
    out[: buf.size - start] = buf[start:]
    return out


def decode(geometry: CodedGeometry, counts: np.ndarray, lane_sizes: np.ndarray,
           payload: np.ndarray, raw: np.ndarray, dtype, workers: int = 1,
           out: np.ndarray | None = None) -> np.ndarray:
    """Decode validated sections into the values' bits (``dtype``, flat).
    ``out``: a writable, contiguous array of ``count`` native values of that
    dtype to decode into (saves allocating and first-touching a new one).
    Raises CorruptDataError if a lane does not end exactly where it should."""
    n = geometry.count
    dtype = np.dtype(dtype)
    native = dtype.newbyteorder("=")
    if native.kind != "u" or native.itemsize * 8 != geometry.width:
        raise ValueError(f"dtype {dtype} does not hold {geometry.width}-bit values")
    if out is not None:
        check_out(out, n, native)
    if n == 0:
        return np.empty(0, dtype=dtype) if out is None else out.view(dtype)
    K = geometry.lane_symbols
    if not 1 <= K <= MAX_LANE_SYMBOLS:
        raise CorruptDataError(f"lane_symbols {K} is outside 1..{MAX_LANE_SYMBOLS}")
    if (geometry.sign_in_symbol not in (0, 1) or not 0 <= geometry.dropped_bits < geometry.width - 1
            or not 0 <= geometry.dropped_value < 1 << geometry.dropped_bits):
        raise CorruptDataError(
            f"sign_in_symbol {geometry.sign_in_symbol}, dropped_bits {geometry.dropped_bits} or "
            f"dropped_value {geometry.dropped_value} is out of range")
    top = min(geometry.coded_bits - geometry.sign_in_symbol, tans.MAX_SYMBOL_BITS)
    if not 1 <= geometry.symbol_bits <= top or geometry.first_symbol < 0:
        raise CorruptDataError(
            f"symbol_bits {geometry.symbol_bits} (1..{top} allowed) or first_symbol "
            f"{geometry.first_symbol} is out of range")
    group = LANES * K
    groups = geometry.groups
    raw_bits = geometry.raw_bits
    table = decode_table(counts, geometry)

    payload = np.ascontiguousarray(payload, dtype=np.uint8).reshape(-1)
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != geometry.raw_bytes:
        raise CorruptDataError(
            f"raw section holds {raw.size} bytes, expected {geometry.raw_bytes}")
    if raw_bits == 0:       # nothing to read; the kernels still load from it
        raw = np.zeros(RAW_SLACK, dtype=np.uint8)
    sizes = np.asarray(lane_sizes).reshape(-1).astype(np.int64)
    if sizes.size != groups * LANES:
        raise CorruptDataError(f"expected {groups * LANES} lane sizes, found {sizes.size}")
    lane_start = np.empty(sizes.size + 1, dtype=np.int64)
    # How far past its first byte a lane's loads may reach, whatever its
    # content: a step advances at most 12 bits.
    reach = (geometry.table_log + tans.MAX_TABLE_LOG * K + 7) // 8 + LOAD_BYTES
    direct = _plan_decode(sizes, lane_start, payload.size, raw.size, n, K, reach, raw_bits)
    if direct < 0:
        raise CorruptDataError(
            f"lane sizes add up to {int(sizes.sum())} bytes (min {int(sizes.min())}), the "
            f"payload holds {payload.size}")

    workers = resolve_workers(workers)
    # A job is a list of (first group, end group, payload, lane_start, raw).
    jobs = [[(g0, g1, payload, lane_start[g0 * LANES: g1 * LANES + 1],
              raw[g0 * group * raw_bits // 8:])]
            for g0, g1 in split_groups(direct, group, workers)]
    if direct < groups:
        pstart = int(lane_start[direct * LANES])
        rstart = direct * group * raw_bits // 8
        tail = (direct, groups, _padded(payload, pstart, reach),
                lane_start[direct * LANES:] - pstart, _padded(raw, rstart, RAW_SLACK))
        if jobs:
            jobs[-1].append(tail)
        else:
            jobs.append([tail])
    if out is None:
        out = (empty_faulted if len(jobs) > 1 else np.empty)(n, native)
    # The vector kernel's 4-byte gathers hold a raw field of up to 32 - 7 bits.
    simd = raw_bits <= 25
    out_shift = entry_out_shift(geometry.width)

    def run(job):
        err = np.zeros(3, dtype=np.int64)
        for g0, g1, data, starts, raw_part in job:
            block = out[g0 * group: min(g1 * group, n)]
            if call_kernel(_decode_groups_simd if simd else None, _decode_groups,
                           table, data, starts, raw_part, block, block.size, K, geometry.table_log,
                           raw_bits, geometry.width, out_shift, 1 - geometry.sign_in_symbol,
                           geometry.dropped_bits, geometry.dropped_value, err):
                return int(err[0]) + g0 * LANES, int(err[1]), int(err[2])
        return None

    failures = [f for f in run_jobs(jobs, run, workers) if f is not None]
    if failures:
        lane, used, kind = min(failures)
        if kind == _BAD_SIZE:
            raise CorruptDataError(
                f"lane {lane}: decoding used {used} bits but the lane holds "
                f"{int(sizes[lane])} bytes")
        if kind == _BAD_STATE:
            raise CorruptDataError(f"lane {lane}: ends in state {used}, not 0")
        raise CorruptDataError(f"lane {lane}: non-zero padding bits after its {used} bits")
    return out.view(dtype) if native == dtype else out.astype(dtype)


def check_out(out: np.ndarray, count: int, dtype: np.dtype) -> None:
    """``out`` must be what decode writes: checked before a kernel touches it."""
    if (not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != (count,)
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise DecoderArgumentError(
            f"out= must be a writable contiguous {dtype} array of shape ({count},), got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
