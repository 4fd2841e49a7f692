"""How the numba back end spreads work over threads.

The kernels release the GIL, so plain Python threads run them in parallel:
work is cut into contiguous ranges (:func:`split_groups` for the coder,
:func:`split_values` for the histogram), each big enough to be worth a
thread, and run on one pool shared by every call (:func:`run_jobs`).
The output several threads fill is made by floatzip.memory.empty_faulted.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor


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
