"""`floatzip info`: what a compressed file or directory holds and how well
each tensor compressed, next to the order-0 entropy bound."""
from __future__ import annotations

import os

from . import api
from .codecs.encoded import decode_tensor
from .dtypes import ITEMSIZE
from .format.container import FloatzipFile
from .stats import exponent_bound_bits


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        return [full for rel, full in api._walk(path)
                if rel.endswith(".safetensors") and api._is_floatzip(full)]
    return [path]


def print_info(path: str, *, bound: bool = True, per_tensor: bool = True, backend=None) -> int:
    files = _files(path)
    if os.path.isdir(path) and not files:
        from .errors import FormatError
        raise FormatError(f"{path}: holds no floatzip files")
    total = {"orig": 0, "blob": 0, "weights": 0, "bound": 0.0, "file_orig": 0, "file": 0}
    bounded_orig = 0
    for file in files:
        fz = FloatzipFile(file)
        print(f"{file}: floatzip format v1, {len(fz.tensors)} tensors")
        if per_tensor:
            print(f"  {'tensor':<48} {'dtype':<8} {'shape':<16} {'codec':<5} "
                  f"{'ratio':>7} {'bits/w':>7} {'bound':>7}")
        for name, t in fz.tensors.items():
            src = t.source
            n = max(1, src.nbytes // ITEMSIZE[src.dtype])
            bits_w = 8 * t.blob_bytes / n
            bnd = None
            if bound:
                enc = fz.encoded(name)
                data = decode_tensor(enc, backend=backend, verify=False)
                b = exponent_bound_bits(data, src.dtype)
                if b is not None:
                    bnd = b / n
                    total["bound"] += b / 8
                    bounded_orig += src.nbytes
            total["orig"] += src.nbytes
            total["blob"] += t.blob_bytes
            if per_tensor:
                shape = "x".join(map(str, src.shape)) or "scalar"
                print(f"  {name[:48]:<48} {src.dtype:<8} {shape[:16]:<16} {t.params['codec']:<5} "
                      f"{t.blob_bytes / max(src.nbytes, 1):>7.4f} {bits_w:>7.3f} "
                      f"{'' if bnd is None else f'{bnd:7.3f}':>7}")
        total["file"] += os.path.getsize(file)
        total["file_orig"] += fz.source.data_start + fz.source.data_bytes
    print(f"tensor data: {total['orig']:,} -> {total['blob']:,} bytes, "
          f"ratio {total['blob'] / max(total['orig'], 1):.4f}")
    print(f"whole files: {total['file_orig']:,} -> {total['file']:,} bytes, "
          f"ratio {total['file'] / max(total['file_orig'], 1):.4f} (headers included)")
    if bound and bounded_orig:
        raw_rest = total["orig"] - bounded_orig
        print(f"order-0 exponent bound (exponent at its entropy, other bits raw): "
              f"ratio {(total['bound'] + raw_rest) / max(total['orig'], 1):.4f}")
    return 0
