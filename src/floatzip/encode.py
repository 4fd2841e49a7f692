"""Compressing one safetensors file into a floatzip file, streamed: memory
stays bounded (a window of :data:`WINDOW_BYTES` and what one step codes)
whatever the sizes of the file and of its tensors.

The floatzip header names every blob's size, which is known only once the
blob is coded, and it comes first in the file. Rather than code into a
scratch file and copy the result behind the header (a second write of
everything), the writer reserves room for the largest header the file can
need, writes each blob in place behind it, and writes the real header last,
padded with spaces to the reserved length (JSON allows them, and safetensors
pads its own headers so). The reserve costs a few bytes a tensor: each
number's widest decimal form.

A tensor larger than the window is read twice: once for its histogram and
checksum (the code table must be known before the first symbol is coded),
once to code it. Its raw section comes after the payload in the blob (v1
layout) and the payload's size is known only at the end, so the raw fields
go to an unnamed scratch file and are copied into place by the kernel.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import xxhash

from . import backends
from .backends import numpy_ref
from .background_writer import BackgroundWriter
from .codecs import model
from .codecs.encoded import (
    CODEC_CONST,
    CODEC_RAW,
    CODEC_TANS,
    EncodedTensor,
    check_lane_symbols,
    checksum,
)
from .codecs.layout import LANES, CodedGeometry, pack_lane_sizes, pad8
from .dtypes import FLOAT_LAYOUTS, ITEMSIZE
from .errors import FormatError
from .format import container
from .format.safetensors_header import Header, build_header
from .io_utils import error_about, pread_exact, pwrite_all
from .progress import NO_PROGRESS, Progress

# Source bytes read at a time. A tensor up to this size is read once.
WINDOW_BYTES = 256 << 20
# Source bytes coded a step at a time in a tensor larger than the window.
STEP_BYTES = 64 << 20
# Float tensors up to this size have their codec decided before the header
# is reserved (reading them twice costs little; a reserve they do not use
# would cost up to ~125 bytes each).
_DECIDED_EARLY_BYTES = 64 << 10
# No tans blob is shorter (its counts, then 32 lane sizes): a tensor of at
# most this many bytes is always stored raw, and its reserve is exact.
_SMALLEST_CODED_BLOB = 8 + 2 * LANES


def encode_file(src_fd: int, header: Header, out_fd: int, *, src: str, dst: str, backend=None,
                workers: int = 1, lane_symbols: int = model.DEFAULT_LANE_SYMBOLS,
                progress=None, version: int = container.FORMAT_VERSION,
                fsync: bool = True) -> int:
    """Write the floatzip form of the safetensors file open at ``src_fd``
    (its validated ``header``) to the empty file ``out_fd``. ``src`` and
    ``dst`` name them in errors. ``version``: the newest format version the
    file may use (1: readable by floatzip 0.1). ``fsync`` False: the caller
    will not fsync the output, so its ranges are not sent to the disk early.
    Returns the number of tensors."""
    def decided_early(entry) -> str | None:
        # Small float tensors are read here, to know which will stay raw
        # (most: their tables would cost more than coding saves) or be
        # constant, so that a file of many small tensors reserves no room
        # it will not use.
        layout = FLOAT_LAYOUTS[entry.dtype]
        if entry.nbytes > _DECIDED_EARLY_BYTES:
            return None
        data = np.empty(entry.nbytes, dtype=np.uint8)
        pread_exact(src_fd, data, header.data_start + entry.begin, src)
        bits = data.view(layout.storage)
        stats, varying = numpy_ref.statistics(bits, layout.width, model.histogram_bits(layout))
        if _is_constant(varying, bits.size, version):
            return CODEC_CONST
        if entry.nbytes <= _SMALLEST_CODED_BLOB or model.choose_coding(
                stats, layout, bits.size, varying=varying,
                first_value=int(bits[0]) if bits.size else 0, version=version,
                lane_symbols=lane_symbols) is None:
            return CODEC_RAW
        return None

    reserved = reserved_header_bytes(header, lane_symbols, decided_early, version)
    if reserved > container.MAX_HEADER_BYTES:
        # The source header is stored escaped inside this one, so a source
        # header near the limit can push this one over it.
        raise FormatError(f"{dst}: the floatzip header could take up to {reserved} bytes, over "
                          f"the {container.MAX_HEADER_BYTES}-byte limit of safetensors readers (the "
                          "source's metadata is too large); keep this file uncompressed")
    writer = _TensorWriter(src_fd, out_fd, src=src, dst=dst, backend=backend, workers=workers,
                           lane_symbols=lane_symbols, progress=progress or NO_PROGRESS,
                           version=version, writeback=fsync)
    try:
        position = 8 + reserved
        params, entries = {}, []
        for name, entry in header.tensors.items():
            tensor_params, nbytes = writer.write(name, entry, header.data_start + entry.begin,
                                                 position)
            params[name] = tensor_params
            entries.append((name, "U8", [nbytes], nbytes))
            position += nbytes
    finally:
        writer.close()
    text = build_header(container.floatzip_metadata(header.raw, params), entries)
    if len(text) > reserved:        # the reserve's arithmetic is wrong: never write such a file
        raise AssertionError(f"floatzip header of {len(text)} bytes exceeds its reserved "
                             f"{reserved}")
    text += b" " * (reserved - len(text))
    pwrite_all(out_fd, len(text).to_bytes(8, "little") + text, 0)
    os.ftruncate(out_fd, position)
    return len(entries)


def reserved_header_bytes(header: Header, lane_symbols: int, decided_early=None,
                          version: int = container.FORMAT_VERSION) -> int:
    """The longest floatzip header that the file can need: every tensor with
    its widest parameters (a blob is never larger than the tensor, which is
    stored raw otherwise) and every offset at the largest it can be.
    ``decided_early(entry)``, when given, may tell the codec a float tensor
    will have for sure ("raw" or "const"): its reserve is then exact."""
    total = header.data_bytes
    params, entries = {}, []
    for name, entry in header.tensors.items():
        layout = FLOAT_LAYOUTS.get(entry.dtype)
        bound = 8 * entry.nbytes if layout is not None else None
        if layout is None:      # stored raw, or const when every element is the same
            codec = CODEC_CONST if _may_be_constant(entry, version) else CODEC_RAW
        else:
            codec = decided_early(entry) if decided_early else None
        if codec is not None:
            worst = container.tensor_params_of(codec, "0" * 16, entry.nbytes, bound)
        else:       # coded, constant or raw: const's and raw's parameters are shorter
            widest = CodedGeometry(count=entry.nbytes // layout.storage.itemsize,
                                   width=layout.width, symbol_bits=12, table_log=12,
                                   first_symbol=4095, table_symbols=4096,
                                   lane_symbols=lane_symbols, payload_bytes=entry.nbytes,
                                   **({} if version < 2 else dict(
                                       sign_in_symbol=1, dropped_bits=layout.mantissa_bits,
                                       dropped_value=(1 << layout.mantissa_bits) - 1,
                                       lane_size_bits=15)))
            worst = container.tensor_params_of(CODEC_TANS, "0" * 16, widest, bound)
        params[name] = worst
        entries.append((name, "U8", [entry.nbytes], 0))
    text = build_header(container.floatzip_metadata(header.raw, params), entries)
    # build_header wrote offsets [0, 0] for every entry: widen them to the
    # largest offset, whose decimal form is the longest any can take.
    widest = 2 * (len(str(total)) - 1) * len(entries)
    return pad8(len(text) + widest)


class _TensorWriter:
    """Codes tensors one by one into their place in the output file."""

    def __init__(self, src_fd: int, out_fd: int, *, src: str, dst: str, backend, workers: int,
                 lane_symbols: int, progress: Progress, version: int, writeback: bool):
        self._version = version
        self._progress = progress
        self._src_fd, self._out_fd = src_fd, out_fd
        self._src, self._dst = src, dst
        self._impl = backends.select(backend, encode=True)
        self._workers = workers
        self._lane_symbols = lane_symbols
        self._window = None
        self._scratch = None
        self._writer = BackgroundWriter(out_fd, writeback=writeback)

    def close(self) -> None:
        self._writer.close()
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None

    def _read(self, offset: int, nbytes: int) -> np.ndarray:
        """``nbytes`` source bytes from ``offset`` into the reused window."""
        if self._window is None or self._window.size < nbytes:
            self._window = np.empty(max(nbytes, 8), dtype=np.uint8)
        view = self._window[:nbytes]
        pread_exact(self._src_fd, view, offset, self._src)
        return view

    def write(self, name: str, entry, src_offset: int, dst_offset: int) -> tuple[dict, int]:
        """Code one tensor into the output at ``dst_offset``; returns its
        parameters and its blob's size."""
        layout = FLOAT_LAYOUTS.get(entry.dtype)
        if layout is None:
            if not _may_be_constant(entry, self._version):
                return self._write_raw(entry.nbytes, src_offset, dst_offset, None), entry.nbytes
            # Small enough to read whole: look for one repeated element first.
            data = self._read(src_offset, entry.nbytes)
            params = container.tensor_params_of(CODEC_RAW, f"{checksum(data):016x}",
                                                entry.nbytes, None)
            elements = data.view(f"u{ITEMSIZE[entry.dtype]}")
            if np.all(elements == elements[0]):
                return self._write_const(entry.nbytes, data[:elements.itemsize].copy(), params,
                                         dst_offset)
            return self._write_raw(entry.nbytes, src_offset, dst_offset, params,
                                   in_window=True), entry.nbytes
        count = entry.nbytes // layout.storage.itemsize
        whole = entry.nbytes <= WINDOW_BYTES
        digest = xxhash.xxh3_64()
        top = model.histogram_bits(layout)
        stats = np.zeros(2 << top, dtype=np.int64)
        varying, first_value, first_element = 0, None, None
        for start, size in _steps(entry.nbytes, WINDOW_BYTES):
            data = self._read(src_offset + start, size)
            digest.update(data)
            values = data.view(layout.storage)
            part, part_varying = self._impl.statistics(values, layout.width, top,
                                                       workers=self._workers)
            stats += part
            if values.size:
                if first_value is None:
                    first_value, first_element = int(values[0]), data[:values.itemsize].copy()
                varying |= part_varying | (int(values[0]) ^ first_value)
        bound = model.model_bound_bits(stats, layout, count, varying=varying,
                                       version=self._version)
        params = container.tensor_params_of(
            CODEC_RAW, f"{digest.intdigest():016x}", entry.nbytes, int(round(bound)))
        if _is_constant(varying, count, self._version):
            return self._write_const(entry.nbytes, first_element, params, dst_offset)
        choice = model.choose_coding(stats, layout, count, varying=varying,
                                     first_value=first_value or 0, version=self._version,
                                     lane_symbols=self._lane_symbols)
        if choice is not None:
            coded = self._write_coded(name, entry, layout, choice, params, src_offset,
                                      dst_offset, whole)
            if coded is not None:
                return coded
        self._write_raw(entry.nbytes, src_offset, dst_offset, params, whole)
        return params, entry.nbytes

    def _write_const(self, nbytes: int, element: np.ndarray, raw_params: dict,
                     dst_offset: int) -> tuple[dict, int]:
        """A tensor whose values are all ``element`` (its bytes, from the
        same read that the checksum and the statistics saw)."""
        pwrite_all(self._out_fd, element, dst_offset)
        self._progress.advance(nbytes)
        params = container.tensor_params_of(CODEC_CONST, raw_params["xxh3"], None,
                                            raw_params.get(container.BOUND_FIELD))
        return params, element.size

    def _write_raw(self, nbytes: int, src_offset: int, dst_offset: int, params: dict | None,
                   in_window: bool = False) -> dict:
        """Copy the tensor's bytes as they are; its parameters (made here,
        with the checksum, when ``params`` is None). Bytes read again are
        checked against ``params``' checksum; those still in the window
        (``in_window``) are the very bytes it was computed from."""
        hashed = not in_window or params is None
        digest = xxhash.xxh3_64()
        for start, size in _steps(nbytes, WINDOW_BYTES):
            data = self._window[:size] if in_window else self._read(src_offset + start, size)
            if hashed:
                digest.update(data)
            pwrite_all(self._out_fd, data, dst_offset + start)
            self._progress.advance(size)
        if params is None:
            return container.tensor_params_of(CODEC_RAW, f"{digest.intdigest():016x}", nbytes,
                                              None)
        if hashed and f"{digest.intdigest():016x}" != params["xxh3"]:
            raise self._changed()
        return params

    def _write_coded(self, name, entry, layout, choice, raw_params, src_offset, dst_offset,
                     in_window) -> tuple[dict, int] | None:
        """Code the tensor as ``choice`` says; None (having written nothing
        that counts) when the blob would not be smaller than the tensor."""
        count = entry.nbytes // layout.storage.itemsize
        itemsize = layout.storage.itemsize
        group = LANES * choice.lane_symbols
        # Where the sections go: the payload's size is known only once it is
        # coded, and nothing before it depends on it.
        planned = model.geometry_for(choice, layout, count, payload_bytes=0)
        lane_sizes = np.zeros(planned.lanes, dtype="<u2")
        payload_at = planned.sections()["payload"][0]
        args = planned.encode_args()
        # A tensor read whole is coded in one step; a larger one in steps of
        # STEP_BYTES, whose coded output (up to ~2x its size, with the writer
        # holding the previous step's) stays well inside the memory bound.
        step_bytes = WINDOW_BYTES if in_window else STEP_BYTES
        step_values = max(1, step_bytes // (group * itemsize)) * group
        digest = xxhash.xxh3_64()
        payload_bytes, raw_parts, raw_bytes = 0, [], 0
        spill = entry.nbytes > WINDOW_BYTES       # raw fields of several steps: to scratch
        if spill:
            scratch = self._scratch_file()
        for v0 in range(0, count, step_values):
            v1 = min(v0 + step_values, count)
            data = (self._window[v0 * itemsize:v1 * itemsize] if in_window
                    else self._read(src_offset + v0 * itemsize, (v1 - v0) * itemsize))
            if not in_window:
                digest.update(data)
            sizes, payload, raw = self._impl.encode(data.view(layout.storage), args,
                                                    choice.counts, workers=self._workers)
            lane_sizes[v0 // group * LANES:v0 // group * LANES + sizes.size] = sizes
            # encode returns new arrays: the writer may keep them while the
            # next step is coded.
            self._writer.write_at(payload, dst_offset + payload_at + payload_bytes)
            payload_bytes += payload.size
            if spill:
                self._writer.write_at(raw, raw_bytes, fd=scratch.fileno(), writeback=False)
            else:
                raw_parts.append(raw)
            raw_bytes += raw.size
            self._progress.advance((v1 - v0) * itemsize)
        self._writer.flush()
        if not in_window and f"{digest.intdigest():016x}" != raw_params["xxh3"]:
            raise self._changed()
        geometry = model.geometry_for(choice, layout, count, payload_bytes)
        if geometry.blob_bytes >= entry.nbytes:
            self._progress.advance(-entry.nbytes)      # it goes through again, raw
            return None
        sections = geometry.sections()
        raw_at = sections["raw"][0]
        out = self._out_fd
        pwrite_all(out, np.asarray(choice.counts, dtype="<u2"),
                   dst_offset + sections["counts"][0])
        pwrite_all(out, pack_lane_sizes(lane_sizes, geometry.lane_size_bits),
                   dst_offset + sections["lane_sizes"][0])
        if spill:
            _copy_range(scratch.fileno(), 0, out, dst_offset + raw_at, raw_bytes, self._dst)
        else:       # written while the next tensor is read and coded
            self._writer.write_at(raw_parts, dst_offset + raw_at)
        zeros = np.zeros(8, dtype=np.uint8)
        for key in ("counts", "lane_sizes", "payload", "raw"):     # the padding after each
            end = sum(sections[key])
            pwrite_all(out, zeros[:pad8(end) - end], dst_offset + end)
        params = container.tensor_params_of(CODEC_TANS, raw_params["xxh3"], geometry,
                                            raw_params[container.BOUND_FIELD])
        return params, geometry.blob_bytes

    def _scratch_file(self):
        """An unnamed file beside the output (same file system: the kernel
        can copy from it without a round trip through user space)."""
        if self._scratch is None:
            try:
                self._scratch = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(self._dst)))
            except OSError as exc:
                raise error_about(exc, self._dst) from None
        return self._scratch

    def _changed(self) -> FormatError:
        return FormatError(f"{self._src}: changed while it was being compressed (its bytes "
                           "differ between two reads); compress it again once nothing writes it")


