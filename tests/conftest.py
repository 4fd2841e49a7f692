import os

import numpy as np
import pytest

from floatzip.format.safetensors_header import build_header

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, array whose bytes are the data)."""
    blobs = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for *_, a in tensors]
    header = build_header(metadata, [(n, d, list(s), b.size) for (n, d, s, _), b in zip(tensors, blobs)])
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for b in blobs:
            f.write(b.data)
    return path


def explicit_args(bits, dtype, symbol_bits, table_log, lane_symbols, **mapping):
    """Coding parameters for ``bits`` with a chosen symbol size, table and
    lane length (and format 2 ``mapping`` fields), whatever the encoder's
    model would pick: (args, counts)."""
    from floatzip.backends import numpy_ref  # noqa: F401  (the reference)
    from floatzip.codecs import tans, words
    from floatzip.codecs.layout import CodedGeometry
    from floatzip.dtypes import FLOAT_LAYOUTS
    layout = FLOAT_LAYOUTS[dtype]
    g = CodedGeometry(count=bits.size, width=layout.width, symbol_bits=symbol_bits,
                      table_log=table_log, first_symbol=0, table_symbols=1,
                      lane_symbols=lane_symbols, payload_bytes=0, **mapping)
    hist = np.bincount(words.split(bits, g)[0], minlength=1 << symbol_bits)
    used = np.flatnonzero(hist)
    first, last = int(used[0]), int(used[-1])
    counts = tans.normalize_counts(hist[first:last + 1], table_log)
    args = dict(g.encode_args(), first_symbol=first)
    return args, counts


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (truncation is fine for test data)."""
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def small_checkpoint(tmp_path, rng):
    w = (rng.standard_normal((64, 96)) * 0.02).astype(np.float32)
    return write_safetensors(tmp_path / "model.safetensors", [
        ("layer.0.weight", "BF16", [64, 96], bf16_bits(w)),
        ("layer.0.bias", "F32", [96], w[0]),
        ("layer.1.weight", "F16", [96, 64], w.T.astype(np.float16)),
        ("position_ids", "I64", [1, 8], np.arange(8, dtype="<i8")),
    ], {"format": "pt"})
