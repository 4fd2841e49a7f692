"""Decoding stored tensors: whole, or streamed a range of groups at a time
with bounded memory; the one place that wraps a decoder's error with the
file and the tensor it is about."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import xxhash

from . import backends
from .codecs import registry
from .codecs.base import Filling
from .codecs.encoded import CODEC_RAW, CODEC_TANS, EncodedTensor, checksum
from .codecs.layout import LANES
from .codecs.tans_codec import TansParts
from .dtypes import FLOAT_LAYOUTS
from .errors import CorruptDataError
from .format import container
from .memory import empty_faulted

# Original bytes decoded per step of a streamed decode: large enough that a
# step's fixed costs vanish and two threads share it, small enough that a
# step's buffers (this, plus at most as much coded data) stay in a few
# hundred MB whatever the tensor's size.
CHUNK_BYTES = 64 << 20


def decode_stored(fz: container.FloatzipFile, name: str, backend, workers, verify=True,
                  mapped=True) -> np.ndarray:
    """One whole tensor's original bytes (uint8, flat), checksum-verified
    unless ``verify`` is False. ``mapped``: read through the file's memory
    map (zero-copy); otherwise the blob is read into memory first."""
    t = fz._get(name)
    blob = fz.blob(name, mapped=mapped)
    out = (empty_faulted if workers > 1 else np.empty)(t.source.nbytes, np.uint8)
    try:
        parts = fz.sections(name, blob=blob)
        t.codec.decode_into(parts.opened, t.source.dtype, container.blob_reader(blob), out,
                            backend=backends.select(backend), workers=workers)
        if verify and checksum(out) != parts.checksum:
            raise checksum_error(parts.checksum, checksum(out))
    except CorruptDataError as exc:
        raise _about(exc, fz, name) from None
    return out


def checksum_error(expected: int, got: int) -> CorruptDataError:
    return CorruptDataError(f"decoded bytes fail their xxh3-64 checksum (expected "
                            f"{expected:016x}, got {got:016x})")


def _about(exc: CorruptDataError, fz: container.FloatzipFile, name: str) -> CorruptDataError:
    """The error, naming the file and the tensor (once)."""
    if str(exc).startswith(fz.path):
        return exc
    return CorruptDataError(f"{fz.path}: tensor {name!r}: {exc}")


def check_stored(fz: container.FloatzipFile, name: str, *, backend=None, workers: int = 1) -> None:
    """Decode one stored tensor and check it against its checksum, keeping
    nothing (memory stays near :data:`CHUNK_BYTES` whatever its size);
    CorruptDataError (naming the file and tensor) if it fails."""
    with open(fz.opened_path, "rb", buffering=0) as f:
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

    def _buffer(self, nbytes: int, key: str = "out") -> np.ndarray:
        if key == "out":            # two take turns (see chunks)
            self._turn ^= 1
            key = f"out{self._turn}"
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
            stored = parts.stored
            digest = xxhash.xxh3_64()
            for piece in stored.codec.decode_steps(
                    parts.opened, stored.source.dtype, fz.file_reader(name, self._fd),
                    self._buffer, backend=self._impl, workers=self._workers,
                    step_bytes=self._chunk_bytes):
                digest.update(piece)
                yield piece
            if digest.intdigest() != parts.checksum:
                raise checksum_error(parts.checksum, digest.intdigest())
        except CorruptDataError as exc:
            raise _about(exc, fz, name) from None


def decode_values(fz: container.FloatzipFile, name: str, v0: int, v1: int, *, backend=None,
                  workers: int = 1) -> np.ndarray:
    """The original bytes of values ``[v0, v1)`` of one tensor (uint8),
    decoding as little as its codec allows: a raw blob is sliced, a tans
    blob decodes only the groups that hold the values, any other codec
    decodes the whole tensor. A part of a tensor cannot be checked against
    its checksum: the caller checks the whole tensor first (the reader does,
    once), while each decoded lane's structural checks still apply."""
    stored = fz._get(name)
    itemsize = stored.source.nbytes // max(1, int(np.prod(stored.source.shape, dtype=np.int64)))
    if v0 == v1:
        return np.zeros(0, dtype=np.uint8)
    if stored.codec is registry.get(CODEC_RAW):
        return np.array(fz.blob(name)[v0 * itemsize:v1 * itemsize])
    if stored.codec is not registry.get(CODEC_TANS):
        return decode_stored(fz, name, backend, workers, verify=False)[v0 * itemsize:
                                                                        v1 * itemsize]
    group = LANES * stored.geometry.lane_symbols
    g0, g1 = v0 // group, -(-v1 // group)
    bits = decode_group_range(fz, name, g0, g1, backend=backend, workers=workers)
    return bits[(v0 - g0 * group) * itemsize:(v1 - g0 * group) * itemsize]


def decode_group_range(fz: container.FloatzipFile, name: str, g0: int, g1: int, *,
                       backend=None, workers: int = 1) -> np.ndarray:
    """The original bytes (uint8) of groups ``g0..g1-1`` of a tans tensor."""
    blob = fz.blob(name)
    try:
        parts = fz.sections(name, blob=blob)
        return _tans_groups(parts.geometry, parts.opened.parts, parts.stored.source.dtype,
                            container.blob_reader(blob), g0, g1, backend, workers)
    except CorruptDataError as exc:
        raise _about(exc, fz, name) from None


