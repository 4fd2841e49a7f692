"""Decoding stored tensors: whole, or streamed a range of groups at a time
with bounded memory; the one place that wraps a decoder's error with the
file and the tensor it is about."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import xxhash

from . import backends
from .codecs.encoded import decode_tensor
from .codecs.layout import LANES
from .dtypes import FLOAT_LAYOUTS
from .errors import CorruptDataError
from .format import container
from .io_utils import pread_exact

# Original bytes decoded per step of a streamed decode: large enough that a
# step's fixed costs vanish and two threads share it, small enough that a
# step's buffers (this, plus at most as much coded data) stay in a few
# hundred MB whatever the tensor's size.
CHUNK_BYTES = 64 << 20


def decode_stored(fz: container.FloatzipFile, name: str, backend, workers, verify=True,
                  mapped=True) -> np.ndarray:
    """One whole tensor's original bytes (uint8, flat), checksum-verified
    unless ``verify`` is False."""
    try:
        return decode_tensor(fz.encoded(name, mapped=mapped), backend=backend, workers=workers,
                             verify=verify)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{fz.path}: tensor {name!r}: {exc}") from None


def check_stored(fz: container.FloatzipFile, name: str, *, backend=None, workers: int = 1) -> None:
    """Decode one stored tensor and check it against its checksum, keeping
    nothing (memory stays near :data:`CHUNK_BYTES` whatever its size);
    CorruptDataError (naming the file and tensor) if it fails."""
    with open(fz.path, "rb", buffering=0) as f:
        for _ in StreamDecoder(fz, f.fileno(), backend=backend, workers=workers).chunks(name):
            pass


class StreamDecoder:
    """Decodes the tensors of one open floatzip file a step at a time into
    buffers it reuses from tensor to tensor, so a job over a whole file
    allocates (and the kernel faults in) its buffers once."""

    def __init__(self, fz: container.FloatzipFile, fd: int, *, backend=None, workers: int = 1,
                 chunk_bytes: int = CHUNK_BYTES):
        self.fz = fz
        self._fd = fd
        self._impl = backends.get(backend)
        self._workers = workers
        self._chunk_bytes = chunk_bytes
        self._buffers: dict[str, np.ndarray] = {}
        self._turn = 0

    def _out(self, nbytes: int) -> np.ndarray:
        """The next output buffer: two take turns, so a consumer may still
        be writing the piece before the one it was just given."""
        self._turn ^= 1
        return self._buffer(f"out{self._turn}", nbytes)

    def _buffer(self, key: str, nbytes: int) -> np.ndarray:
        buf = self._buffers.get(key)
        if buf is None or buf.size < nbytes:
            buf = self._buffers[key] = np.empty(max(nbytes, 8), dtype=np.uint8)
        return buf[:nbytes]

    def chunks(self, name: str) -> Iterator[np.ndarray]:
        """The tensor's original bytes, in order, as uint8 arrays that are
        valid until the one after the next is asked for. After the last, the
        checksum of them all is checked: a consumer must not treat what it
        got as good until the iteration has ended without an error."""
        fz = self.fz
        try:
            parts = fz.sections(name, fd=self._fd)
            digest = xxhash.xxh3_64()
            pieces = (self._raw_chunks(parts) if parts.geometry is None
                      else self._coded_chunks(parts))
            for piece in pieces:
                digest.update(piece)
                yield piece
            if digest.intdigest() != parts.checksum:
                raise CorruptDataError(
                    f"decoded bytes fail their xxh3-64 checksum (expected "
                    f"{parts.checksum:016x}, got {digest.intdigest():016x})")
        except CorruptDataError as exc:
            if str(exc).startswith(fz.path):
                raise
            raise CorruptDataError(f"{fz.path}: tensor {name!r}: {exc}") from None

    def _raw_chunks(self, parts: container.StoredSections) -> Iterator[np.ndarray]:
        total = parts.stored.blob_bytes
        for start in range(0, total, self._chunk_bytes):
            piece = self._out(min(self._chunk_bytes, total - start))
            pread_exact(self._fd, piece, parts.payload_begin + start, self.fz.path)
            yield piece

    def _coded_chunks(self, parts: container.StoredSections) -> Iterator[np.ndarray]:
        g = parts.geometry
        layout = FLOAT_LAYOUTS[parts.stored.source.dtype]
        itemsize = g.width // 8
        group = LANES * g.lane_symbols
        step = max(1, self._chunk_bytes // (group * itemsize))      # groups a step
        starts = np.zeros(g.lanes + 1, dtype=np.int64)
        np.cumsum(parts.lane_sizes, dtype=np.int64, out=starts[1:])
        for g0 in range(0, g.groups, step):
            g1 = min(g0 + step, g.groups)
            v0, v1 = g0 * group, min(g1 * group, g.count)
            p0, p1 = int(starts[LANES * g0]), int(starts[LANES * g1])
            r0, r1 = v0 * g.raw_bits // 8, (v1 * g.raw_bits + 7) // 8
            payload = self._buffer("payload", p1 - p0)
            raw = self._buffer("raw", r1 - r0)
            pread_exact(self._fd, payload, parts.payload_begin + p0, self.fz.path)
            pread_exact(self._fd, raw, parts.raw_begin + r0, self.fz.path)
            out = self._out((v1 - v0) * itemsize).view(layout.storage.newbyteorder("="))
            part = dataclasses.replace(g, count=v1 - v0, payload_bytes=p1 - p0)
            self._impl.decode(part, parts.counts, parts.lane_sizes[LANES * g0:LANES * g1],
                              payload, raw, layout.storage, workers=self._workers, out=out)
            yield out.view(np.uint8)
