"""A raw or tans tensor in coded form, held in memory (what the whole-tensor
encoder returns and the GPU back end uploads). The container (format/)
turns it into bytes and back; encode.py and decode.py produce and consume
it with a back end."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

from ..dtypes import ITEMSIZE
from ..errors import UnsupportedError
from . import model
from .layout import MAX_LANE_SYMBOLS, CodedGeometry

CODEC_TANS = "tans"
CODEC_RAW = "raw"
CODEC_CONST = "const"       # stored only: held in memory as raw


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
