"""The floatzip file: a safetensors file whose tensors are coded blobs.

See docs/FORMAT.md. The file's ``__metadata__`` holds
  * ``floatzip.version``: "1" or "2", the highest its tensors need;
  * ``floatzip.source_header``: the original file's header JSON, verbatim,
    so decompression restores the original file byte for byte;
  * ``floatzip.tensors``: JSON object, tensor name -> coding parameters;
  * ``floatzip.source_header_xxh3`` (optional: older files lack it): XXH3-64
    of the original header, so that damage to it cannot go unnoticed.
Each tensor is stored as a U8 tensor of the same name holding its blob.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from ..codecs import const_codec, registry
from ..codecs.base import Codec, Opened
from ..codecs.encoded import CODEC_CONST, CODEC_RAW, CODEC_TANS, EncodedTensor, checksum
from ..codecs.layout import CodedGeometry, pack_lane_sizes, pad8
from ..errors import CorruptDataError, FormatError, UnsupportedError
from ..io_utils import atomic_output, error_about, pread_exact
from .safetensors_header import (
    MAX_HEADER_BYTES,
    build_header,
    parse_header_bytes,
    read_header,
)

FORMAT_VERSION = 2          # the newest version this floatzip reads and writes
READABLE_VERSIONS = ("1", "2")
KEY_VERSION = "floatzip.version"
KEY_SOURCE_HEADER = "floatzip.source_header"
KEY_TENSORS = "floatzip.tensors"
KEY_SOURCE_CHECKSUM = "floatzip.source_header_xxh3"
KNOWN_KEYS = (KEY_VERSION, KEY_SOURCE_HEADER, KEY_TENSORS, KEY_SOURCE_CHECKSUM)
FLOATZIP_PREFIX = "floatzip."


def is_floatzip_metadata(metadata: dict | None) -> bool:
    """Whether a safetensors file's metadata makes it a floatzip file (and,
    without a valid version, a damaged one rather than a plain file): any
    key of floatzip's prefix does."""
    return bool(metadata) and any(key.startswith(FLOATZIP_PREFIX) for key in metadata)


# Informative, optional: the order-0 entropy bound of the tensor (its exponent
# at its entropy, every other bit raw) in bits, shown by `floatzip info`.
BOUND_FIELD = "bound_bits"


# -- writing -----------------------------------------------------------------

def tensor_params(enc: EncodedTensor) -> dict:
    layout = enc.geometry if enc.codec == CODEC_TANS else enc.original_bytes
    return tensor_params_of(enc.codec, f"{enc.checksum:016x}", layout, enc.bound_bits)


def tensor_params_of(codec: str, xxh3: str, layout, bound_bits: int | None) -> dict:
    """A tensor's coding parameters (section 3), in the order written: the
    codec, its own fields, the checksum, the informative bound."""
    params = {"codec": codec, **registry.get(codec).params(layout), "xxh3": xxh3}
    if bound_bits is not None:
        params[BOUND_FIELD] = bound_bits
    return params


def blob_parts(enc: EncodedTensor) -> list[np.ndarray]:
    """The blob of a tensor as a list of byte arrays to write in order."""
    if enc.codec == CODEC_RAW:
        return [np.asarray(enc.raw, dtype=np.uint8)]
    parts = []
    lane_sizes = pack_lane_sizes(enc.lane_sizes, enc.geometry.lane_size_bits)
    for section in (enc.counts.astype("<u2"), lane_sizes, enc.payload, enc.raw):
        data = np.ascontiguousarray(section).view(np.uint8).reshape(-1)
        parts.append(data)
        parts.append(np.zeros(pad8(data.size) - data.size, dtype=np.uint8))
    return parts


def format_version_of(params: dict[str, dict]) -> int:
    """The lowest version that describes every tensor: a file that needs
    nothing of format 2 stays readable by floatzip 0.1."""
    def needs(p: dict) -> int:
        if p["codec"] not in registry.ids():
            return FORMAT_VERSION       # a codec this floatzip does not know: the newest
        return registry.get(p["codec"]).format_version(p)
    return max((needs(p) for p in params.values()), default=1)


