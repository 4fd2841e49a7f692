"""The tANS (table-based asymmetric numeral system) code used by format v1.

This module is the single definition, shared by every back end, of how a
table of normalized symbol counts becomes the decoding and encoding tables.
docs/FORMAT.md section "Building the decoding table" is this code in prose.

Why tANS and not Huffman: the exponent of trained weights has ~2.6 bits of
entropy and a skewed distribution; a prefix code loses ~0.04 bit/weight to
rounding code lengths to whole bits; tANS with a 4096-entry table loses
~0.013 bit/weight to quantized probabilities (measured on MiniLM in BF16).
The decoding step costs the same as a Huffman table lookup: one table read
and one read of at most ``table_log`` bits.
"""
from __future__ import annotations

import numpy as np

MAX_TABLE_LOG = 12       # decoding table has at most 4096 entries (16 KiB)
MIN_TABLE_LOG = 1
MAX_SYMBOL_BITS = 12     # alphabet of at most 4096 symbols


def spread_step(table_log: int) -> int:
    """Stride used to scatter symbols over the table. Forced odd, so it visits
    every slot of a power-of-two table exactly once (L/2 + L/8 + 3 is already
    odd for L >= 16 and L = 4; the ``| 1`` matters for L = 2 and 8)."""
    size = 1 << table_log
    return ((size >> 1) + (size >> 3) + 3) | 1


def spread_symbols(counts: np.ndarray, table_log: int) -> np.ndarray:
    """Slot -> index into ``counts`` (that is, symbol - first_symbol).

    Symbols are laid down in increasing order; symbol ``s`` occupies
    ``counts[s]`` slots, visited with stride :func:`spread_step` from slot 0.
    """
    size = 1 << table_log
    step = spread_step(table_log)
    order = np.repeat(np.arange(len(counts), dtype=np.int64), counts.astype(np.int64))
    slots = (np.arange(size, dtype=np.int64) * step) & (size - 1)
    table = np.empty(size, dtype=np.int64)
    table[slots] = order
    return table


def highest_bit(values: np.ndarray) -> np.ndarray:
    """floor(log2(v)) for positive integers below 2**13, exactly."""
    v = np.asarray(values, dtype=np.int64)
    return (np.frexp(v.astype(np.float64))[1] - 1).astype(np.int64)


# A decoding table entry packs three fields into one uint32 so that a decoder
# does a single table read per symbol:
#   bits  0..15  base    next state = base + (nbits bits read from the stream)
#   bits 16..19  nbits   0..12
#   bits 20..31  symbol  0..4095, the full symbol value (first_symbol added)
ENTRY_BASE_MASK = 0xFFFF
ENTRY_NBITS_SHIFT = 16
ENTRY_SYMBOL_SHIFT = 20


def build_decode_table(counts: np.ndarray, first_symbol: int, table_log: int) -> np.ndarray:
    """Decoding table (uint32[2**table_log]) for validated ``counts``."""
    size = 1 << table_log
    slot_symbol = spread_symbols(counts, table_log)
    # The k-th slot (in slot order) holding symbol s gets x = counts[s] + k.
    order = np.argsort(slot_symbol, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts.astype(np.int64))[:-1]))
    occurrence = np.empty(size, dtype=np.int64)
    occurrence[order] = np.arange(size) - starts[slot_symbol[order]]
    x = counts.astype(np.int64)[slot_symbol] + occurrence
    nbits = table_log - highest_bit(x)
    base = (x << nbits) - size
    symbol = slot_symbol + first_symbol
    return (base | (nbits << ENTRY_NBITS_SHIFT) | (symbol << ENTRY_SYMBOL_SHIFT)).astype(np.uint32)


def build_encode_table(counts: np.ndarray, table_log: int) -> tuple[np.ndarray, np.ndarray]:
    """(next_state, cumulative): encoding symbol ``s`` from state ``x`` after
    emitting ``nb`` low bits goes to
    ``next_state[cumulative[s] + (x >> nb) - counts[s]]``, in [L, 2L)."""
    size = 1 << table_log
    slot_symbol = spread_symbols(counts, table_log)
    order = np.argsort(slot_symbol, kind="stable")   # slots grouped by symbol, in slot order
    cumulative = np.concatenate(([0], np.cumsum(counts.astype(np.int64))[:-1]))
    next_state = (order + size).astype(np.int64)
    return next_state, cumulative


def normalize_counts(histogram: np.ndarray, table_log: int) -> np.ndarray:
    """Scale a histogram to integer counts summing to ``2**table_log``, every
    occurring symbol at least 1, minimising the coded size sum(h * -log2(c/L)).

    Deterministic (ties go to the lowest symbol), so all encoders agree.
    Requires the number of occurring symbols to be at most 2**table_log.
    """
    size = 1 << table_log
    hist = np.asarray(histogram, dtype=np.int64)
    total = int(hist.sum())
    present = hist > 0
    if int(present.sum()) > size:
        raise ValueError("more distinct symbols than table slots")
    counts = (hist * size) // max(total, 1)
    counts[present & (counts == 0)] = 1
    h = hist.astype(np.float64)
    # Move units one per symbol per round, to the symbols where a unit gains
    # the most (or costs the least); the cost is convex in each count, so this
    # converges to (near) the optimum in a few rounds.
    while True:
        excess = int(counts.sum()) - size
        if excess == 0:
            return counts.astype(np.uint16)
        c = counts.astype(np.float64)
        if excess < 0:
            score = np.where(present, -h * np.log2((c + 1) / np.maximum(c, 1)), np.inf)
            movable = int(present.sum())
        else:
            shrinkable = present & (counts > 1)
            score = np.where(shrinkable, h * np.log2(np.maximum(c, 2) / np.maximum(c - 1, 1)), np.inf)
            movable = int(shrinkable.sum())
        picked = np.argsort(score, kind="stable")[: min(abs(excess), movable)]
        counts[picked] += 1 if excess < 0 else -1


def coded_bits(histogram: np.ndarray, counts: np.ndarray, table_log: int) -> float:
    """Payload bits that ``counts`` spend on data with ``histogram``."""
    h = np.asarray(histogram, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    used = h > 0
    return float(np.sum(h[used] * (table_log - np.log2(c[used]))))
