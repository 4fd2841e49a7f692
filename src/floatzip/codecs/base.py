"""What a codec is: one way of storing a tensor's bytes as a blob.

A codec is an object with an id (the "codec" field of docs/FORMAT.md section
3), its own parameters, its blob layout and the checks of its section of the
format. The container (format/) and everything above it reach codecs only
through :mod:`floatzip.codecs.registry`, so a new codec is one new module
that registers itself; nothing else changes.

The pieces a codec provides, all on validated input:

* ``parse``: its parameters (the JSON object, less ``codec``, ``xxh3`` and
  ``bound_bits``, which the container checks for every codec) into the
  codec's own description of the blob, checked against the tensor and the
  blob's size, before anything is allocated;
* ``params``: that description back into its JSON fields, in write order;
* ``open``: the blob's small parts (tables, sizes), read and checked, and
  where its large ones lie;
* ``decode_steps``: the original bytes, a bounded step at a time (streamed
  decoding of any size);
* ``decode_into``: one whole tensor into a caller's buffer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# read(offset, length, out=None) -> uint8 array of ``length`` bytes of the
# blob from ``offset``, from the file or from memory (the caller decides);
# ``out`` is a buffer it may fill and return (a file read does; a blob in
# memory returns a view instead). Use what it returns.
Read = Callable[..., np.ndarray]
# buffer(nbytes, key="out") -> a writable uint8 array of ``nbytes`` that the
# caller reuses: one per key, and two that take turns for "out" (a piece
# handed out may still be in use while the next one is decoded).
Buffer = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Opened:
    """A blob's validated small parts (``parts``, the codec's own) and its
    description (``layout``, what ``parse`` returned)."""
    layout: object
    parts: object


class Codec(ABC):
    codec_id: str = ""

    def format_version(self, fields: dict) -> int:
        """The oldest format version that defines a tensor with these fields
        (docs/FORMAT.md, "Versions"): a file declares the highest its tensors
        need, and a tensor needing more than its file declares is rejected."""
        return 1

    @abstractmethod
    def parse(self, fields: dict, dtype: str, shape: tuple[int, ...], nbytes: int,
              blob_bytes: int, bad: Callable[[str], Exception]) -> object:
        """Check this codec's ``fields`` for a tensor of ``dtype``, ``shape``
        and ``nbytes`` original bytes stored in ``blob_bytes``; raise
        ``bad(message)`` on any violation. Returns the blob's description."""

    @abstractmethod
    def params(self, layout) -> dict:
        """The codec's JSON fields (without codec, xxh3, bound_bits)."""

    @abstractmethod
    def open(self, layout, read: Read, where: str) -> Opened:
        """Read and check the blob's small parts; FormatError naming
        ``where`` on a violation."""

    @abstractmethod
    def decode_steps(self, opened: Opened, dtype: str, read: Read, buffer: Buffer, *,
                     backend, workers: int, step_bytes: int) -> Iterator[np.ndarray]:
        """The tensor's original bytes in order, each piece at most about
        ``step_bytes``, written into ``buffer`` (valid until the caller asks
        for another), decoded by ``backend`` (a back end the caller chose:
        codecs sit below the back ends and pick none). CorruptDataError when
        a stream does not decode cleanly; the caller checks the checksum."""

    def decode_into(self, opened: Opened, dtype: str, read: Read, out: np.ndarray, *,
                    backend, workers: int) -> None:
        """The whole tensor's original bytes into ``out`` (uint8, exactly
        its size), in as few steps as the codec takes."""
        fill = Filling(out)
        for piece in self.decode_steps(opened, dtype, read, fill, backend=backend,
                                       workers=workers, step_bytes=max(out.size, 1)):
            if not np.shares_memory(piece, fill.last):  # a memory read's view
                fill.last[...] = piece
        if fill.position != out.size:
            raise AssertionError(f"{self.codec_id} decoded {fill.position} bytes of {out.size}")


class Filling:
    """A Buffer that hands out ``out`` piece after piece, each step's "out"
    where its bytes belong (``last``: the latest), and new scratch arrays:
    decoding into a caller's array with no copy."""

    def __init__(self, out: np.ndarray):
        self.out, self.position = out, 0
        self.last = out[:0]

    def __call__(self, nbytes: int, key: str = "out") -> np.ndarray:
        if key != "out":
            return np.empty(nbytes, dtype=np.uint8)
        self.last = self.out[self.position:self.position + nbytes]
        self.position += nbytes
        return self.last