def floatzip_metadata(source_header: bytes, params: dict[str, dict],
                      version: int | None = None) -> dict[str, str]:
    return {
        KEY_VERSION: str(format_version_of(params) if version is None else version),
        KEY_SOURCE_HEADER: source_header.decode("utf-8"),
        KEY_TENSORS: json.dumps(params, separators=(",", ":")),
        KEY_SOURCE_CHECKSUM: _hex_checksum(source_header),
    }


def _hex_checksum(data: bytes) -> str:
    return f"{checksum(np.frombuffer(data, dtype=np.uint8)):016x}"


def write_file(dst, source_header: bytes, tensors, mode: int | None = None) -> int:
    """Write a floatzip file from (name, EncodedTensor) pairs, atomically,
    with permission bits ``mode`` (default: the umask's). Blobs go to a
    scratch file as they come (memory stays near one tensor), then behind
    the header once all sizes are known. Returns the count."""
    params, entries = {}, []
    directory = os.path.dirname(os.path.abspath(dst))
    try:
        scratch_file = tempfile.TemporaryFile(dir=directory)
    except OSError as exc:
        raise error_about(exc, os.fspath(dst)) from None
    with scratch_file as scratch:
        for name, enc in tensors:
            nbytes = 0
            for part in blob_parts(enc):
                scratch.write(part.data)
                nbytes += part.size
            params[name] = tensor_params(enc)
            entries.append((name, "U8", [nbytes], nbytes))
        header = build_header(floatzip_metadata(source_header, params), entries)
        if len(header) > MAX_HEADER_BYTES:
            # The source header is stored escaped inside this one, so a source
            # header near the limit can push this one over it.
            raise FormatError(f"{dst}: the floatzip header would be {len(header)} bytes, over "
                              f"the {MAX_HEADER_BYTES}-byte limit of safetensors readers (the "
                              "source's metadata is too large); keep this file uncompressed")
        with atomic_output(dst, mode) as out:
            out.write(len(header).to_bytes(8, "little"))
            out.write(header)
            scratch.seek(0)
            shutil.copyfileobj(scratch, out, 16 << 20)
    return len(params)


def read_range(path: str, offset: int, nbytes: int) -> np.ndarray:
    """``nbytes`` bytes of a file from ``offset``, read into a new array."""
    out = np.empty(nbytes, dtype=np.uint8)
    with open(path, "rb", buffering=0) as f:
        pread_exact(f.fileno(), out, offset, path)
    return out


# -- reading -----------------------------------------------------------------

@dataclass(frozen=True)
class StoredTensor:
    """A tensor as a floatzip file stores it: where its blob lies and how it
    is coded. ``source`` describes the original tensor."""
    name: str
    source: "object"        # safetensors_header.TensorEntry of the original file
    params: dict
    blob_begin: int         # absolute offset of the blob in the floatzip file
    blob_bytes: int
    codec: Codec            # from the registry, by the "codec" field
    layout: object          # what the codec's parse made of its fields

    @property
    def geometry(self) -> CodedGeometry | None:
        """The geometry of a tans blob; None for other codecs."""
        return self.layout if isinstance(self.layout, CodedGeometry) else None


@dataclass(frozen=True)
class StoredSections:
    """What :meth:`FloatzipFile.sections` returns: a stored tensor, its
    checksum, and its blob opened by its codec (small parts read and
    checked)."""
    stored: StoredTensor
    checksum: int                       # XXH3-64 of the original bytes
    opened: Opened

    @property
    def geometry(self) -> CodedGeometry | None:
        return self.stored.geometry


