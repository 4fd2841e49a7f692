"""safetensors dtype strings <-> torch dtypes (defined in floatzip.dtypes,
below every layer, and named here for the torch integration)."""
from __future__ import annotations

from ..dtypes import bytes_to_torch, torch_dtype, torch_dtypes

TORCH_DTYPES = torch_dtypes()
SAFETENSORS_DTYPES = {v: k for k, v in TORCH_DTYPES.items()}

__all__ = ["TORCH_DTYPES", "SAFETENSORS_DTYPES", "bytes_to_torch", "torch_dtype"]
