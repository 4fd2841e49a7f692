"""Bit layouts of the floating-point dtypes floatzip entropy-codes.

A value of ``width`` bits is ``sign | exponent | mantissa``. The codec rotates
the sign bit to the bottom so that the *top* bits are ``exponent | mantissa``:
the symbol is then simply the top ``symbol_bits`` of the rotated word, and the
raw remainder (low mantissa bits and the sign) is the bottom.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloatLayout:
    name: str            # safetensors dtype string
    width: int           # total bits per value
    exponent_bits: int
    mantissa_bits: int

    @property
    def storage(self) -> np.dtype:
        """Unsigned integer dtype holding one value's bits (little-endian)."""
        return np.dtype({8: "<u1", 16: "<u2", 32: "<u4"}[self.width])


FLOAT_LAYOUTS = {
    layout.name: layout
    for layout in (
        FloatLayout("BF16", 16, 8, 7),
        FloatLayout("F16", 16, 5, 10),
        FloatLayout("F32", 32, 8, 23),
        FloatLayout("F8_E4M3", 8, 4, 3),
        FloatLayout("F8_E5M2", 8, 5, 2),
    )
}

# Bytes per element of the safetensors dtypes floatzip reads. Those not in
# FLOAT_LAYOUTS (integers, bool, F64, ...) are stored raw. The sub-byte types
# (F4, F6_*) are not listed: a file holding them is refused as an unknown
# dtype rather than mis-sized.
ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "C64": 8,
    "I64": 8, "U64": 8, "F64": 8,
}


def rotate_sign_down(bits: np.ndarray, width: int) -> np.ndarray:
    """``sign|exp|man`` -> ``exp|man|sign`` (same unsigned dtype)."""
    one = bits.dtype.type(1)
    return (bits << one) | (bits >> bits.dtype.type(width - 1))


def rotate_sign_up(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`rotate_sign_down`."""
    one = bits.dtype.type(1)
    return (bits >> one) | ((bits & one) << bits.dtype.type(width - 1))


_NUMPY_DTYPES = {
    "BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2",
    "I32": "<i4", "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8",
    "C64": "<c8",
}


def numpy_dtype(dtype: str, path: str = "", name: str = "") -> np.dtype:
    """NumPy dtype for a safetensors dtype; NumPy has no bfloat16 or float8."""
    from .errors import UnsupportedError
    if dtype not in _NUMPY_DTYPES:
        raise UnsupportedError(
            f"{path}: tensor {name!r}: NumPy has no {dtype} dtype; use framework='pt' "
            "or get_bytes() for the raw bytes")
    return np.dtype(_NUMPY_DTYPES[dtype])