class FloatzipFile:
    """An open, validated floatzip file. Tensors are read lazily from a
    memory map, one at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)        # as given: what errors name
        # What later reads open: the same file after the caller's chdir.
        self.opened_path = os.path.abspath(self.path)
        where = self.path
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                header = read_header(f, where, size)
        except OSError as exc:
            raise FormatError(f"{where}: cannot read file: {exc.strerror or exc}") from None
        meta = header.metadata or {}
        if KEY_VERSION not in meta:
            if is_floatzip_metadata(meta):
                raise FormatError(
                    f"{where}: floatzip metadata without '{KEY_VERSION}' (a damaged key "
                    "name?); fetch the file again, or compress the original again")
            raise FormatError(
                f"{where}: not a floatzip file (a safetensors file without "
                f"'{KEY_VERSION}' metadata); compress it first with 'floatzip compress'")
        version = meta[KEY_VERSION]
        if version not in READABLE_VERSIONS:
            raise UnsupportedError(
                f"{where}: floatzip format version {version!r} is not supported by this "
                f"floatzip (reads versions {', '.join(READABLE_VERSIONS)}); upgrade floatzip")
        self.version = int(version)
        unknown = sorted(k for k in meta if k.startswith(FLOATZIP_PREFIX) and k not in KNOWN_KEYS)
        if unknown:
            raise FormatError(f"{where}: unknown floatzip metadata key {unknown[0]!r} (a "
                              "damaged key name?): the format defines "
                              f"{', '.join(KNOWN_KEYS)}; fetch the file again")
        for key in (KEY_SOURCE_HEADER, KEY_TENSORS):
            if key not in meta:
                raise FormatError(f"{where}: floatzip metadata lacks '{key}'")
        self.header = header
        source_header = meta[KEY_SOURCE_HEADER].encode("utf-8")
        if KEY_SOURCE_CHECKSUM in meta:
            stored = meta[KEY_SOURCE_CHECKSUM]
            if not (isinstance(stored, str) and len(stored) == 16
                    and all(c in "0123456789abcdef" for c in stored)):
                raise FormatError(f"{where}: '{KEY_SOURCE_CHECKSUM}' must be 16 lowercase hex "
                                  f"digits, found {stored!r}")
            if _hex_checksum(source_header) != stored:
                raise CorruptDataError(
                    f"{where}: the original header it stores fails its xxh3-64 checksum "
                    f"(expected {stored}, got {_hex_checksum(source_header)}): the file is "
                    "damaged; compress the original again, or fetch the file again")
        self.source = parse_header_bytes(source_header, f"{where} (original header)")
        try:
            params = json.loads(meta[KEY_TENSORS])
        except json.JSONDecodeError as exc:
            raise FormatError(f"{where}: '{KEY_TENSORS}' is not valid JSON ({exc})") from None
        if not isinstance(params, dict):
            raise FormatError(f"{where}: '{KEY_TENSORS}' must be a JSON object")
        names = set(self.source.tensors)
        if set(params) != names or set(header.tensors) != names:
            missing = sorted(names ^ set(params) | names ^ set(header.tensors))
            raise FormatError(f"{where}: the original header, '{KEY_TENSORS}' and the stored "
                              f"tensors do not list the same names (differ on {missing[:5]})")
        self.tensors: dict[str, StoredTensor] = {}
        for name, source in self.source.tensors.items():
            stored = header.tensors[name]
            if stored.dtype != "U8" or len(stored.shape) != 1:
                raise FormatError(f"{where}: tensor {name!r}: stored as {stored.dtype} "
                                  f"{list(stored.shape)}, expected a 1-D U8 blob")
            codec, layout = _validate_params(name, params[name], source, stored.nbytes, where,
                                             self.version)
            self.tensors[name] = StoredTensor(name, source, params[name],
                                              header.data_start + stored.begin, stored.nbytes,
                                              codec, layout)
        self._map = None

    # Memory map on first use, so that opening a file to list it costs nothing.
    def _bytes(self) -> np.ndarray:
        if self._map is None:
            if self.header.data_start + self.header.data_bytes == 0:
                self._map = np.zeros(0, dtype=np.uint8)
            else:
                self._map = np.memmap(self.opened_path, dtype=np.uint8, mode="r")
        return self._map

    def encoded(self, name: str, *, mapped: bool = True) -> EncodedTensor:
        """The stored form of one raw or tans tensor, with every size and the
        code table validated. ``mapped``: its sections are views of the
        memory-mapped file (zero-copy, lazy); otherwise the blob is read into
        memory."""
        t = self._get(name)
        blob = self.blob(name, mapped=mapped)
        parts = self.sections(name, blob=blob)
        if t.codec.codec_id == CODEC_RAW:
            return EncodedTensor(t.source.dtype, t.source.shape, CODEC_RAW, parts.checksum,
                                 raw=blob)
        if t.codec.codec_id == CODEC_CONST:
            # No coded form in memory: the tensor itself, as raw (a constant
            # tensor is a bias or a norm weight, small next to the matrices).
            return EncodedTensor(t.source.dtype, t.source.shape, CODEC_RAW, parts.checksum,
                                 raw=const_codec.repeat(parts.opened.parts, t.source.nbytes))
        if t.codec.codec_id != CODEC_TANS:
            raise UnsupportedError(f"{self.path}: tensor {name!r}: codec "
                                   f"{t.codec.codec_id!r} has no EncodedTensor form")
        g, tables = t.layout, parts.opened.parts
        sec = g.sections()
        payload = blob[sec["payload"][0]:sec["payload"][0] + sec["payload"][1]]
        raw = blob[sec["raw"][0]:sec["raw"][0] + sec["raw"][1]]
        return EncodedTensor(t.source.dtype, t.source.shape, CODEC_TANS, parts.checksum,
                             g, tables.counts, tables.lane_sizes, payload, raw)

    def blob(self, name: str, *, mapped: bool = True) -> np.ndarray:
        """One tensor's blob: a view of the memory-mapped file, or read."""
        t = self._get(name)
        if mapped:
            return self._bytes()[t.blob_begin:t.blob_begin + t.blob_bytes]
        return read_range(self.opened_path, t.blob_begin, t.blob_bytes)

    def sections(self, name: str, *, fd: int | None = None, blob=None) -> StoredSections:
        """One stored tensor opened by its codec: its small parts (tables,
        sizes) read and checked, through ``fd`` (an open descriptor of this
        file) or from ``blob`` (the whole blob in memory), else through a
        descriptor opened here. Large tensors are then decoded a step at a
        time (floatzip.decode)."""
        t = self._get(name)
        if blob is None and fd is None:
            with open(self.opened_path, "rb", buffering=0) as f:
                return self.sections(name, fd=f.fileno())
        read = blob_reader(blob) if blob is not None else self.file_reader(name, fd)
        opened = t.codec.open(t.layout, read, f"{self.path}: tensor {name!r}")
        return StoredSections(t, int(t.params["xxh3"], 16), opened)

    def file_reader(self, name: str, fd: int):
        """A codec Read of one tensor's blob through ``fd``."""
        begin = self._get(name).blob_begin

        def read(offset: int, length: int, out=None) -> np.ndarray:
            out = np.empty(length, dtype=np.uint8) if out is None else out
            pread_exact(fd, out, begin + offset, self.path)
            return out
        return read

    def _get(self, name: str) -> StoredTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None


