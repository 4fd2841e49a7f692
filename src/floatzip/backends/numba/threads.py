"""How the numba back end spreads work over threads.

The kernels release the GIL, so plain Python threads run them in parallel:
work is cut into contiguous ranges (:func:`split_groups` for the coder,
:func:`split_values` for the histogram), each big enough to be worth a
thread, and run on one pool shared by every call (:func:`run_jobs`).
:func:`empty_faulted` makes the output that several threads will fill.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Below this many values per thread, handing work to a thread costs more
# than it saves. (Tests lower it to split even small tensors.)
MIN_VALUES_PER_JOB = 1 << 18

_pool: ThreadPoolExecutor | None = None    # shared by all calls, grown on demand
_pool_threads = 0
_pool_lock = threading.Lock()


def split_groups(groups: int, group: int, workers: int) -> list[tuple[int, int]]:
    """[0, groups) cut into contiguous, non-empty ranges of groups, one per
    worker, each worth handing to a thread."""
    parts = max(1, min(workers, groups, groups * group // MIN_VALUES_PER_JOB))
    cuts = [groups * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def split_values(count: int, workers: int) -> list[tuple[int, int]]:
    """[0, count) cut into contiguous ranges, one per worker at most, none
    shorter than a thread is worth (but the last)."""
    chunk = max(MIN_VALUES_PER_JOB, -(-count // workers))
    return [(a, min(a + chunk, count)) for a in range(0, count, chunk)]


def run_jobs(jobs, fn, workers: int):
    """[fn(job) for job in jobs], on up to ``workers`` threads (this one
    included). The kernels release the GIL, so the threads run in parallel."""
    if len(jobs) <= 1 or workers <= 1:
        return [fn(job) for job in jobs]
    global _pool, _pool_threads
    with _pool_lock:
        if _pool_threads < workers - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)      # its queued jobs still run
            _pool = ThreadPoolExecutor(max_workers=workers - 1,
                                       thread_name_prefix="floatzip-numba")
            _pool_threads = workers - 1
        pool = _pool
    futures = [pool.submit(fn, job) for job in jobs[1:]]
    first = fn(jobs[0])
    return [first] + [f.result() for f in futures]


# Bytes between two writes that fault in every page of a fresh buffer.
_PAGE_BYTES = 4096


def empty_faulted(n: int, dtype) -> np.ndarray:
    """np.empty(n, dtype) with every page already faulted in, by this thread.

    A fresh output that several threads then fill concurrently makes them
    fault its pages in at the same time; with NumPy's transparent huge
    pages (it asks for them on large arrays) the kernel serialises those
    faults so badly that two threads decoding a 47 MB tensor ran at 0.6
    GB/s instead of 3.6 on one (2 cores, Linux 6.18). Touching one byte a
    page first costs one thread what one thread would have paid anyway."""
    out = np.empty(n, dtype=dtype)
    out.view(np.uint8)[::_PAGE_BYTES] = 0
    return out
