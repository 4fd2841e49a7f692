"""`floatzip info`: what a compressed file or directory holds and how well
each tensor compressed, next to the order-0 entropy bound."""
from __future__ import annotations

import math
import os

from .model_dir import MANIFEST, is_floatzip, walk
from .errors import FormatError
from .codecs.encoded import CODEC_CONST
from .format.container import BOUND_FIELD, FloatzipFile


def _files(path: str) -> tuple[list[str], list[str]]:
    """The floatzip files of a file or directory, and its other files but
    the manifest."""
    if not os.path.isdir(path):
        return [path], []
    coded, other = [], []
    for rel, full in walk(path):
        if rel != MANIFEST:
            (coded if rel.endswith(".safetensors") and is_floatzip(full) else other).append(full)
    return coded, other


def summarize(path: str, per_tensor=None) -> dict:
    """Sizes of a compressed file or directory, from its headers alone:
    original and coded tensor bytes, whole files, the order-0 bound, and
    for a directory its other files (copied as they are) and its manifest.
    ``per_tensor(file, name, stored)`` is called for each tensor if given."""
    files, other = _files(path)
    if os.path.isdir(path) and not files:
        raise FormatError(f"{path}: holds no floatzip files")
    total = dict(orig=0, blob=0, file_orig=0, file=0, bound=0.0, bound_orig=0, bound_blob=0,
                 other_files=len(other), other=sum(os.path.getsize(f) for f in other),
                 manifest=0)
    manifest = os.path.join(path, MANIFEST)
    if os.path.isdir(path) and os.path.isfile(manifest):
        total["manifest"] = os.path.getsize(manifest)
    for file in files:
        fz = FloatzipFile(file)
        if per_tensor:
            per_tensor(file, None, fz)
        for name, t in fz.tensors.items():
            tensor_bound = t.params.get(BOUND_FIELD)
            if tensor_bound is not None and t.codec.codec_id != CODEC_CONST:
                total["bound"] += min(tensor_bound / 8, t.source.nbytes)
                total["bound_orig"] += t.source.nbytes
                total["bound_blob"] += t.blob_bytes
            total["orig"] += t.source.nbytes
            total["blob"] += t.blob_bytes
            if per_tensor:
                per_tensor(file, name, t)
        total["file"] += os.path.getsize(file)
        total["file_orig"] += fz.source.data_start + fz.source.data_bytes
    total["ratio"] = total["blob"] / max(total["orig"], 1)
    total["file_ratio"] = total["file"] / max(total["file_orig"], 1)
    # Tensors without a bound (integers, const, raw scalars) count at what
    # they store: no coder of the bound's model would store them larger.
    unbounded_blob = total["blob"] - total["bound_blob"]
    total["bound_ratio"] = ((min(total["bound"], total["bound_blob"]) + unbounded_blob)
                            / max(total["orig"], 1) if total["bound_orig"] else None)
    return total


def print_info(path: str, *, per_tensor: bool = True) -> int:
    """Reads headers only: instant on any size of checkpoint."""

    def show(file, name, item):
        if name is None:
            print(f"{file}: floatzip format v{item.version}, {len(item.tensors)} tensors")
            print(f"  {'tensor':<48} {'dtype':<8} {'shape':<16} {'codec':<5} "
                  f"{'ratio':>7} {'bits/w':>7} {'bound':>7}")
            return
        src = item.source
        n = max(1, math.prod(src.shape))
        bound = item.params.get(BOUND_FIELD)
        shape = "x".join(map(str, src.shape)) or "scalar"
        shown = "" if bound is None else f"{bound / n:7.3f}"
        print(f"  {name[:48]:<48} {src.dtype:<8} {shape[:16]:<16} {item.params['codec']:<5} "
              f"{item.blob_bytes / max(src.nbytes, 1):>7.4f} {8 * item.blob_bytes / n:>7.3f} {shown:>7}")

    t = summarize(path, show if per_tensor else None)
    print(f"tensor data: {t['orig']:,} -> {t['blob']:,} bytes, ratio {t['ratio']:.4f}")
    print(f"whole files: {t['file_orig']:,} -> {t['file']:,} bytes, "
          f"ratio {t['file_ratio']:.4f} (headers included)")
    if t["bound_ratio"] is not None:
        # Format 1 encoders wrote the exponent's bound; format 2's encoder the
        # bound of what it codes (docs/FORMAT.md section 3, bound_bits).
        print(f"order-0 bound as the encoder recorded it (floatzip 0.2: symbols at their "
              f"entropy, raw bits stored, no tables; 0.1: the exponent's alone; tensors "
              f"without one as stored): ratio {t['bound_ratio']:.4f}")
    if os.path.isdir(path):
        print(f"other files (copied as they are): {t['other_files']}, {t['other']:,} bytes")
        print(f"whole directory: {t['file_orig'] + t['other']:,} -> "
              f"{t['file'] + t['other'] + t['manifest']:,} bytes (manifest included)")
    return 0
