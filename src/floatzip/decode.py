"""Decoding stored tensors: whole, or streamed a range of groups at a time
with bounded memory; the one place that wraps a decoder's error with the
file and the tensor it is about."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import xxhash

from . import backends
from .codecs import registry
from .codecs.encoded import CODEC_RAW, CODEC_TANS, EncodedTensor, checksum
from .codecs.layout import LANES
from .dtypes import FLOAT_LAYOUTS
from .errors import CorruptDataError
from .format import container

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
    t = fz.tensors.get(name)
    if t is None:
        fz._get(name)                   # the reader's error for an unknown name
    blob = fz.blob(name, mapped=mapped)
    out = np.empty(t.source.nbytes, dtype=np.uint8)
    if workers > 1:
        # Fault the fresh pages in here, one thread: several threads faulting
        # NumPy's transparent huge pages at once serialise badly (2 threads
        # decoded a 47 MB tensor at 0.6 GB/s instead of 3.6 on one).
        out[::4096] = 0
    try:
        parts = fz.sections(name, blob=blob)
        t.codec.decode_into(parts.opened, t.source.dtype, container.blob_reader(blob), out,
                            backend=backends.select(backend), workers=workers)
        if verify and checksum(out) != parts.checksum:
            raise CorruptDataError(
                f"decoded bytes fail their xxh3-64 checksum (expected {parts.checksum:016x}, "
                f"got {checksum(out):016x})")
    except CorruptDataError as exc:
        raise _about(exc, fz, name) from None
    return out


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
                raise CorruptDataError(
                    f"decoded bytes fail their xxh3-64 checksum (expected "
                    f"{parts.checksum:016x}, got {digest.intdigest():016x})")
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
        g = parts.geometry
        group_bytes = LANES * g.lane_symbols * (g.width // 8)
        out = np.empty(min(g1 * group_bytes, g.count * (g.width // 8)) - g0 * group_bytes,
                       dtype=np.uint8)
        position = 0

        def buffer(nbytes: int, key: str = "out") -> np.ndarray:
            return (out[position:position + nbytes] if key == "out"
                    else np.empty(nbytes, dtype=np.uint8))

        for piece in registry.get(CODEC_TANS).decode_groups(
                g, parts.opened.parts, parts.stored.source.dtype, container.blob_reader(blob),
                buffer, g0, g1, backend=backends.select(backend), workers=workers,
                step_bytes=out.size):
            position += piece.size
    except CorruptDataError as exc:
        raise _about(exc, fz, name) from None
    return out


def decode_tensor(enc: EncodedTensor, *, backend=None, workers: int = 1,
                  verify: bool = True) -> np.ndarray:
    """Original bytes (uint8, flat) of a validated EncodedTensor."""
    if enc.codec == CODEC_RAW:
        out = np.asarray(enc.raw, dtype=np.uint8)
    else:
        layout = FLOAT_LAYOUTS[enc.dtype]
        impl = backends.get(backend)
        bits = impl.decode(enc.geometry, enc.counts, enc.lane_sizes, enc.payload, enc.raw,
                           layout.storage, workers=workers)
        out = bits.view(np.uint8)
    if verify and checksum(out) != enc.checksum:
        raise CorruptDataError(
            f"decoded bytes fail their xxh3-64 checksum (expected {enc.checksum:016x}, "
            f"got {checksum(out):016x})")
    return out


def decode_encoded_groups(enc: EncodedTensor, g0: int, g1: int, *, backend=None,
                       workers: int = 1) -> np.ndarray:
    """Values ``[g0·32K, min(g1·32K, n))`` of a tans-coded tensor, as bits
    (its storage dtype), decoding only groups ``g0..g1-1``.

    Groups are independent (docs/FORMAT.md, section 5): their lanes are
    contiguous in the payload and their raw fields in the raw section, which
    start on a byte boundary since a group holds a multiple of 8 values; so
    the groups form a smaller coded tensor of the same parameters, which the
    back end decodes with its usual checks. Only a checksum cannot be
    checked on part of a tensor."""
    g = enc.geometry
    group = LANES * g.lane_symbols
    starts = np.zeros(g.lanes + 1, dtype=np.int64)
    np.cumsum(np.asarray(enc.lane_sizes, dtype=np.int64), out=starts[1:])
    v0, v1 = g0 * group, min(g1 * group, g.count)
    payload = enc.payload[starts[LANES * g0]:starts[LANES * g1]]
    raw = enc.raw[v0 * g.raw_bits // 8:(v1 * g.raw_bits + 7) // 8]
    part = dataclasses.replace(g, count=v1 - v0, payload_bytes=int(payload.size))
    storage = FLOAT_LAYOUTS[enc.dtype].storage
    return backends.get(backend).decode(part, enc.counts, enc.lane_sizes[LANES * g0:LANES * g1],
                                        payload, raw, storage, workers=workers)


def decode_encoded_into(enc: EncodedTensor, out: np.ndarray, *, backend=None, workers: int = 1,
                verify: bool = True, where: str = "") -> None:
    """Decode ``enc`` into ``out`` (uint8, exactly its original size);
    errors start with ``where``."""
    if enc.codec == CODEC_RAW:
        np.copyto(out, np.asarray(enc.raw, dtype=np.uint8))
    else:
        impl = backends.select(backend, device="cpu")
        storage = FLOAT_LAYOUTS[enc.dtype].storage
        args = (enc.geometry, enc.counts, enc.lane_sizes, enc.payload, enc.raw, storage)
        try:
            impl.decode(*args, workers=workers, out=out.view(storage))
        except CorruptDataError as exc:
            raise CorruptDataError(f"{where}: {exc}") from None
    if verify and checksum(out) != enc.checksum:
        raise CorruptDataError(f"{where}: decoded bytes fail their xxh3-64 checksum "
                               f"(expected {enc.checksum:016x}, got {checksum(out):016x})")


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
        values = decode_encoded_groups(enc, g0, g1, backend=backend, workers=workers).view(np.uint8)
        base = g0 * group * itemsize
        for k in range(i, j):
            at = int(rows[k]) * width * itemsize - base
            out[k] = values[at:at + width * itemsize]
        i = j
    return out
