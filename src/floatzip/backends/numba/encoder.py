"""Encoding in the numba back end: the kernels and the host code around them.

:func:`encode` checks the coding parameters and the values' width in Python,
builds the tables (tables.encode_table), cuts the groups into ranges for
threads and joins what each range wrote. A group is coded backwards, as the
decoder reads it forwards: every lane's fields are gathered first
(``_encode_scalar_steps``, or intrinsics.encode_steps for the full steps in
``_encode_groups_simd``; dispatch.call_kernel picks one), then written out
lane by lane, and the raw fields packed beside them.
"""
from __future__ import annotations

import numba
import numpy as np

from ...codecs import tans
from ...codecs.layout import LANES, MAX_LANE_SYMBOLS, longest_lane
from ...io_utils import resolve_workers
from .dispatch import call_kernel
from .intrinsics import encode_steps, store_u32, store_u64
from .packing import LOAD_BYTES, NJIT, P_DELTA_SHIFT, P_NBITS_SHIFT, P_THRESHOLD_MASK
from .tables import encode_table
from .threads import run_jobs, split_groups


@numba.njit(**NJIT)
def _symbol_index(v, raw_bits, width, first_symbol):
    """Index into the counts of the symbol of value bits ``v`` (int64)."""
    return ((((v << 1) | (v >> (width - 1))) & ((1 << width) - 1)) >> raw_bits) - first_symbol


@numba.njit(**NJIT)
def _first_bad_symbol(bits, first, end, params, raw_bits, width, first_symbol):
    """Index of the first value in [first, end) whose symbol has no count."""
    for i in range(first, end):
        s = _symbol_index(np.int64(bits[i]), raw_bits, width, first_symbol)
        if s < 0 or s >= params.size or params[s] == 0:
            return i
    return end


@numba.njit(**NJIT)
def _encode_scalar_steps(bits, first, x, params, next_state, fields, top, steps, lanes,
                         table_log, raw_bits, width, first_symbol):
    """Encode steps top, top - 1, ..., top - steps + 1 of lanes 0..lanes-1
    of the group at value ``first``, as intrinsics.encode_steps does. Returns 0, or 1
    at a symbol with no count."""
    size = 1 << table_log
    for step in range(top, top - steps, -1):
        base = first + step * LANES
        for lane in range(lanes):
            s = _symbol_index(np.int64(bits[base + lane]), raw_bits, width, first_symbol)
            if s < 0 or s >= params.size:
                return 1
            p = np.int64(params[s])
            if p == 0:
                return 1
            xl = np.int64(x[lane])
            nbits = ((p >> P_NBITS_SHIFT) & 15) - (xl < (p & P_THRESHOLD_MASK))
            fields[(step + 1) * LANES + lane] = (xl & ((1 << nbits) - 1)) | (nbits << 16)
            x[lane] = next_state[(p >> P_DELTA_SHIFT) - size + (xl >> nbits)]
    return 0


# Arguments shared by the encoding kernels:
#   bits         uint8/16/32[count]  the values of these groups
#   params, next_state  from encode_table()
#   payload      uint8[]   receives the lanes back to back; room for the
#                          worst case plus 8 bytes
#   lane_sizes   uint16[32*groups] out
#   raw          uint8[ceil(count*raw_bits/8)] out: the packed raw fields
#   fields       uint32[(lane_symbols+1)*32] scratch: field k of lane l (in
#                          stream order) at k*32 + l, as value | nbits << 16
#   x            uint32[32]  each lane's encoder state, in [L, 2L)
# The kernels return the payload bytes written, or -1 - i when value i's
# symbol has no count.


@numba.njit(**NJIT)
def _write_lanes(x, fields, full_steps, partial, table_log, payload, out_byte, lane_sizes):
    """Write the 32 lanes of a group (their fields in ``fields``, their
    final states in ``x``) from payload byte ``out_byte`` on; returns the
    byte after them."""
    size = 1 << table_log
    for lane in range(LANES):
        steps = full_steps + (1 if lane < partial else 0)
        start = out_byte
        if steps:
            fields[lane] = (np.int64(x[lane]) - size) | (table_log << 16)
            acc = 0
            nacc = 0
            for k in range(steps + 1):
                f = np.int64(fields[k * LANES + lane])
                acc |= (f & 0xFFFF) << nacc
                nacc += f >> 16
                store_u64(payload, out_byte, acc)
                whole = nacc >> 3
                out_byte += whole
                acc >>= whole * 8
                nacc &= 7
            if nacc:        # the partial last byte is stored already, zero-padded
                out_byte += 1
        lane_sizes[lane] = out_byte - start
    return out_byte


