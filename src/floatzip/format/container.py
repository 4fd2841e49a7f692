"""floatzip file format v1: a safetensors file whose tensors are coded blobs.

See docs/FORMAT.md. The file's ``__metadata__`` holds
  * ``floatzip.version``: "1";
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

from ..codecs import tans
from ..codecs.encoded import CODEC_RAW, CODEC_TANS, EncodedTensor, checksum
from ..codecs.layout import MAX_LANE_SYMBOLS, CodedGeometry, pad8
from ..dtypes import FLOAT_LAYOUTS
from ..errors import CorruptDataError, FormatError, UnsupportedError
from ..io_utils import atomic_output, error_about, pread_exact
from .safetensors_header import (
    MAX_HEADER_BYTES,
    build_header,
    parse_header_bytes,
    read_header,
)

FORMAT_VERSION = 1
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
_TANS_FIELDS = ("codec", "symbol_bits", "table_log", "first_symbol", "table_symbols",
                "lane_symbols", "payload_bytes", "xxh3")


# -- writing -----------------------------------------------------------------

def tensor_params(enc: EncodedTensor) -> dict:
    return tensor_params_of(enc.codec, f"{enc.checksum:016x}", enc.geometry, enc.bound_bits)


def tensor_params_of(codec: str, xxh3: str, geometry: CodedGeometry | None,
                     bound_bits: int | None) -> dict:
    """A tensor's coding parameters (section 3), in the order written."""
    if codec == CODEC_RAW:
        params = {"codec": CODEC_RAW, "xxh3": xxh3}
    else:
        g = geometry
        params = {"codec": CODEC_TANS, "symbol_bits": g.symbol_bits, "table_log": g.table_log,
                  "first_symbol": g.first_symbol, "table_symbols": g.table_symbols,
                  "lane_symbols": g.lane_symbols, "payload_bytes": g.payload_bytes,
                  "xxh3": xxh3}
    if bound_bits is not None:
        params[BOUND_FIELD] = bound_bits
    return params


def blob_parts(enc: EncodedTensor) -> list[np.ndarray]:
    """The blob of a tensor as a list of byte arrays to write in order."""
    if enc.codec == CODEC_RAW:
        return [np.asarray(enc.raw, dtype=np.uint8)]
    parts = []
    for section in (enc.counts.astype("<u2"), enc.lane_sizes.astype("<u2"), enc.payload, enc.raw):
        data = np.ascontiguousarray(section).view(np.uint8).reshape(-1)
        parts.append(data)
        parts.append(np.zeros(pad8(data.size) - data.size, dtype=np.uint8))
    return parts


def floatzip_metadata(source_header: bytes, params: dict[str, dict]) -> dict[str, str]:
    return {
        KEY_VERSION: str(FORMAT_VERSION),
        KEY_SOURCE_HEADER: source_header.decode("utf-8"),
        KEY_TENSORS: json.dumps(params, separators=(",", ":")),
        KEY_SOURCE_CHECKSUM: _hex_checksum(source_header),
    }


def _hex_checksum(data: bytes) -> str:
    return f"{checksum(np.frombuffer(data, dtype=np.uint8)):016x}"


def write_file(dst, source_header: bytes, tensors, mode: int | None = None, *,
               overwrite: bool = True) -> int:
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
        with atomic_output(dst, mode, overwrite=overwrite) as out:
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
    geometry: CodedGeometry | None


@dataclass(frozen=True)
class StoredSections:
    """What :meth:`FloatzipFile.sections` returns: a stored tensor's
    validated small parts, and the file offsets of its large ones."""
    stored: StoredTensor
    checksum: int                       # XXH3-64 of the original bytes
    geometry: CodedGeometry | None      # None: stored raw, the blob is the bytes
    counts: np.ndarray | None           # tans: <u2[table_symbols]
    lane_sizes: np.ndarray | None       # tans: <u2[lanes]
    payload_begin: int                  # absolute file offsets (raw codec: the blob's)
    raw_begin: int


