"""Codec ``const`` (format 2): every element of the tensor is the same, and
the blob is that one element (docs/FORMAT.md section 3). An all-zero bias,
a norm weight still at 1.0: a few bytes where format 1 stored a table and
lanes, or everything raw."""
from __future__ import annotations

import numpy as np

from ..dtypes import ITEMSIZE
from ..errors import FormatError
from .base import Codec, Opened
from .registry import register


class ConstCodec(Codec):
    codec_id = "const"

    def format_version(self, fields: dict) -> int:
        return 2

    def parse(self, fields, dtype, shape, nbytes, blob_bytes, bad):
        if fields:
            raise bad(f"unexpected fields for codec const: {sorted(fields)}")
        itemsize = ITEMSIZE.get(dtype)
        if itemsize is None:
            raise bad(f"codec const is not defined for the sub-byte dtype {dtype}")
        if nbytes == 0:
            raise bad("codec const is not defined for an empty tensor")
        if blob_bytes != itemsize:
            raise bad(f"const blob is {blob_bytes} bytes, one {dtype} element is {itemsize}")
        return nbytes, itemsize

    def params(self, layout) -> dict:
        return {}

    def open(self, layout, read, where) -> Opened:
        nbytes, itemsize = layout
        element = np.array(read(0, itemsize))
        if element.size != itemsize:
            raise FormatError(f"{where}: const blob holds {element.size} bytes, not {itemsize}")
        return Opened(layout, element)

    def decode_steps(self, opened, dtype, read, buffer, *, backend, workers, step_bytes):
        nbytes, itemsize = opened.layout
        element = opened.parts
        step = max(itemsize, step_bytes // itemsize * itemsize)
        for start in range(0, nbytes, step):
            out = buffer(min(step, nbytes - start))
            out.reshape(-1, itemsize)[...] = element
            yield out


def repeat(element: np.ndarray, nbytes: int) -> np.ndarray:
    """The tensor's bytes (uint8[nbytes]) from its one element."""
    return np.tile(np.asarray(element, dtype=np.uint8), nbytes // max(element.size, 1))


CONST = register(ConstCodec())
