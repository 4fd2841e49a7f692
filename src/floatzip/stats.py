"""Order-0 entropy bounds of raw tensor bytes, for tests and benchmarks
(the encoder records each tensor's bound itself, from its histogram)."""
from __future__ import annotations

import numpy as np

from .dtypes import FLOAT_LAYOUTS, rotate_sign_down


def entropy_bits(values: np.ndarray) -> float:
    """Total order-0 entropy of ``values`` in bits."""
    return entropy_of_counts(np.bincount(values.ravel()))


def entropy_of_counts(counts: np.ndarray) -> float:
    """Total order-0 entropy, in bits, of data with this histogram."""
    counts = np.asarray(counts)
    counts = counts[counts > 0].astype(np.float64)
    if counts.size <= 1:
        return 0.0
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def exponent_bound_bits(data: np.ndarray, dtype: str) -> float | None:
    """Bits for a tensor (original bytes) if its exponent were coded at its
    order-0 entropy and every other bit stored as is; None if not a float.
    (The encoder computes the same from the histogram it keeps:
    codecs.model.exponent_bound_bits.)"""
    layout = FLOAT_LAYOUTS.get(dtype)
    if layout is None:
        return None
    bits = data.view(layout.storage).ravel()
    rotated = rotate_sign_down(bits, layout.width)
    exponent = rotated >> rotated.dtype.type(layout.width - layout.exponent_bits)
    return entropy_bits(exponent) + bits.size * (layout.width - layout.exponent_bits)


def value_bound_bits(data: np.ndarray, dtype: str) -> float | None:
    """Order-0 entropy of whole values, for 8- and 16-bit floats."""
    layout = FLOAT_LAYOUTS.get(dtype)
    if layout is None or layout.width > 16:
        return None
    return entropy_bits(data.view(layout.storage))