class FloatzipFile:
    """An open, validated floatzip file. Tensors are read lazily from a
    memory map, one at a time."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
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
        if version != str(FORMAT_VERSION):
            raise UnsupportedError(
                f"{where}: floatzip format version {version!r} is not supported by this "
                f"floatzip (reads version {FORMAT_VERSION}); upgrade floatzip")
        unknown = sorted(k for k in meta if k.startswith(FLOATZIP_PREFIX) and k not in KNOWN_KEYS)
        if unknown:
            raise FormatError(f"{where}: unknown floatzip metadata key {unknown[0]!r} (a "
                              "damaged key name?): version 1 defines "
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
            geometry = _validate_params(name, params[name], source, stored.nbytes, where)
            self.tensors[name] = StoredTensor(name, source, params[name],
                                              header.data_start + stored.begin, stored.nbytes,
                                              geometry)
        self._map = None

    # Memory map on first use, so that opening a file to list it costs nothing.
    def _bytes(self) -> np.ndarray:
        if self._map is None:
            if self.header.data_start + self.header.data_bytes == 0:
                self._map = np.zeros(0, dtype=np.uint8)
            else:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def encoded(self, name: str, *, mapped: bool = True) -> EncodedTensor:
        """The stored form of one tensor, with every size and the code table
        validated. ``mapped``: its sections are views of the memory-mapped
        file (zero-copy, lazy); otherwise the blob is read into memory."""
        t = self._get(name)
        if mapped:
            blob = self._bytes()[t.blob_begin:t.blob_begin + t.blob_bytes]
        else:
            blob = read_range(self.path, t.blob_begin, t.blob_bytes)
        parts = self.sections(name, blob=blob)
        if parts.geometry is None:
            return EncodedTensor(t.source.dtype, t.source.shape, CODEC_RAW, parts.checksum,
                                 raw=blob)
        sec = parts.geometry.sections()
        payload = blob[sec["payload"][0]:sec["payload"][0] + sec["payload"][1]]
        raw = blob[sec["raw"][0]:sec["raw"][0] + sec["raw"][1]]
        return EncodedTensor(t.source.dtype, t.source.shape, CODEC_TANS, parts.checksum,
                             parts.geometry, parts.counts, parts.lane_sizes, payload, raw)

    def sections(self, name: str, *, fd: int | None = None, blob=None) -> "StoredSections":
        """The small, validated parts of one stored tensor (its counts and
        lane sizes, the padding checked) and where its payload and raw
        section lie, reading only those small parts: through ``fd`` (an
        open descriptor of this file) or from ``blob`` (the whole blob in
        memory), else through a descriptor opened here. Large tensors are
        then decoded a range of groups at a time (floatzip.decode)."""
        t = self._get(name)
        checksum = int(t.params["xxh3"], 16)
        g = t.geometry
        if g is None:
            return StoredSections(t, checksum, None, None, None, t.blob_begin, t.blob_begin)
        if blob is None and fd is None:
            with open(self.path, "rb", buffering=0) as f:
                return self.sections(name, fd=f.fileno())
        sec = g.sections()

        def read(offset, length, dtype="<u1"):
            if blob is not None:
                return np.asarray(blob[offset:offset + length]).view(dtype)
            out = np.empty(length, dtype=np.uint8)
            pread_exact(fd, out, t.blob_begin + offset, self.path)
            return out.view(dtype)

        where = f"{self.path}: tensor {name!r}"
        padding = np.concatenate([read(off + length, pad8(off + length) - off - length)
                                  for off, length in (sec[k] for k in ("counts", "lane_sizes",
                                                                         "payload", "raw"))])
        if padding.any():
            raise FormatError(f"{where}: non-zero padding between blob sections")
        counts = read(*sec["counts"], "<u2")
        _validate_counts(counts, g, where)
        lane_sizes = read(*sec["lane_sizes"], "<u2")
        total = int(lane_sizes.sum(dtype=np.int64))
        if total != g.payload_bytes:
            raise FormatError(f"{where}: lane sizes add up to {total} bytes but payload_bytes "
                              f"is {g.payload_bytes}")
        longest = (g.table_log * (g.lane_symbols + 1) + 7) // 8
        if lane_sizes.size and int(lane_sizes.max()) > longest:
            lane = int(np.argmax(lane_sizes))
            raise FormatError(f"{where}: lane {lane} claims {int(lane_sizes[lane])} bytes; a lane of "
                              f"{g.lane_symbols} symbols holds at most {longest}")
        spare = (-g.count * g.raw_bits) % 8
        if spare and sec["raw"][1]:
            last = read(sec["raw"][0] + sec["raw"][1] - 1, 1)
            if int(last[0]) >> (8 - spare):
                raise FormatError(f"{where}: non-zero unused bits at the end of the raw section")
        return StoredSections(t, checksum, g, counts, lane_sizes,
                              t.blob_begin + sec["payload"][0], t.blob_begin + sec["raw"][0])

    def _get(self, name: str) -> StoredTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None


def _validate_params(name: str, params, source, blob_bytes: int, where: str) -> CodedGeometry | None:
    def bad(msg):
        return FormatError(f"{where}: tensor {name!r}: {msg}")
    if not isinstance(params, dict):
        raise bad("coding parameters are not a JSON object")
    codec = params.get("codec")
    xxh = params.get("xxh3")
    if BOUND_FIELD in params:
        bound = params[BOUND_FIELD]
        if type(bound) is not int or not 0 <= bound <= 8 * source.nbytes:
            raise bad(f"'{BOUND_FIELD}' must be an integer in [0, {8 * source.nbytes}], found {bound!r}")
        params = {k: v for k, v in params.items() if k != BOUND_FIELD}
    if not (isinstance(xxh, str) and len(xxh) == 16 and all(c in "0123456789abcdef" for c in xxh)):
        raise bad(f"'xxh3' must be 16 lowercase hex digits, found {xxh!r}")
    if codec == CODEC_RAW:
        if set(params) != {"codec", "xxh3"}:
            raise bad(f"unexpected fields for codec raw: {sorted(set(params) - {'codec', 'xxh3'})}")
        if blob_bytes != source.nbytes:
            raise bad(f"raw blob is {blob_bytes} bytes, the tensor needs {source.nbytes}")
        return None
    if codec != CODEC_TANS:
        raise UnsupportedError(f"{where}: tensor {name!r}: unknown codec {codec!r}; this "
                               "floatzip knows 'tans' and 'raw' (upgrade floatzip?)")
    if set(params) != set(_TANS_FIELDS):
        raise bad(f"codec tans needs exactly the fields {list(_TANS_FIELDS)}, found {sorted(params)}")
    for key in _TANS_FIELDS[1:-1]:
        if type(params[key]) is not int:
            raise bad(f"'{key}' must be an integer, found {params[key]!r}")
    layout = FLOAT_LAYOUTS.get(source.dtype)
    if layout is None:
        raise bad(f"codec tans is not defined for dtype {source.dtype}")
    limits = {
        "symbol_bits": (1, min(layout.width, tans.MAX_SYMBOL_BITS)),
        "table_log": (tans.MIN_TABLE_LOG, tans.MAX_TABLE_LOG),
        "lane_symbols": (1, MAX_LANE_SYMBOLS),
        "table_symbols": (1, 1 << params["symbol_bits"] if isinstance(params["symbol_bits"], int) else 1),
        "first_symbol": (0, (1 << tans.MAX_SYMBOL_BITS) - 1),
        "payload_bytes": (0, 1 << 62),
    }
    for key, (lo, hi) in limits.items():
        if not lo <= params[key] <= hi:
            raise bad(f"'{key}' = {params[key]} is outside [{lo}, {hi}]")
    if params["first_symbol"] + params["table_symbols"] > 1 << params["symbol_bits"]:
        raise bad(f"symbols {params['first_symbol']}..{params['first_symbol'] + params['table_symbols'] - 1} "
                  f"do not fit in {params['symbol_bits']} bits")
    count = int(np.prod(source.shape, dtype=object)) if source.shape else 1
    geometry = CodedGeometry(count=count, width=layout.width, symbol_bits=params["symbol_bits"],
                             table_log=params["table_log"], first_symbol=params["first_symbol"],
                             table_symbols=params["table_symbols"],
                             lane_symbols=params["lane_symbols"],
                             payload_bytes=params["payload_bytes"])
    longest = geometry.lanes * ((geometry.table_log * (geometry.lane_symbols + 1) + 7) // 8)
    if geometry.payload_bytes > longest:
        raise bad(f"payload_bytes {geometry.payload_bytes} exceeds the most {longest} that "
                  f"{geometry.lanes} lanes can hold")
    if blob_bytes != geometry.blob_bytes:
        raise bad(f"blob is {blob_bytes} bytes but its parameters need {geometry.blob_bytes}")
    return geometry


def _validate_counts(counts: np.ndarray, g: CodedGeometry, where: str) -> None:
    total = int(counts.sum(dtype=np.int64))
    if total != 1 << g.table_log:
        raise FormatError(f"{where}: symbol counts add up to {total}, expected 2^{g.table_log} "
                          f"= {1 << g.table_log}")
