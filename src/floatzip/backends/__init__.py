"""The one place that picks a coding back end.

A back end is a module with ``name`` and three functions:

``histogram(bits, width, top_bits, workers=1) -> int64[2**top_bits]``
    Counts of the top ``top_bits`` bits of each sign-rotated value.

``encode(bits, geometry_args, counts, workers=1) -> (lane_sizes, payload, raw)``
    ``bits``: the tensor's values as unsigned ints of the value width (flat).
    ``geometry_args``: dict with width, symbol_bits, table_log, first_symbol,
    lane_symbols. ``counts``: normalized uint16 counts. Returns uint16 lane
    sizes, the uint8 payload and the uint8 packed raw fields.

``decode(geometry, counts, lane_sizes, payload, raw, dtype, workers=1, out=None) -> bits``
    Inverse of encode; into ``out`` (``count`` values of ``dtype``) if given. The container has already validated every size and
    the counts; the stream *content* may still be corrupt, and the back end
    must then raise CorruptDataError (never read out of bounds).

Every back end produces byte-identical output to ``numpy_ref``, the
reference; tests/test_backends.py checks it.
"""
from __future__ import annotations

import importlib
import os

from ..errors import UnsupportedError

# triton decodes only (into device memory; encode raises UnsupportedError).
_MODULES = {"numpy": "numpy_ref", "numba": "numba_backend", "triton": "triton_decode"}
_loaded: dict[str, object] = {}


def available() -> list[str]:
    names = []
    for name in _MODULES:
        try:
            get(name)
        except UnsupportedError:
            continue
        names.append(name)
    return names


def get(name: str | None = None):
    """Back end by name; ``None`` means $FLOATZIP_BACKEND, else the fastest
    one that imports (numba, then numpy)."""
    if name is None:
        name = os.environ.get("FLOATZIP_BACKEND") or None
    if name is None:
        try:
            return get("numba")
        except UnsupportedError:
            return get("numpy")
    if name not in _MODULES:
        raise UnsupportedError(
            f"unknown back end {name!r}; choose one of {', '.join(_MODULES)}")
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(f".{_MODULES[name]}", __name__)
        except ImportError as exc:
            raise UnsupportedError(f"back end {name!r} is not usable here: {exc}") from exc
    return _loaded[name]
