"""Strict reading and writing of safetensors headers.

safetensors: 8-byte little-endian header length N, N bytes of UTF-8 JSON
(an object of tensor entries plus an optional "__metadata__" object of
strings), then the data buffer. Every tensor is a byte range of the buffer;
the ranges cover it with no holes and no overlap.

Everything is checked before anything is allocated or decoded.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..dtypes import BITS, tensor_bytes
from ..errors import FormatError, UnsupportedError

MAX_HEADER_BYTES = 100 * 1024 * 1024     # the limit the safetensors library applies


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int          # offset in the data buffer
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    raw: bytes                      # the header JSON bytes exactly as in the file
    metadata: dict[str, str] | None
    tensors: dict[str, TensorEntry] # in file order (by data offset)

    @property
    def data_start(self) -> int:
        return 8 + len(self.raw)

    @property
    def data_bytes(self) -> int:
        return max((t.end for t in self.tensors.values()), default=0)


def parse_header_bytes(raw: bytes, where: str) -> Header:
    """Parse and validate header JSON bytes. ``where`` names the file in errors."""
    try:
        doc = json.loads(raw.decode("utf-8"))
        # A lone surrogate escape ("\ud800") is valid JSON but no UTF-8
        # string: safetensors refuses it, and so does writing it back.
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{where}: header is not valid UTF-8 JSON ({exc})") from None
    except (RecursionError, ValueError) as exc:     # nesting too deep, an integer too long
        raise FormatError(f"{where}: header is not JSON safetensors accepts "
                          f"({type(exc).__name__}: {str(exc)[:100]})") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: header is not a JSON object")
    metadata = doc.pop("__metadata__", None)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise FormatError(f"{where}: __metadata__ must map strings to strings")
    entries = []
    for name, info in doc.items():
        entries.append(_parse_entry(name, info, where))
    entries.sort(key=lambda e: (e.begin, e.end))
    position = 0
    for e in entries:
        if e.begin != position:
            kind = "overlaps the previous tensor" if e.begin < position else "leaves a hole before it"
            raise FormatError(f"{where}: tensor {e.name!r}: data_offsets [{e.begin}, {e.end}] {kind} "
                              f"(expected it to start at {position})")
        position = e.end
    return Header(raw, metadata, {e.name: e for e in entries})


def _parse_entry(name: str, info, where: str) -> TensorEntry:
    def bad(msg):
        return FormatError(f"{where}: tensor {name!r}: {msg}")
    if not isinstance(info, dict):
        raise bad("entry is not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad(f"dtype must be a string, found {dtype!r}")
    if dtype not in BITS:
        # Perhaps a dtype of a later safetensors: the file may be sound, this
        # floatzip cannot size its tensors.
        raise UnsupportedError(
            f"{where}: tensor {name!r}: unknown dtype {dtype!r} (safetensors 0.8 knows "
            f"{', '.join(sorted(BITS))}); keep this file uncompressed")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"shape must be a list of non-negative integers, found {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        raise bad(f"data_offsets must be [begin, end] with 0 <= begin <= end, found {offsets!r}")
    count = 1
    for d in shape:
        count *= d
        if count > 2 ** 62:
            raise bad(f"shape {shape} is too large")
    nbytes = tensor_bytes(dtype, count)
    if nbytes is None:
        raise bad(f"{count} elements of {BITS[dtype]} bits (dtype {dtype}, shape {shape}) do "
                  "not fill a whole number of bytes, which safetensors does not allow")
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"data_offsets span {offsets[1] - offsets[0]} bytes but dtype {dtype} and "
                  f"shape {shape} need {nbytes}")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_header(f, where: str, file_size: int | None = None) -> Header:
    """Read and validate the header of an open binary file."""
    if file_size is None:
        file_size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise FormatError(f"{where}: file is {file_size} bytes, too short to be a safetensors "
                          "file (needs at least an 8-byte header length)")
    n = int.from_bytes(prefix, "little")
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"{where}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit; "
                          "this is not a safetensors file or it is corrupted")
    if 8 + n > file_size:
        raise FormatError(f"{where}: header length {n} runs past the end of the {file_size}-byte "
                          "file (truncated?)")
    header = parse_header_bytes(f.read(n), where)
    expected = header.data_start + header.data_bytes
    if expected != file_size:
        what = "truncated" if file_size < expected else "has trailing bytes"
        raise FormatError(f"{where}: file is {file_size} bytes but its header describes "
                          f"{expected} ({what})")
    return header


def build_header(metadata: dict[str, str] | None, entries: list[tuple[str, str, list[int], int]]) -> bytes:
    """Header JSON for (name, dtype, shape, nbytes) laid out back to back,
    padded with spaces to a multiple of 8 bytes as the safetensors library does."""
    doc = {}
    if metadata is not None:
        doc["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, nbytes in entries:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * ((-len(raw)) % 8)
