"""A kernel launch replayed as a CUDA graph, to take the launch's host time
out of eager generation.

At batch 1 an eager forward is bound by the host: the GPU waits for the
Python that queues each kernel. On the H200 run of gpu_check.py, a
Llama-3-8B-shaped stack took 22.9 ms a token on BF16 weights (6.1 ms as one
CUDA graph: the rest is the host's) and 29.9 ms with one decode a layer
(24.4 ms as a graph). The decode call is the only host work that stack adds,
so it cost the host ~0.2 ms a layer: inferred from those totals, not timed
(gpu_check.py now times it). Nearly all of it is Triton's JIT dispatch
(binding 18 arguments, the cache key, the launcher); floatzip's own part
measured ~5 us. A CUDA graph holding the launch replays with one driver
call.

:class:`GraphLauncher` launches directly the first time it sees a key (the
output address and the kernel build): that launch compiles and loads the
kernel if needed, which a capture must not do, and a buffer used once never
costs a capture. The second time it captures the launch as a graph, and from
then on replays it. A graph bakes in its arguments, so a key must name
everything a launch can vary (the caller's other buffers must stay put for
the graph's life). It launches directly while the current stream is being
captured (the caller's own graph then records the kernel) and, for good,
after a capture fails (with a warning saying why).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable

import torch

MAX_GRAPHS = 4          # per launcher: one per output buffer reused lately
MAX_SEEN = 16           # keys launched once, remembered to capture on the second

_pools: dict[int, tuple] = {}


def _pool(device: torch.device):
    """One memory pool for every graph on a device: the launches allocate
    nothing, so it stays empty, but each capture needs one."""
    if device.index not in _pools:
        _pools[device.index] = torch.cuda.graph_pool_handle()
    return _pools[device.index]


class GraphLauncher:
    """Replays one launch function as CUDA graphs; see the module docstring."""

    def __init__(self, device: torch.device):
        self.device = device
        self._graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._seen: dict[Hashable, None] = {}       # insertion-ordered set
        self._stream: torch.cuda.Stream | None = None
        self.failed: str | None = None      # why capturing stopped, once it has
        self.captures = 0
        self.replays = 0

    def launch(self, key: Hashable, launch_directly: Callable[[], None]) -> None:
        """Queue ``launch_directly``'s kernel on the current stream: the
        graph captured for ``key``, captured now if there is none."""
        if self.failed is not None or torch.cuda.is_current_stream_capturing():
            launch_directly()
            return
        graph = self._graphs.get(key)
        if graph is None:
            if key not in self._seen:
                if len(self._seen) >= MAX_SEEN:
                    del self._seen[next(iter(self._seen))]
                self._seen[key] = None
                launch_directly()
                return
            graph = self._capture(launch_directly)
            if graph is None:
                launch_directly()
                return
            if len(self._graphs) >= MAX_GRAPHS:
                self._drop(next(iter(self._graphs)))        # the oldest
            self._graphs[key] = graph
        graph.replay()
        self.replays += 1

    def _capture(self, launch_directly) -> torch.cuda.CUDAGraph | None:
        """The launch recorded (not run) on a side stream; None, with a
        warning, when it cannot be."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                # thread_local: another thread's CUDA calls during these
                # microseconds neither break the capture nor fail themselves.
                graph.capture_begin(pool=_pool(self.device), capture_error_mode="thread_local")
                try:
                    launch_directly()
                finally:
                    graph.capture_end()
        except Exception as exc:        # CUDA or Triton refusing; launch directly from now on
            self.failed = f"{type(exc).__name__}: {exc}"
            self.clear()
            warnings.warn(f"floatzip: the decode launch could not be captured as a CUDA graph "
                          f"({self.failed}); launching it directly from now on, which costs "
                          "more host time a call", RuntimeWarning, stacklevel=3)
            return None
        self.captures += 1
        return graph

    def _drop(self, key) -> None:
        # A replay of it may still be queued: let it finish first (rare:
        # a fifth output buffer).
        torch.cuda.synchronize(self.device)
        del self._graphs[key]

    def clear(self) -> None:
        """Drop every graph."""
        if self._graphs:
            torch.cuda.synchronize(self.device)
            self._graphs.clear()