@numba.njit(**NJIT)
def _pack_raw(bits, first, end, raw_bits, width, raw, packer):
    """Append the raw fields of bits[first:end] to ``raw``; ``packer`` is
    int64[3]: next byte, bit accumulator, bits in it."""
    raw_mask = (1 << raw_bits) - 1
    raw_byte, acc, acc_bits = packer[0], packer[1], packer[2]
    for i in range(first, end):
        v = np.int64(bits[i])
        acc |= (((v << 1) | (v >> (width - 1))) & raw_mask) << acc_bits
        acc_bits += raw_bits
        if acc_bits >= 32:
            store_u32(raw, raw_byte, acc)
            raw_byte += 4
            acc >>= 32
            acc_bits -= 32
    packer[0], packer[1], packer[2] = raw_byte, acc, acc_bits


@numba.njit(**NJIT)
def _flush_raw(raw, packer):
    """Whole bytes at a group's end; a zero-padded one at the tensor's."""
    raw_byte, acc, acc_bits = packer[0], packer[1], packer[2]
    while acc_bits > 0:
        raw[raw_byte] = acc & 0xFF
        acc >>= 8
        raw_byte += 1
        acc_bits -= 8


@numba.njit(**NJIT)
def _start_group(bits, g, count, lane_symbols, x, params, next_state, fields, table_log,
                 raw_bits, width, first_symbol):
    """Set the lanes of group ``g`` to the initial state and encode its
    partial step: backwards, as the decoder reads forwards, its partial last
    step comes first. Returns (its first value, the value after its last,
    its full steps, the lanes in its partial step, 1 at a symbol with no
    count, else 0)."""
    first = g * LANES * lane_symbols
    end = min(count, first + LANES * lane_symbols)
    full_steps = (end - first) // LANES
    partial = end - first - full_steps * LANES
    x[:] = 1 << table_log
    bad = _encode_scalar_steps(bits, first, x, params, next_state, fields, full_steps,
                               1 if partial else 0, partial, table_log, raw_bits, width,
                               first_symbol)
    return first, end, full_steps, partial, bad


@numba.njit(**NJIT)
def _end_group(bits, first, end, x, fields, full_steps, partial, table_log, raw_bits, width,
               payload, lane_sizes, raw, cursor):
    """Write the lanes of the group of values bits[first:end] and append its
    raw fields to ``raw``. ``cursor`` is int64[4]: the next payload byte,
    then the raw fields' packer (see _pack_raw)."""
    cursor[0] = _write_lanes(x, fields, full_steps, partial, table_log, payload, cursor[0],
                             lane_sizes)
    if raw_bits:
        _pack_raw(bits, first, end, raw_bits, width, raw, cursor[1:])


