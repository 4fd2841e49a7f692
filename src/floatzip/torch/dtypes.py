"""safetensors dtype strings <-> torch dtypes."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UnsupportedError

TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
    "F32": torch.float32, "F64": torch.float64, "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# Dtypes that older torch builds lack.
for _name, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"),
                     ("F8_E8M0", "float8_e8m0fnu")):
    if hasattr(torch, _attr):
        TORCH_DTYPES[_name] = getattr(torch, _attr)
SAFETENSORS_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}


def torch_dtype(dtype: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise UnsupportedError(f"this torch ({torch.__version__}) has no dtype for safetensors "
                               f"{dtype}; read it with framework='np', or upgrade torch") from None


def bytes_to_torch(data: np.ndarray, dtype: str, shape, device="cpu") -> torch.Tensor:
    """A tensor over the given little-endian bytes (copied when they are
    read-only, since torch cannot wrap read-only memory)."""
    if np.asarray(data).size == 0:      # torch views no empty array as another dtype
        return torch.empty(tuple(shape), dtype=torch_dtype(dtype), device=device)
    array = np.asarray(data, dtype=np.uint8)
    if not array.flags.writeable:
        array = array.copy()
    t = torch.from_numpy(array).view(torch_dtype(dtype)).reshape(tuple(shape))
    return t if str(device) == "cpu" else t.to(device)