def blob_reader(blob: np.ndarray):
    """A codec Read of a blob held in memory (views, no copies)."""
    def read(offset: int, length: int, out=None) -> np.ndarray:
        return blob[offset:offset + length]
    return read


def _validate_params(name: str, params, source, blob_bytes: int, where: str, version: int):
    """(codec, layout) of one tensor: the checks every codec shares here,
    its own by the codec."""
    def bad(msg):
        return FormatError(f"{where}: tensor {name!r}: {msg}")
    if not isinstance(params, dict):
        raise bad("coding parameters are not a JSON object")
    xxh = params.get("xxh3")
    if BOUND_FIELD in params:
        bound = params[BOUND_FIELD]
        if type(bound) is not int or not 0 <= bound <= 8 * source.nbytes:
            raise bad(f"'{BOUND_FIELD}' must be an integer in [0, {8 * source.nbytes}], found {bound!r}")
    if not (isinstance(xxh, str) and len(xxh) == 16 and all(c in "0123456789abcdef" for c in xxh)):
        raise bad(f"'xxh3' must be 16 lowercase hex digits, found {xxh!r}")
    codec = registry.get(params.get("codec"), f"{where}: tensor {name!r}")
    fields = {k: v for k, v in params.items() if k not in ("codec", "xxh3", BOUND_FIELD)}
    needs = codec.format_version(fields)
    if needs > version:
        raise bad(f"codec {codec.codec_id!r} with fields {sorted(fields)} needs format version "
                  f"{needs}, but the file declares version {version} (a damaged file?)")
    return codec, codec.parse(fields, source.dtype, source.shape, source.nbytes, blob_bytes, bad)