@numba.njit(**NJIT)
def _encode_groups(bits, count, lane_symbols, table_log, raw_bits, width, first_symbol,
                   params, next_state, payload, lane_sizes, raw, fields):
    """Encode whole groups (see above for the arguments)."""
    x, cursor = np.empty(LANES, np.uint32), np.zeros(4, np.int64)
    for g in range(-(-count // (LANES * lane_symbols))):
        first, end, full_steps, partial, bad = _start_group(
            bits, g, count, lane_symbols, x, params, next_state, fields, table_log, raw_bits,
            width, first_symbol)
        if bad or _encode_scalar_steps(bits, first, x, params, next_state, fields,
                                       full_steps - 1, full_steps, LANES, table_log, raw_bits,
                                       width, first_symbol):
            return -1 - _first_bad_symbol(bits, first, end, params, raw_bits, width, first_symbol)
        _end_group(bits, first, end, x, fields, full_steps, partial, table_log, raw_bits, width,
                   payload, lane_sizes[g * LANES: (g + 1) * LANES], raw, cursor)
    _flush_raw(raw, cursor[1:])
    return cursor[0]


@numba.njit(**NJIT)
def _encode_groups_simd(bits, count, lane_symbols, table_log, raw_bits, width, first_symbol,
                        params, next_state, payload, lane_sizes, raw, fields):
    """_encode_groups with the full steps done by intrinsics.encode_steps."""
    x, cursor = np.empty(LANES, np.uint32), np.zeros(4, np.int64)
    for g in range(-(-count // (LANES * lane_symbols))):
        first, end, full_steps, partial, bad = _start_group(
            bits, g, count, lane_symbols, x, params, next_state, fields, table_log, raw_bits,
            width, first_symbol)
        if bad or (full_steps and encode_steps(bits, first, x, params, next_state, fields,
                                               full_steps, table_log, raw_bits, width,
                                               first_symbol)):
            return -1 - _first_bad_symbol(bits, first, end, params, raw_bits, width, first_symbol)
        _end_group(bits, first, end, x, fields, full_steps, partial, table_log, raw_bits, width,
                   payload, lane_sizes[g * LANES: (g + 1) * LANES], raw, cursor)
    _flush_raw(raw, cursor[1:])
    return cursor[0]


@numba.njit(**NJIT)
def _coded_words(bits, width, sign_in_symbol, dropped_bits, dropped_value, raw_bits, out):
    """Format 2's mapping (codecs.words.split) as a first pass: ``out[i]``
    is the word whose sign-rotation, in ``width - dropped_bits`` bits, is
    value i's symbol and raw field, so format 1's kernels code it as it is.
    Returns -1, or the first value whose dropped bits do not hold
    ``dropped_value``."""
    magnitude = (1 << (width - 1)) - 1
    low_mask = (1 << dropped_bits) - 1
    raw_mask = (1 << raw_bits) - 1
    top = width - dropped_bits - 1
    for i in range(bits.size):
        v = np.int64(bits[i])
        m = v & magnitude
        if m & low_mask != dropped_value:
            return i
        sign = v >> (width - 1)
        m >>= dropped_bits
        if sign_in_symbol:
            u = ((m >> raw_bits) << (raw_bits + 1)) | (sign << raw_bits) | (m & raw_mask)
        else:
            u = (m << 1) | sign
        out[i] = (u >> 1) | ((u & 1) << top)
    return -1


def encode(bits: np.ndarray, geometry_args: dict, counts: np.ndarray, workers: int = 1):
    """Encode the values ``bits`` (unsigned ints of the value width) with the
    given parameters. Returns (lane_sizes u16, payload u8, raw u8)."""
    width = int(geometry_args["width"])
    sign_in_symbol = int(geometry_args.get("sign_in_symbol", 0))
    dropped_bits = int(geometry_args.get("dropped_bits", 0))
    dropped_value = int(geometry_args.get("dropped_value", 0))
    symbol_bits = int(geometry_args["symbol_bits"])
    table_log = int(geometry_args["table_log"])
    first_symbol = int(geometry_args["first_symbol"])
    K = int(geometry_args["lane_symbols"])
    if width not in (8, 16, 32):
        raise ValueError(f"width {width} is not 8, 16 or 32")
    if (sign_in_symbol not in (0, 1) or not 0 <= dropped_bits < width - 1
            or not 0 <= dropped_value < 1 << dropped_bits):
        raise ValueError(f"sign_in_symbol {sign_in_symbol}, dropped_bits {dropped_bits} or "
                         f"dropped_value {dropped_value} is out of range")
    coded = width - dropped_bits        # the kernels code words of this many bits
    top = min(coded - sign_in_symbol, tans.MAX_SYMBOL_BITS)
    if not 1 <= symbol_bits <= top:
        raise ValueError(f"symbol_bits {symbol_bits} is outside 1..{top}")
    if not tans.MIN_TABLE_LOG <= table_log <= tans.MAX_TABLE_LOG:
        raise ValueError(
            f"table_log {table_log} is outside {tans.MIN_TABLE_LOG}..{tans.MAX_TABLE_LOG}")
    if not 1 <= K <= MAX_LANE_SYMBOLS:
        raise ValueError(f"lane_symbols {K} is outside 1..{MAX_LANE_SYMBOLS}")
    if first_symbol < 0:
        raise ValueError(f"first_symbol {first_symbol} is negative")
    bits = np.ascontiguousarray(bits).reshape(-1)
    if bits.dtype.itemsize * 8 != width:
        raise ValueError(f"{bits.dtype} values are not {width} bits wide")
    storage = np.dtype(f"u{width // 8}")
    bits = bits.view(storage) if bits.dtype.isnative else bits.astype(storage)
    params, next_state = encode_table(counts, table_log)

    n = bits.size
    raw_bits = coded - symbol_bits
    values = bits
    if sign_in_symbol or dropped_bits:
        words = np.empty_like(bits)
        bad = _coded_words(bits, width, sign_in_symbol, dropped_bits, dropped_value, raw_bits,
                           words)
        if bad >= 0:
            raise ValueError(f"value {bad} (bits {int(bits[bad]):#x}) does not hold "
                             f"{dropped_value:#x} in its {dropped_bits} dropped bits")
        bits = words
    group = LANES * K
    groups = -(-n // group)
    lane_sizes = np.zeros(groups * LANES, dtype=np.uint16)
    raw = np.empty((n * raw_bits + 7) // 8, dtype=np.uint8)
    lane_bytes = longest_lane(table_log, K)

    def run(job):
        g0, g1 = job
        block = bits[g0 * group: min(g1 * group, n)]
        payload = np.empty((g1 - g0) * LANES * lane_bytes + LOAD_BYTES, dtype=np.uint8)
        fields = np.empty(LANES * (K + 1), dtype=np.uint32)
        written = call_kernel(_encode_groups_simd, _encode_groups,
                              block, block.size, K, table_log, raw_bits, coded, first_symbol,
                              params, next_state, payload, lane_sizes[g0 * LANES: g1 * LANES],
                              raw[g0 * group * raw_bits // 8:], fields)
        if written < 0:
            i = g0 * group - 1 - written
            raise ValueError(f"value {i} (bits {int(values[i]):#x}) has a symbol outside the "
                             f"coded alphabet (first_symbol {first_symbol}, {len(counts)} counts)")
        return payload[:written]

    workers = resolve_workers(workers)
    parts = run_jobs(split_groups(groups, group, workers), run, workers)
    payload = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    return lane_sizes, payload, raw
