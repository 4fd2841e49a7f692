"""The one place that picks a coding back end, and the only reader of
$FLOATZIP_BACKEND.

Back ends keep the contract of :class:`base.Backend`: ``numpy`` (the
reference, which reads like docs/FORMAT.md), ``numba`` (multi-threaded CPU)
and ``triton`` (GPU decode only). Callers say what they need, and on which
device; :func:`select` gives the back end asked for (by name, else by
$FLOATZIP_BACKEND, else the fastest that serves the need), or raises an
UnsupportedError that names a choice that works.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

from ..errors import UnsupportedError

# name -> module, in order of preference.
_MODULES = {"numba": "numba", "numpy": "numpy_ref", "triton": "triton"}
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}      # name -> why it does not import
ENV = "FLOATZIP_BACKEND"


def names() -> list[str]:
    """Every back end floatzip has (whether or not it imports here)."""
    return list(_MODULES)


def available() -> list[str]:
    """The back ends that import here."""
    out = []
    for name in _MODULES:
        try:
            _load(name)
        except UnsupportedError:
            continue
        out.append(name)
    return out


def select(name: str | None = None, *, device: str = "cpu", encode: bool = False):
    """The back end to decode on ``device`` (a device type, "cpu" or
    "cuda"), and to encode if ``encode``: the one named, else the one
    $FLOATZIP_BACKEND names, else the fastest that can. UnsupportedError,
    naming what to use instead, if the one named cannot."""
    origin = "backend="
    if name is None and os.environ.get(ENV):
        name, origin = os.environ[ENV], f"{ENV}="
    if name is None:
        for candidate in _MODULES:
            try:
                module = _load(candidate)
            except UnsupportedError:
                continue
            if _serves(module, device, encode):
                return module
        raise UnsupportedError(f"no coding back end can {_need(device, encode)} here; install "
                               "numba, or torch and triton for CUDA")
    module = _load(name, origin)
    if not _serves(module, device, encode):
        others = [n for n in _MODULES if n != name and _serves_by_name(n, device, encode)]
        instead = (f"use {' or '.join(repr(n) for n in others)}" if others
                   else "no back end here can")
        unset = f", or unset {ENV}" if origin != "backend=" else ""
        raise UnsupportedError(f"back end {name!r} ({origin}{name}) cannot "
                               f"{_need(device, encode)}: {instead}{unset}")
    return module


def get(name: str | None = None):
    """The back end to encode and decode on the CPU (select with those needs)."""
    return select(name, device="cpu", encode=False)


def _need(device: str, encode: bool) -> str:
    return f"encode and decode on {device}" if encode else f"decode on {device}"


def _serves(module, device: str, encode: bool) -> bool:
    return device in module.devices() and (module.can_encode or not encode)


def _serves_by_name(name: str, device: str, encode: bool) -> bool:
    try:
        return _serves(_load(name), device, encode)
    except UnsupportedError:
        return False


def _load(name: str, origin: str = "backend="):
    if name not in _MODULES:
        raise UnsupportedError(f"unknown back end {name!r} ({origin}{name}); choose one of "
                               f"{', '.join(_MODULES)}")
    if name not in _loaded:
        if name not in _failed:
            try:
                _loaded[name] = importlib.import_module(f".{_MODULES[name]}", __name__)
                return _loaded[name]
            except ImportError as exc:
                _failed[name] = str(exc)
        usable = [n for n in _MODULES if n not in _failed and n != name]
        raise UnsupportedError(f"back end {name!r} is not usable here ({_failed[name]}); "
                               f"choose one of {', '.join(usable)}")
    return _loaded[name]


@dataclass(frozen=True)
class FastCode:
    """The fast in-memory code's encoder and decoder on one back end
    (:class:`base.FastCodeBackend`'s two functions, and whose they are)."""
    name: str                   # the back end's name
    encode: Callable            # (values, bits=None, palette=None) -> FastTensor
    decode: Callable            # (ft, out=None, workers=1) -> uint16 array


def _reference_fast_decode(ft, out=None, workers: int = 1):
    from ..codecs import fast_code
    return fast_code.decode(ft, out)


def select_fast_code(name: str | None = None, *, device: str = "cpu") -> FastCode:
    """The fast code's encoder and decoder for ``device``: those of the back
    end :func:`select` gives (by name, $FLOATZIP_BACKEND, else the fastest),
    or, for a CPU back end without them (the NumPy reference), the
    reference in codecs/fast_code.py. UnsupportedError if none runs there."""
    module = select(name, device=device)
    if hasattr(module, "fast_decode") and hasattr(module, "fast_encode"):
        return FastCode(module.name, module.fast_encode, module.fast_decode)
    if device == "cpu":
        from ..codecs import fast_code
        return FastCode(module.name, fast_code.encode, _reference_fast_decode)
    raise UnsupportedError(f"back end {module.name!r} has no decoder of the fast in-memory code "
                           f"on {device}; use memory='compact'")
