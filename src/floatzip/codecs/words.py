"""A value's bits <-> its symbol and raw field (docs/FORMAT.md section 4).

The one definition, in NumPy, of how a tans-coded tensor splits each value;
the reference back end codes with it and every fast back end is tested
against it. With ``w`` the width, ``D`` the dropped bits, ``R`` the raw bits
and ``S`` the symbol bits (``S + R + D = w``), a value ``v`` is

    sign = v >> (w - 1)
    m    = (v mod 2^(w-1)) >> D          # exponent|mantissa, D low bits gone

and, format 1's mapping (``sign_in_symbol`` 0; with D = 0 it is v1's
"rotate the sign to the bottom"):

    u = m << 1 | sign;   symbol = u >> R;   raw = u mod 2^R

or, with ``sign_in_symbol`` 1 (format 2, R >= 1): the sign is the symbol's
lowest bit, so the entropy coder sees it together with the exponent:

    symbol = (m >> R) << 1 | sign;       raw = m mod 2^R
"""
from __future__ import annotations

import numpy as np

from .layout import CodedGeometry


def split(bits: np.ndarray, g: CodedGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Values (unsigned ints of ``g.width`` bits) -> (symbols, raw fields),
    both int64 in value order. Raises ValueError when a value does not hold
    ``g.dropped_value`` in its dropped bits (the mapping would lose them)."""
    v = np.asarray(bits).reshape(-1).astype(np.int64)
    w, r, d = g.width, g.raw_bits, g.dropped_bits
    sign = (v >> (w - 1)) & 1
    magnitude = v & ((1 << (w - 1)) - 1)
    low = magnitude & ((1 << d) - 1)
    if d and np.any(low != g.dropped_value):
        i = int(np.flatnonzero(low != g.dropped_value)[0])
        raise ValueError(f"value {i} (bits {int(v[i]):#x}) does not hold {g.dropped_value:#x} in "
                         f"its {d} dropped bits")
    m = magnitude >> d
    if g.sign_in_symbol:
        return ((m >> r) << 1) | sign, m & ((1 << r) - 1)
    u = (m << 1) | sign
    return u >> r, u & ((1 << r) - 1)


def join(symbols: np.ndarray, raw: np.ndarray, g: CodedGeometry) -> np.ndarray:
    """Inverse of :func:`split`: the values' bits (int64)."""
    s = np.asarray(symbols).astype(np.int64)
    raw = np.asarray(raw).astype(np.int64)
    w, r = g.width, g.raw_bits
    if g.sign_in_symbol:
        sign, m = s & 1, ((s >> 1) << r) | raw
    else:
        u = (s << r) | raw
        sign, m = u & 1, u >> 1
    return (sign << (w - 1)) | (m << g.dropped_bits) | g.dropped_value


def symbol_part(symbols: np.ndarray, g: CodedGeometry) -> np.ndarray:
    """The bits each symbol puts in its value (those of a zero raw field,
    without the dropped value): what fast decoders keep in their tables, so
    that a value is ``symbol_part | raw_part(raw) | dropped_value``."""
    return join(symbols, np.zeros(1, np.int64), g) & ~np.int64(g.dropped_value)


def raw_part(raw: np.ndarray, g: CodedGeometry) -> np.ndarray:
    """The bits a raw field puts in its value: ``raw << D`` when the sign is
    in the symbol; else its bit 0 is the sign, the rest goes above D."""
    raw = np.asarray(raw).astype(np.int64)
    if g.sign_in_symbol:
        return raw << g.dropped_bits
    return ((raw >> 1) << g.dropped_bits) | ((raw & 1) << (g.width - 1))
