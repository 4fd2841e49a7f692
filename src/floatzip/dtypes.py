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


# The torch dtype of each safetensors dtype, by its name in torch
# (``torch.<name>``), so that this module imports no torch. Older torch
# builds lack some of them (the unsigned ints, F8_E8M0).
TORCH_DTYPE_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32",
    "I64": "int64", "F16": "float16", "BF16": "bfloat16", "F32": "float32",
    "F64": "float64", "C64": "complex64", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "F8_E8M0": "float8_e8m0fnu",
}


def torch_dtypes() -> dict:
    """safetensors dtype -> torch.dtype, for the dtypes this torch has.
    Imports torch, so only code that uses torch calls it."""
    import torch
    return {dtype: getattr(torch, name) for dtype, name in TORCH_DTYPE_NAMES.items()
            if hasattr(torch, name)}


def torch_dtype(dtype: str):
    """The torch dtype of a safetensors dtype; UnsupportedError if this
    torch has none. Imports torch."""
    import torch
    try:
        return getattr(torch, TORCH_DTYPE_NAMES[dtype])
    except (KeyError, AttributeError):
        from .errors import UnsupportedError
        raise UnsupportedError(f"this torch ({torch.__version__}) has no dtype for safetensors "
                               f"{dtype}; read it with framework='np', or upgrade torch") from None


def bytes_to_torch(data: np.ndarray, dtype: str, shape, device="cpu"):
    """A torch tensor over the given little-endian bytes (copied when they
    are read-only, since torch cannot wrap read-only memory). Imports torch;
    here, below every layer, so that safe_open and the torch integration
    share it."""
    import torch
    if np.asarray(data).size == 0:      # torch views no empty array as another dtype
        return torch.empty(tuple(shape), dtype=torch_dtype(dtype), device=device)
    array = np.asarray(data, dtype=np.uint8)
    if not array.flags.writeable:
        array = array.copy()
    t = torch.from_numpy(array).view(torch_dtype(dtype)).reshape(tuple(shape))
    return t if str(device) == "cpu" else t.to(device)
