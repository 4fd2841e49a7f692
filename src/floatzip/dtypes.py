"""Bit layouts of the floating-point dtypes floatzip entropy-codes, and the
element sizes of every dtype a safetensors file may hold.

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

# Bits per element of every dtype safetensors (0.8) knows: the enum of its
# Rust crate. floatzip entropy-codes those in FLOAT_LAYOUTS and stores the
# others raw (codec "raw"). A dtype not listed here is refused, as
# safetensors refuses it.
BITS = {
    "BOOL": 8, "U8": 8, "I8": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,        # OCP microscaling, packed
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "I64": 64, "U64": 64, "F64": 64,
}

# Bytes per element of the dtypes whose elements are whole bytes (all but
# the packed sub-byte ones).
ITEMSIZE = {dtype: bits // 8 for dtype, bits in BITS.items() if bits % 8 == 0}


def tensor_bytes(dtype: str, count: int) -> int | None:
    """Bytes of ``count`` elements of ``dtype``, as safetensors computes it:
    ``count * bits / 8``, packed with no padding; None when that is not a
    whole number of bytes (safetensors refuses such a tensor: an F4 tensor
    of 3 elements, an F6 tensor of 2)."""
    bits = count * BITS[dtype]
    return bits // 8 if bits % 8 == 0 else None


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
