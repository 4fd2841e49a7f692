"""Fresh arrays that several threads are about to fill."""
from __future__ import annotations

import numpy as np

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