def _may_be_constant(entry, version: int) -> bool:
    """Whether a tensor of a dtype floatzip does not entropy-code is read
    whole to see if it is constant (codec const): whole-byte elements of up
    to 8 bytes, two or more of them, in one window (the larger ones are
    copied as they come)."""
    itemsize = ITEMSIZE.get(entry.dtype)
    return (version >= 2 and itemsize in (1, 2, 4, 8) and entry.nbytes > itemsize
            and entry.nbytes <= WINDOW_BYTES)


def _is_constant(varying: int, count: int, version: int) -> bool:
    """Codec const pays for tensors of two or more equal values (format 2)."""
    return version >= 2 and varying == 0 and count > 1


def _steps(total: int, step: int):
    """(start, size) of the pieces of [0, total) of at most ``step`` bytes."""
    return [(start, min(step, total - start)) for start in range(0, total, step)]


def _copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, nbytes: int,
                where: str) -> None:
    """Copy bytes between two files inside the kernel where it can
    (copy_file_range), else through a buffer."""
    done = 0
    try:
        while done < nbytes:
            got = os.copy_file_range(src_fd, dst_fd, nbytes - done, src_offset + done,
                                     dst_offset + done)
            if got == 0:
                break
            done += got
    except OSError:
        pass                        # not supported here: copy the rest through memory
    buffer = np.empty(min(nbytes - done, 16 << 20), dtype=np.uint8) if done < nbytes else None
    while done < nbytes:
        piece = buffer[:min(buffer.size, nbytes - done)]
        pread_exact(src_fd, piece, src_offset + done, where)
        pwrite_all(dst_fd, piece, dst_offset + done)
        done += piece.size


