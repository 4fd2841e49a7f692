"""`floatzip info`: what a compressed file or directory holds and how well
each tensor compressed, next to the order-0 entropy bound."""
from __future__ import annotations

import os

from . import api
from .dtypes import ITEMSIZE
from .errors import FormatError
from .format.container import BOUND_FIELD, FORMAT_VERSION, FloatzipFile


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        return [full for rel, full in api._walk(path)
                if rel.endswith(".safetensors") and api._is_floatzip(full)]
    return [path]


def print_info(path: str, *, per_tensor: bool = True) -> int:
    """Reads headers only: instant on any size of checkpoint."""
    files = _files(path)
    if os.path.isdir(path) and not files:
        raise FormatError(f"{path}: holds no floatzip files")
    orig = blob = bound_orig = file_orig = file_size = 0
    bound = 0.0
    for file in files:
        fz = FloatzipFile(file)
        print(f"{file}: floatzip format v{FORMAT_VERSION}, {len(fz.tensors)} tensors")
        if per_tensor:
            print(f"  {'tensor':<48} {'dtype':<8} {'shape':<16} {'codec':<5} "
                  f"{'ratio':>7} {'bits/w':>7} {'bound':>7}")
        for name, t in fz.tensors.items():
            src = t.source
            n = max(1, src.nbytes // ITEMSIZE[src.dtype])
            tensor_bound = t.params.get(BOUND_FIELD)
            if tensor_bound is not None:
                bound += tensor_bound / 8
                bound_orig += src.nbytes
            orig += src.nbytes
            blob += t.blob_bytes
            if per_tensor:
                shape = "x".join(map(str, src.shape)) or "scalar"
                shown = "" if tensor_bound is None else f"{tensor_bound / n:7.3f}"
                print(f"  {name[:48]:<48} {src.dtype:<8} {shape[:16]:<16} {t.params['codec']:<5} "
                      f"{t.blob_bytes / max(src.nbytes, 1):>7.4f} {8 * t.blob_bytes / n:>7.3f} {shown:>7}")
        file_size += os.path.getsize(file)
        file_orig += fz.source.data_start + fz.source.data_bytes
    print(f"tensor data: {orig:,} -> {blob:,} bytes, ratio {blob / max(orig, 1):.4f}")
    print(f"whole files: {file_orig:,} -> {file_size:,} bytes, "
          f"ratio {file_size / max(file_orig, 1):.4f} (headers included)")
    if bound_orig:
        print("order-0 bound (exponent at its entropy, other bits raw): "
              f"ratio {(bound + orig - bound_orig) / max(orig, 1):.4f}")
    return 0
