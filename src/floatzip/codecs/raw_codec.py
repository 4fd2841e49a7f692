"""Codec ``raw``: the blob is the tensor's bytes as they are (docs/FORMAT.md
section 3). For every dtype tans does not code, empty and tiny tensors, and
whenever coding would not make a tensor smaller."""
from __future__ import annotations

from .base import Codec, Opened
from .registry import register


class RawCodec(Codec):
    codec_id = "raw"

    def parse(self, fields, dtype, shape, nbytes, blob_bytes, bad):
        if fields:
            raise bad(f"unexpected fields for codec raw: {sorted(fields)}")
        if blob_bytes != nbytes:
            raise bad(f"raw blob is {blob_bytes} bytes, the tensor needs {nbytes}")
        return nbytes

    def params(self, layout) -> dict:
        return {}

    def open(self, layout, read, where) -> Opened:
        return Opened(layout, None)

    def decode_steps(self, opened, dtype, read, buffer, *, backend, workers, step_bytes):
        total = opened.layout
        for start in range(0, total, step_bytes):
            size = min(step_bytes, total - start)
            yield read(start, size, out=buffer(size))


RAW = register(RawCodec())
