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
from .layout import LANES, CodedGeometry, lane_size_bits_for

DEFAULT_TABLE_LOG = 12
# Symbols per lane. Each lane costs ~28 bits (its size, its initial state,
# byte padding): 0.014 bit a weight at 2048, 0.027 at 1024. The file is coded
# for size; fewer symbols a lane give a GPU decoding the file's code directly
# more lanes at once (`--lane-symbols`, README).
DEFAULT_LANE_SYMBOLS = 2048
# Extra mantissa bits that may join the exponent in the symbol. The density of
# trained weights falls across each power-of-two interval, so the top mantissa
# bits are skewed and coding them with the exponent saves ~0.05 bit/weight.
MAX_EXTRA_MANTISSA_BITS = 4
# Estimated cost of each lane besides its size field: its initial state, byte padding.
LANE_OVERHEAD_BITS = 12 + 4


@dataclass(frozen=True)
class CodingChoice:
    symbol_bits: int
    table_log: int
    first_symbol: int
    counts: np.ndarray          # uint16, normalized, sums to 2**table_log
    lane_symbols: int
    estimated_bytes: int
    sign_in_symbol: int = 0     # format 2 (codecs/words.py)
    dropped_bits: int = 0
    dropped_value: int = 0
    lane_size_bits: int = 16    # format 2: the fewest that hold any lane's size


def histogram_bits(layout: FloatLayout) -> int:
    """How many top bits below the sign the statistics are kept for (with
    the sign beside them): enough for every candidate symbol."""
    return min(layout.width - 1, tans.MAX_SYMBOL_BITS,
               layout.exponent_bits + MAX_EXTRA_MANTISSA_BITS)


def coarsen(histogram: np.ndarray, bits: int) -> np.ndarray:
    """Histogram of the top ``bits`` bits from one of more top bits."""
    return histogram.reshape(1 << bits, -1).sum(axis=1)


def magnitude_histogram(statistics: np.ndarray) -> np.ndarray:
    """The counts of backends' ``statistics`` without the sign."""
    return statistics[0::2] + statistics[1::2]


def dropped_bits(varying: int, layout: FloatLayout) -> int:
    """How many low mantissa bits hold the same value in every value:
    format 2 leaves them out (a tensor cast up from a narrower type, say)."""
    mantissa = varying & ((1 << layout.mantissa_bits) - 1)
    if mantissa == 0:
        return layout.mantissa_bits
    return (mantissa & -mantissa).bit_length() - 1


def exponent_bound_bits(statistics: np.ndarray, layout: FloatLayout, count: int) -> float:
    """Bits if the exponent were coded at its order-0 entropy and every other
    bit stored as is (format 1's bound)."""
    exponent = coarsen(magnitude_histogram(statistics), layout.exponent_bits)
    return entropy_of_counts(exponent) + count * (layout.width - layout.exponent_bits)


def _halvings(histogram: np.ndarray, bits: int, low: int, signed: bool) -> dict[int, np.ndarray]:
    """Histograms of the top ``b`` bits (with the sign beside them when
    ``signed``) for b = bits down to low, each made from the one above it:
    the encoder's candidates cost a few additions, not a pass each."""
    out = {bits: histogram}
    for b in range(bits - 1, max(low, 0) - 1, -1):
        above = out[b + 1]
        if signed:      # (top, sign) pairs: add the pairs of neighbouring tops
            pairs = above.reshape(-1, 4)
            out[b] = (pairs[:, :2] + pairs[:, 2:]).reshape(-1)
        else:
            out[b] = above[0::2] + above[1::2]
    return out


def _candidates(statistics: np.ndarray, layout: FloatLayout, dropped: int, version: int):
    """(sign_in_symbol, symbol_bits, symbol histogram) of each mapping the
    encoder may pick, by sign mode and then growing symbol width (each
    histogram made from the one above it, a few additions)."""
    top = histogram_bits(layout)
    coded = layout.width - dropped                  # bits a value keeps
    first = min(layout.exponent_bits, top)
    signed = _halvings(statistics, top, first - 1, signed=True)
    magnitude = _halvings(magnitude_histogram(statistics), top, first, signed=False)

    def sign_raw():     # the top S bits below the sign (the whole word once R = 0)
        for s in range(first, min(coded, tans.MAX_SYMBOL_BITS) + 1):
            if s < coded and s <= top:
                yield 0, s, magnitude[s]
            elif s == coded and s - 1 <= top:
                yield 0, s, signed[s - 1]

    def sign_in_symbol():   # beside the top S - 1 bits (R >= 1)
        for s in range(first + 1, min(coded - 1, tans.MAX_SYMBOL_BITS) + 1):
            if s - 1 <= top:
                yield 1, s, signed[s - 1]

    yield sign_raw()
    if version >= 2 and _sign_pays(statistics, signed[first]):
        yield sign_in_symbol()


