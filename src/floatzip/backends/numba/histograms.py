"""The symbol histogram of the numba back end: the counts the encoder's
model is chosen from, as numpy_ref.histogram computes them.

One kernel over a contiguous range of values; ranges go to threads
(threads.split_values) and their counts are summed.
"""
from __future__ import annotations

import numba
import numpy as np

from ...io_utils import resolve_workers
from .packing import NJIT
from .threads import run_jobs, split_values


@numba.njit(**NJIT)
def _histogram(bits, width, top_bits, out):
    # Counts of the top ``top_bits`` of each sign-rotated value; four
    # interleaved sub-histograms so repeated symbols do not serialise on
    # one counter's store-to-load dependency.
    n = bits.size
    size = out.size // 4
    rot = width - 1
    shift = width - top_bits
    mask = (1 << width) - 1
    i = 0
    while i + 4 <= n:
        for k in range(4):
            v = np.int64(bits[i + k])
            out[k * size + ((((v << 1) | (v >> rot)) & mask) >> shift)] += 1
        i += 4
    while i < n:
        v = np.int64(bits[i])
        out[((((v << 1) | (v >> rot)) & mask) >> shift)] += 1
        i += 1


def histogram(bits: np.ndarray, width: int, top_bits: int, workers: int = 1) -> np.ndarray:
    """Counts (int64[2**top_bits]) of the top ``top_bits`` bits of each
    sign-rotated value, as numpy_ref.histogram."""
    bits = np.ascontiguousarray(bits).reshape(-1)
    if bits.dtype.itemsize * 8 != width or not 1 <= top_bits <= width:
        raise ValueError(f"{bits.dtype} values are not {width} bits wide, or top_bits "
                         f"{top_bits} is outside 1..{width}")
    bits = bits.view(np.dtype(f"u{width // 8}"))
    workers = resolve_workers(workers)
    jobs = split_values(bits.size, workers)

    def run(job):
        out = np.zeros(4 << top_bits, dtype=np.int64)
        _histogram(bits[job[0]:job[1]], width, top_bits, out)
        return out.reshape(4, -1).sum(axis=0)

    parts = run_jobs(jobs, run, workers)
    return np.sum(parts, axis=0) if parts else np.zeros(1 << top_bits, dtype=np.int64)