def _tans_groups(g, parts, dtype: str, read, g0: int, g1: int, backend,
                 workers: int) -> np.ndarray:
    """Groups ``g0..g1-1`` of a tans blob, in one new array (uint8)."""
    itemsize = g.width // 8
    group = LANES * g.lane_symbols
    out = np.empty((min(g1 * group, g.count) - g0 * group) * itemsize, dtype=np.uint8)
    for _ in registry.get(CODEC_TANS).decode_groups(
            g, parts, dtype, read, Filling(out), g0, g1, backend=backends.select(backend),
            workers=workers, step_bytes=out.size):
        pass
    return out


def decode_tensor(enc: EncodedTensor, *, backend=None, workers: int = 1,
                  verify: bool = True) -> np.ndarray:
    """Original bytes (uint8, flat) of a validated EncodedTensor."""
    if enc.codec == CODEC_RAW:                  # the bytes themselves, not a copy
        out = np.asarray(enc.raw, dtype=np.uint8)
        if verify and checksum(out) != enc.checksum:
            raise checksum_error(enc.checksum, checksum(out))
        return out
    out = (empty_faulted if workers > 1 else np.empty)(enc.original_bytes, np.uint8)
    decode_encoded_into(enc, out, backend=backend, workers=workers, verify=verify)
    return out


def decode_encoded_groups(enc: EncodedTensor, g0: int, g1: int, *, backend=None,
                          workers: int = 1) -> np.ndarray:
    """The original bytes (uint8) of groups ``g0..g1-1`` of a tans-coded
    EncodedTensor, decoding only those (docs/FORMAT.md, section 5: groups
    are independent). Only a checksum cannot be checked on part of a
    tensor."""
    g = enc.geometry
    sec = g.sections()

    def read(offset: int, length: int, out=None) -> np.ndarray:
        # The ranges decode_groups asks of the payload and raw sections,
        # which an EncodedTensor holds as separate arrays.
        for key, data in (("payload", enc.payload), ("raw", enc.raw)):
            start = sec[key][0]
            if start <= offset and offset + length <= start + sec[key][1]:
                return np.asarray(data[offset - start:offset - start + length])
        raise AssertionError(f"bytes {offset}..{offset + length} are in no section")

    return _tans_groups(g, TansParts(np.asarray(enc.counts), np.asarray(enc.lane_sizes)),
                        enc.dtype, read, g0, g1, backend, workers)


def _prefixed(exc: CorruptDataError, where: str) -> CorruptDataError:
    return CorruptDataError(f"{where}: {exc}") if where else exc


def decode_encoded_into(enc: EncodedTensor, out: np.ndarray, *, backend=None, workers: int = 1,
                        verify: bool = True, where: str = "") -> None:
    """Decode ``enc`` into ``out`` (uint8, exactly its original size);
    errors start with ``where`` when given."""
    if enc.codec == CODEC_RAW:
        np.copyto(out, np.asarray(enc.raw, dtype=np.uint8))
    else:
        impl = backends.select(backend, device="cpu")
        storage = FLOAT_LAYOUTS[enc.dtype].storage
        args = (enc.geometry, enc.counts, enc.lane_sizes, enc.payload, enc.raw, storage)
        try:
            impl.decode(*args, workers=workers, out=out.view(storage))
        except CorruptDataError as exc:
            raise _prefixed(exc, where) from None
    if verify and checksum(out) != enc.checksum:
        raise _prefixed(checksum_error(enc.checksum, checksum(out)), where)


def decode_encoded_rows(enc: EncodedTensor, rows: np.ndarray, *, backend=None,
                        workers: int = 1) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of a 2-D tensor, as a uint8 array
    [len(rows), row bytes], decoding only the groups they touch."""
    n_rows, width = enc.shape
    itemsize = enc.original_bytes // max(enc.count, 1)
    out = np.empty((len(rows), width * itemsize), dtype=np.uint8)
    if enc.codec == CODEC_RAW:
        table = np.asarray(enc.raw, dtype=np.uint8).reshape(n_rows, width * itemsize)
        np.take(table, rows, axis=0, out=out)
        return out
    group = 32 * enc.geometry.lane_symbols
    first = rows * width // group                   # group of each row's first value
    last = ((rows + 1) * width - 1) // group
    # Runs of consecutive groups, each decoded with one back-end call.
    i = 0
    while i < len(rows):
        g0, g1, j = int(first[i]), int(last[i]) + 1, i + 1
        while j < len(rows) and first[j] <= g1:
            g1 = max(g1, int(last[j]) + 1)
            j += 1
        values = decode_encoded_groups(enc, g0, g1, backend=backend, workers=workers)
        base = g0 * group * itemsize
        for k in range(i, j):
            at = int(rows[k]) * width * itemsize - base
            out[k] = values[at:at + width * itemsize]
        i = j
    return out
