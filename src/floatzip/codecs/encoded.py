"""A tensor in coded form, and the codec entry points that produce and
consume it. The container (format/) turns EncodedTensor into bytes and back;
back ends (backends/) do the heavy lifting."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import xxhash

from .. import backends
from ..dtypes import FLOAT_LAYOUTS, ITEMSIZE
from ..errors import CorruptDataError, UnsupportedError
from . import model
from .layout import LANES, MAX_LANE_SYMBOLS, CodedGeometry

CODEC_TANS = "tans"
CODEC_RAW = "raw"


@dataclass
class EncodedTensor:
    dtype: str                      # safetensors dtype of the original tensor
    shape: tuple[int, ...]
    codec: str                      # CODEC_TANS or CODEC_RAW
    checksum: int                   # xxh3_64 of the original tensor bytes
    geometry: CodedGeometry | None = None   # tans only
    counts: np.ndarray | None = None        # tans: uint16[table_symbols]
    lane_sizes: np.ndarray | None = None    # tans: uint16[lanes]
    payload: np.ndarray | None = None       # tans: uint8[payload_bytes]
    raw: np.ndarray | None = None           # tans: packed raw fields; raw codec: the original bytes
    bound_bits: int | None = None           # floats: order-0 exponent bound, informative

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def original_bytes(self) -> int:
        return self.count * ITEMSIZE[self.dtype]


def checksum(data: np.ndarray) -> int:
    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(data).view(np.uint8).data)


def check_lane_symbols(lane_symbols) -> None:
    if isinstance(lane_symbols, bool) or not isinstance(lane_symbols, (int, np.integer)) \
            or not 1 <= lane_symbols <= MAX_LANE_SYMBOLS:
        raise UnsupportedError(f"lane_symbols must be an integer from 1 to {MAX_LANE_SYMBOLS} "
                               f"(default {model.DEFAULT_LANE_SYMBOLS}), got {lane_symbols!r}")


def encode_tensor(data: np.ndarray, dtype: str, shape, *, backend=None, workers: int = 1,
                  table_log: int = model.DEFAULT_TABLE_LOG,
                  lane_symbols: int = model.DEFAULT_LANE_SYMBOLS) -> EncodedTensor:
    """Encode one tensor given as its little-endian bytes (uint8, any shape).
    ``lane_symbols`` is the symbols per lane (format field K): fewer give a
    GPU more lanes to decode in parallel, for 4 bytes more per lane."""
    check_lane_symbols(lane_symbols)
    raw_bytes = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    shape = tuple(int(d) for d in shape)
    digest = checksum(raw_bytes)
    layout = FLOAT_LAYOUTS.get(dtype)
    bound = None
    if layout is not None:
        impl = backends.select(backend, encode=True)
        bits = raw_bytes.view(layout.storage)
        hist = impl.histogram(bits, layout.width, model.histogram_bits(layout), workers=workers)
        bound = int(round(model.exponent_bound_bits(hist, layout, bits.size)))
        choice = model.choose_coding(hist, layout, bits.size, table_log=table_log,
                                     lane_symbols=lane_symbols)
        if choice is not None:
            args = dict(width=layout.width, symbol_bits=choice.symbol_bits,
                        table_log=choice.table_log, first_symbol=choice.first_symbol,
                        lane_symbols=choice.lane_symbols)
            lane_sizes, payload, raw = impl.encode(bits, args, choice.counts, workers=workers)
            geometry = model.geometry_for(choice, layout, bits.size, int(payload.size))
            if geometry.blob_bytes < raw_bytes.size:
                return EncodedTensor(dtype, shape, CODEC_TANS, digest, geometry,
                                     choice.counts, lane_sizes, payload, raw, bound)
    return EncodedTensor(dtype, shape, CODEC_RAW, digest, raw=raw_bytes, bound_bits=bound)


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


def decode_group_range(enc: EncodedTensor, g0: int, g1: int, *, backend=None,
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
