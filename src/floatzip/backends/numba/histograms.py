"""The statistics of the numba back end: the counts the encoder's model is
chosen from, as numpy_ref.statistics computes them.

One kernel over a contiguous range of values; ranges go to threads
(threads.split_values), their counts are summed and their varying bits
joined.
"""
from __future__ import annotations

import numba
import numpy as np

from ...io_utils import resolve_workers
from .packing import NJIT
from .threads import run_jobs, split_values


@numba.njit(**NJIT)
def _statistics(bits, width, top_bits, out):
    """Counts of (top ``top_bits`` bits below the sign) << 1 | sign into
    ``out``; returns the OR of every value XOR the first. Four interleaved
    sub-histograms so repeated symbols do not serialise on one counter's
    store-to-load dependency."""
    n = bits.size
    size = out.size // 4
    sign_shift = width - 1
    magnitude = (1 << (width - 1)) - 1
    shift = width - 1 - top_bits
    first = np.int64(bits[0]) if n else 0
    varying = 0
    i = 0
    while i + 4 <= n:
        for k in range(4):
            v = np.int64(bits[i + k])
            varying |= v ^ first
            out[k * size + ((((v & magnitude) >> shift) << 1) | (v >> sign_shift))] += 1
        i += 4
    while i < n:
        v = np.int64(bits[i])
        varying |= v ^ first
        out[(((v & magnitude) >> shift) << 1) | (v >> sign_shift)] += 1
        i += 1
    return varying


def statistics(bits: np.ndarray, width: int, top_bits: int, workers: int = 1):
    """(counts int64[2**(top_bits+1)], varying bits), as numpy_ref.statistics."""
    bits = np.ascontiguousarray(bits).reshape(-1)
    if bits.dtype.itemsize * 8 != width or not 1 <= top_bits < width:
        raise ValueError(f"{bits.dtype} values are not {width} bits wide, or top_bits "
                         f"{top_bits} is outside 1..{width - 1}")
    bits = bits.view(np.dtype(f"u{width // 8}"))
    workers = resolve_workers(workers)
    jobs = split_values(bits.size, workers)

    def run(job):
        out = np.zeros(8 << top_bits, dtype=np.int64)
        part = bits[job[0]:job[1]]
        varying = _statistics(part, width, top_bits, out)
        if part.size:       # relative to the tensor's first value
            varying |= int(part[0]) ^ int(bits[0])
        return out.reshape(4, -1).sum(axis=0), varying

    parts = run_jobs(jobs, run, workers)
    if not parts:
        return np.zeros(2 << top_bits, dtype=np.int64), 0
    varying = 0
    for _, v in parts:
        varying |= int(v)
    return np.sum([c for c, _ in parts], axis=0), varying
