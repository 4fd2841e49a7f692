"""Coding tables of the numba back end, in its own packed layouts.

:func:`decode_table` (one uint32 entry per state: next-state base, bit
count and the symbol already placed in the output word, see
packing.E_*) and :func:`encode_table` (packed symbol parameters, see
packing.P_*, and the next-state table) hold the states of
tans.build_decode_table and tans.build_encode_table. They are built by
jitted code because small tensors are dominated by them; the counts are
checked here, before any kernel indexes a table without bounds checks.
"""
from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from ...codecs import tans
from ...codecs.layout import CodedGeometry
from ...errors import CorruptDataError
from .packing import E_NBITS_SHIFT, E_OUT_SHIFT, NJIT, P_DELTA_SHIFT, P_NBITS_SHIFT


@numba.njit(**NJIT)
def _highest_bit(x):
    """floor(log2(x)) for 0 < x < 2**63."""
    return 63 - leading_zeros(np.uint64(x))


@numba.njit(**NJIT)
def _spread(counts, table_log, step):
    """Slot -> symbol index, as tans.spread_symbols with stride ``step``, or
    an empty array if the counts are not non-negative numbers summing to
    2**table_log or the stride leaves a slot empty."""
    size = 1 << table_log
    total = 0
    for s in range(counts.size):
        if counts[s] < 0:
            return np.empty(0, np.int64)
        total += counts[s]
    if total != size:
        return np.empty(0, np.int64)
    slot_symbol = np.full(size, -1, np.int64)
    slot = 0
    for s in range(counts.size):
        for _ in range(counts[s]):
            slot_symbol[slot] = s
            slot = (slot + step) & (size - 1)
    for slot in range(size):
        if slot_symbol[slot] < 0:
            return np.empty(0, np.int64)
    return slot_symbol


@numba.njit(**NJIT)
def _build_decode_table(counts, first_symbol, table_log, step, width, raw_bits, sign_in_symbol,
                        dropped_bits, out_shift, table):
    """Fill ``table`` (uint32[2**table_log]) with packed entries (see
    packing.E_*): the states and symbols of tans.build_decode_table, each
    symbol as the bits it puts in its value (codecs.words.symbol_part).
    Returns 0; 1 if the counts are invalid; 2 if a symbol does not fit an
    entry."""
    size = 1 << table_log
    slot_symbol = _spread(counts, table_log, step)
    if slot_symbol.size != size:
        return 1
    symbol_part = np.empty(counts.size, np.int64)
    for s in range(counts.size):
        symbol = np.int64(s + first_symbol)
        if sign_in_symbol:
            sign, m = symbol & 1, (symbol >> 1) << raw_bits
        else:
            u = symbol << raw_bits
            sign, m = u & 1, u >> 1
        out_part = (sign << (width - 1)) | (m << dropped_bits)
        if (out_part >> width or out_part & ((1 << out_shift) - 1)
                or (out_part >> out_shift) >> 16):
            return 2
        symbol_part[s] = (out_part >> out_shift) << E_OUT_SHIFT
    next_x = counts.copy()
    for slot in range(size):
        s = slot_symbol[slot]
        x = next_x[s]       # the k-th slot (in slot order) of s gets counts[s] + k
        next_x[s] = x + 1
        nbits = table_log - _highest_bit(x)
        table[slot] = ((x << nbits) - size) | (nbits << E_NBITS_SHIFT) | symbol_part[s]
    return 0


@numba.njit(**NJIT)
def _build_encode_table(counts, table_log, step, params, next_state):
    """Fill ``params`` (uint32[symbols], see packing.P_*) and ``next_state``
    (uint16[2**table_log], states in [L, 2L)), as tans.build_encode_table.
    Returns 0, or 1 if the counts are invalid."""
    size = 1 << table_log
    slot_symbol = _spread(counts, table_log, step)
    if slot_symbol.size != size:
        return 1
    fill = np.empty(counts.size, np.int64)
    cumulative = 0
    for s in range(counts.size):
        f = counts[s]
        fill[s] = cumulative
        if f:
            nbits0 = table_log - _highest_bit(f)
            params[s] = ((f << nbits0) | (nbits0 << P_NBITS_SHIFT)
                         | ((cumulative - f + size) << P_DELTA_SHIFT))
        else:
            params[s] = 0
        cumulative += f
    for slot in range(size):
        s = slot_symbol[slot]
        next_state[fill[s]] = slot + size
        fill[s] += 1
    return 0


def _counts_array(counts, table_log: int) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or not 1 <= counts.size <= 1 << tans.MAX_SYMBOL_BITS:
        raise CorruptDataError(
            f"expected 1..{1 << tans.MAX_SYMBOL_BITS} symbol counts, found {counts.size}")
    return counts.astype(np.int64)


def _bad_counts(counts: np.ndarray, table_log: int) -> CorruptDataError:
    if counts.min() >= 0 and counts.sum() == 1 << table_log:
        return CorruptDataError(
            f"table_log {table_log}: the spread stride {tans.spread_step(table_log)} leaves "
            f"table slots empty")
    return CorruptDataError(
        f"symbol counts must be non-negative and sum to {1 << table_log} (table_log "
        f"{table_log}); found {counts.size} counts summing to {int(counts.sum())}")


def entry_out_shift(width: int) -> int:
    """Entries hold 16 bits of the output word; 32-bit words keep the top 16."""
    return max(0, width - 16)


def decode_table(counts, geometry: CodedGeometry) -> np.ndarray:
    """Packed decoding entries (see packing.E_*) for ``counts``."""
    if not tans.MIN_TABLE_LOG <= geometry.table_log <= tans.MAX_TABLE_LOG:
        raise CorruptDataError(f"table_log {geometry.table_log} is outside "
                               f"{tans.MIN_TABLE_LOG}..{tans.MAX_TABLE_LOG}")
    counts = _counts_array(counts, geometry.table_log)
    table = np.empty(1 << geometry.table_log, dtype=np.uint32)
    status = _build_decode_table(counts, geometry.first_symbol, geometry.table_log,
                                 tans.spread_step(geometry.table_log), geometry.width,
                                 geometry.raw_bits, geometry.sign_in_symbol,
                                 geometry.dropped_bits, entry_out_shift(geometry.width), table)
    if status == 1:
        raise _bad_counts(counts, geometry.table_log)
    if status:
        raise CorruptDataError(
            f"symbol_bits {geometry.symbol_bits} is too wide for {geometry.width}-bit values")
    return table


def encode_table(counts, table_log: int) -> tuple[np.ndarray, np.ndarray]:
    """(params uint32[symbols], next_state uint16[2**table_log + 2]); the two
    extra entries are slack for the 4-byte gathers of the SIMD encoder."""
    counts = _counts_array(counts, table_log)
    params = np.empty(counts.size, dtype=np.uint32)
    next_state = np.zeros((1 << table_log) + 2, dtype=np.uint16)
    if _build_encode_table(counts, table_log, tans.spread_step(table_log), params, next_state):
        raise _bad_counts(counts, table_log)
    return params, next_state
