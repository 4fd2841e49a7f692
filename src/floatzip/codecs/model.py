"""Entropy model: choose a tensor's coding parameters from its statistics.

Only encoders use this module. What it decides is written into the file, so
a decoder never needs it, and changing it never breaks old files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import FloatLayout
from ..stats import entropy_of_counts
from . import tans
from .layout import LANES, CodedGeometry

DEFAULT_TABLE_LOG = 12
DEFAULT_LANE_SYMBOLS = 1024
# Extra mantissa bits that may join the exponent in the symbol. The density of
# trained weights falls across each power-of-two interval, so the top mantissa
# bits are skewed and coding them with the exponent saves ~0.05 bit/weight.
MAX_EXTRA_MANTISSA_BITS = 4
# Estimated cost of each lane: its u16 size, its initial state, byte padding.
LANE_OVERHEAD_BITS = 16 + 12 + 4


@dataclass(frozen=True)
class CodingChoice:
    symbol_bits: int
    table_log: int
    first_symbol: int
    counts: np.ndarray          # uint16, normalized, sums to 2**table_log
    lane_symbols: int
    estimated_bytes: int


def histogram_bits(layout: FloatLayout) -> int:
    """How many top bits of the rotated value the statistics are kept for:
    enough for every candidate symbol width (and the exponent alone)."""
    return min(layout.width, tans.MAX_SYMBOL_BITS, layout.exponent_bits + MAX_EXTRA_MANTISSA_BITS)


def coarsen(histogram: np.ndarray, bits: int) -> np.ndarray:
    """Histogram of the top ``bits`` bits from one of more top bits."""
    return histogram.reshape(1 << bits, -1).sum(axis=1)


def exponent_bound_bits(histogram: np.ndarray, layout: FloatLayout, count: int) -> float:
    """Bits if the exponent were coded at its order-0 entropy and every other
    bit stored as is (the bound `floatzip info` shows)."""
    exponent = coarsen(histogram, layout.exponent_bits)
    return entropy_of_counts(exponent) + count * (layout.width - layout.exponent_bits)


def choose_coding(histogram: np.ndarray, layout: FloatLayout, count: int, *,
                  table_log: int = DEFAULT_TABLE_LOG,
                  lane_symbols: int = DEFAULT_LANE_SYMBOLS) -> CodingChoice | None:
    """Best parameters for a tensor of ``count`` values with the given
    :func:`histogram_bits` histogram, or None when storing it raw is smaller."""
    n = count
    if n == 0:
        return None
    top = histogram_bits(layout)
    lane_symbols = int(min(lane_symbols, max(1, -(-n // LANES))))
    groups = -(-n // (LANES * lane_symbols))
    best = None
    for symbol_bits in range(min(layout.exponent_bits, top), top + 1):
        hist = coarsen(histogram, symbol_bits)
        used = np.flatnonzero(hist)
        first, last = int(used[0]), int(used[-1])
        hist = hist[first:last + 1]
        log = max(table_log, int(np.ceil(np.log2(max(len(used), 2)))))
        if log > tans.MAX_TABLE_LOG:
            continue
        counts = tans.normalize_counts(hist, log)
        payload_bits = tans.coded_bits(hist, counts, log) + groups * LANES * LANE_OVERHEAD_BITS
        total = (payload_bits + n * (layout.width - symbol_bits)) / 8 + 2 * len(hist)
        if best is not None and total >= best.estimated_bytes:
            break       # the cost falls, then rises, with the symbol width: past the minimum
        best = CodingChoice(symbol_bits, log, first, counts, lane_symbols, int(total))
    if best is None or best.estimated_bytes >= n * layout.width // 8:
        return None
    return best


def geometry_for(choice: CodingChoice, layout: FloatLayout, count: int,
                 payload_bytes: int) -> CodedGeometry:
    return CodedGeometry(count=count, width=layout.width, symbol_bits=choice.symbol_bits,
                         table_log=choice.table_log, first_symbol=choice.first_symbol,
                         table_symbols=len(choice.counts), lane_symbols=choice.lane_symbols,
                         payload_bytes=payload_bytes)