def _sign_pays(statistics: np.ndarray, exponent_and_sign) -> bool:
    """Whether coding the sign with the symbol can pay: stored raw it costs
    a bit a value, coded with the top bits below it H(sign | top bits) at
    best (less when the sign is skewed or follows the size), and a
    sign-in-symbol table holds about twice the symbols (2 bytes each).
    Skipping the candidates when it cannot keeps the model's choice cheap on
    the usual tensor, whose sign is a fair coin independent of its size."""
    count = int(statistics.sum())
    conditional = (entropy_of_counts(statistics)
                   - entropy_of_counts(magnitude_histogram(statistics)))
    return count - conditional > 16 * np.count_nonzero(exponent_and_sign)


def choose_coding(statistics: np.ndarray, layout: FloatLayout, count: int, *,
                  varying: int = -1, first_value: int = 0, version: int = 2,
                  table_log: int = DEFAULT_TABLE_LOG,
                  lane_symbols: int = DEFAULT_LANE_SYMBOLS) -> CodingChoice | None:
    """Best parameters for a tensor of ``count`` values with the given
    back-end ``statistics`` (and ``varying``: bits in which values differ
    from the first, ``first_value``), or None when storing it raw is
    smaller. ``version`` 1 keeps to format 1's mapping."""
    n = count
    if n == 0:
        return None
    dropped = dropped_bits(varying, layout) if version >= 2 else 0
    dropped_value = first_value & ((1 << dropped) - 1)
    lane_symbols = int(min(lane_symbols, max(1, -(-n // LANES))))
    groups = -(-n // (LANES * lane_symbols))
    best = None
    for candidates in _candidates(statistics, layout, dropped, version):
        previous, past_minimum = None, False
        for sign_in_symbol, symbol_bits, hist in candidates:
            raw_bits = layout.width - dropped - symbol_bits
            if past_minimum and raw_bits:
                # The cost falls, then rises, with the symbol width; the
                # whole-word symbol (no raw field) does not follow that curve.
                continue
            used = np.flatnonzero(hist)
            first, last = int(used[0]), int(used[-1])
            hist = hist[first:last + 1]
            log = max(table_log, int(np.ceil(np.log2(max(len(used), 2)))))
            if log > tans.MAX_TABLE_LOG:
                continue
            counts = tans.normalize_counts(hist, log)
            size_bits = lane_size_bits_for(log, lane_symbols) if version >= 2 else 16
            payload_bits = (tans.coded_bits(hist, counts, log)
                            + groups * LANES * (LANE_OVERHEAD_BITS + size_bits))
            total = int((payload_bits + n * raw_bits) / 8 + 2 * len(hist))
            if previous is not None and total >= previous and raw_bits:
                past_minimum = True
                continue
            previous = total
            if best is None or total < best.estimated_bytes:
                best = CodingChoice(symbol_bits, log, first, counts, lane_symbols, total,
                                    sign_in_symbol, dropped, dropped_value, size_bits)
    if best is None or best.estimated_bytes >= n * layout.width // 8:
        return None
    return best


def model_bound_bits(statistics: np.ndarray, layout: FloatLayout, count: int, *,
                     varying: int = -1, version: int = 2) -> float:
    """The order-0 bound of what the encoder codes: over the mappings it may
    pick, the fewest bits with the symbol at its order-0 entropy and the raw
    field stored (no tables, no lanes). What `floatzip info` compares the
    coded size to."""
    if version < 2:     # format 1's definition (FORMAT.md section 3)
        return exponent_bound_bits(statistics, layout, count)
    dropped = dropped_bits(varying, layout) if count else 0
    bound = float(count * layout.width)
    for candidates in _candidates(statistics, layout, dropped, version):
        for _, symbol_bits, hist in candidates:
            raw_bits = layout.width - dropped - symbol_bits
            bound = min(bound, entropy_of_counts(hist) + count * raw_bits)
    return bound


def geometry_for(choice: CodingChoice, layout: FloatLayout, count: int,
                 payload_bytes: int) -> CodedGeometry:
    return CodedGeometry(count=count, width=layout.width, symbol_bits=choice.symbol_bits,
                         table_log=choice.table_log, first_symbol=choice.first_symbol,
                         table_symbols=len(choice.counts), lane_symbols=choice.lane_symbols,
                         payload_bytes=payload_bytes, sign_in_symbol=choice.sign_in_symbol,
                         dropped_bits=choice.dropped_bits, dropped_value=choice.dropped_value,
                         lane_size_bits=choice.lane_size_bits)
