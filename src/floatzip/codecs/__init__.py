"""Codecs: what a tensor's blob is (docs/FORMAT.md sections 3-5). Importing
the package registers the built-in ones (codecs/registry.py)."""
from . import const_codec, raw_codec, tans_codec  # noqa: F401  (each registers itself)