def encode_tensor(data: np.ndarray, dtype: str, shape, *, backend=None, workers: int = 1,
                  table_log: int = model.DEFAULT_TABLE_LOG,
                  lane_symbols: int = model.DEFAULT_LANE_SYMBOLS,
                  version: int = container.FORMAT_VERSION) -> EncodedTensor:
    """Encode one tensor given as its little-endian bytes (uint8, any shape).
    An EncodedTensor is raw or tans (a constant tensor comes back tans-coded:
    codec const exists only in files); ``version`` as in encode_file.
    ``lane_symbols`` is the symbols per lane (format field K): fewer give a
    GPU more lanes to decode in parallel, for ~28 bits more per lane."""
    check_lane_symbols(lane_symbols)
    raw_bytes = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    shape = tuple(int(d) for d in shape)
    digest = checksum(raw_bytes)
    layout = FLOAT_LAYOUTS.get(dtype)
    bound = None
    if layout is not None:
        impl = backends.select(backend, encode=True)
        bits = raw_bytes.view(layout.storage)
        stats, varying = impl.statistics(bits, layout.width, model.histogram_bits(layout),
                                         workers=workers)
        bound = int(round(model.model_bound_bits(stats, layout, bits.size, varying=varying,
                                                 version=version)))
        choice = model.choose_coding(stats, layout, bits.size, varying=varying,
                                     first_value=int(bits[0]) if bits.size else 0,
                                     version=version, table_log=table_log,
                                     lane_symbols=lane_symbols)
        if choice is not None:
            args = model.geometry_for(choice, layout, bits.size, 0).encode_args()
            lane_sizes, payload, raw = impl.encode(bits, args, choice.counts, workers=workers)
            geometry = model.geometry_for(choice, layout, bits.size, int(payload.size))
            if geometry.blob_bytes < raw_bytes.size:
                return EncodedTensor(dtype, shape, CODEC_TANS, digest, geometry,
                                     choice.counts, lane_sizes, payload, raw, bound)
    return EncodedTensor(dtype, shape, CODEC_RAW, digest, raw=raw_bytes, bound_bits=bound)
