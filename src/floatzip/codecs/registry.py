"""Codecs by id: the only place the container and the layers above it find
one. A codec module registers its codec when imported; the built-in ones
are imported by the package (codecs/__init__.py), so they are known as soon
as anything of floatzip.codecs is."""
from __future__ import annotations

from ..errors import UnsupportedError
from .base import Codec

_CODECS: dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    """Make ``codec`` the one for its id (a later registration of the same
    id replaces it: tests register toy codecs)."""
    if not codec.codec_id:
        raise ValueError("a codec needs a codec_id")
    _CODECS[codec.codec_id] = codec
    return codec


def unregister(codec_id: str) -> None:
    _CODECS.pop(codec_id, None)


def get(codec_id, where: str = "") -> Codec:
    """The codec of that id; UnsupportedError (a newer file, most likely)
    for one this floatzip does not know."""
    codec = _CODECS.get(codec_id) if isinstance(codec_id, str) else None
    if codec is None:
        prefix = f"{where}: " if where else ""
        raise UnsupportedError(f"{prefix}unknown codec {codec_id!r}; this floatzip knows "
                               f"{', '.join(repr(c) for c in _CODECS)} (upgrade floatzip?)")
    return codec


def ids() -> list[str]:
    return list(_CODECS)
