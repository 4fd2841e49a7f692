"""A kernel launch replayed as a CUDA graph, to take the launch's host time
out of eager generation.

At batch 1 an eager forward is bound by the host: the GPU waits for the
Python that queues each kernel. On the H200 run of gpu_check.py, a
Llama-3-8B-shaped stack took 22.9 ms a token on BF16 weights (6.1 ms as one
CUDA graph: the rest is the host's) and 29.9 ms with one decode a layer
(24.4 ms as a graph). The decode call is the only host work that stack adds,
so it seems to have cost the host ~0.2 ms a layer: inferred from those
totals, not timed, and more than its parts explain on this project's CPU
(floatzip's own Python ~2 us, Triton 3.6's dispatch ~10 us before its C
launcher). gpu_check.py now times one call each way. Whatever the launch
path costs, a CUDA graph holding the launch replays with one driver call.

:class:`GraphLauncher` launches directly the first time it sees a key (the
output address, the kernel build and anything else a launch bakes in): that
launch compiles and loads the kernel if needed, which a capture must not do,
and a buffer used once never costs a capture. The second time it captures
the launch as a graph, and from then on replays it. Graphs are kept for the
first MAX_GRAPHS keys seen twice; later keys launch directly, so buffers
used in rotation never make it capture again and again. It launches
directly while the current stream is being captured (the caller's own graph
then records the kernel) and, for good on that device, after a capture
fails, with a warning saying why; graphs captured before then keep
replaying (torch before 2.12 may leave its random generator or allocator
marked as capturing after a failed capture; none has been seen to fail).

Each graph gets its own memory pool (``capture_begin`` without ``pool=``):
the launch allocates nothing, so the pool stays empty and goes with its
graph. One pool shared by every graph would not do: once all its graphs
are gone, torch refuses to capture into it again until ``empty_cache()``.
A graph still queued when it is dropped is freed by CUDA once it has run.
"""
from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Callable, Hashable

import torch

from ...errors import FloatzipError

MAX_GRAPHS = 4          # per launcher: graphs for the first output buffers reused
MAX_SEEN = 64           # keys launched once, remembered until their second use

_failed: dict[int | None, str] = {}     # device index -> why a capture failed there


class GraphLauncher:
    """Replays one launch function as CUDA graphs; see the module docstring."""

    def __init__(self, device: torch.device):
        self.device = device
        self._graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._seen: set[Hashable] = set()
        self._stream: torch.cuda.Stream | None = None
        self.captures = 0
        self.replays = 0

    @property
    def failed(self) -> str | None:
        """Why capturing stopped on this device, once it has."""
        return _failed.get(self.device.index)

    def launch(self, key: Hashable, launch_directly: Callable[[], None]) -> None:
        """Queue ``launch_directly``'s kernel on the current stream: as the
        graph captured for ``key`` when there is one (captured now on the
        key's second use), else directly."""
        if torch.cuda.is_current_stream_capturing():
            launch_directly()           # the caller's graph records the kernel itself
            return
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._new_graph(key, launch_directly)
            if graph is None:
                launch_directly()
                return
        graph.replay()
        self.replays += 1

    def _new_graph(self, key, launch_directly) -> torch.cuda.CUDAGraph | None:
        """The graph for a key that has none yet, or None: launch directly."""
        if self.failed is not None or len(self._graphs) >= MAX_GRAPHS:
            return None
        if key not in self._seen:
            if len(self._seen) >= MAX_SEEN:
                self._seen.clear()
            self._seen.add(key)
            return None
        graph = self._capture(launch_directly)
        if graph is not None:
            self._seen.discard(key)
            self._graphs[key] = graph
        return graph

    def _capture(self, launch_directly) -> torch.cuda.CUDAGraph | None:
        """The launch recorded (not run) on a side stream; None, with a
        warning, when it cannot be."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        graph = torch.cuda.CUDAGraph()
        collecting = gc.isenabled()
        # A collection inside the capture could free another CUDA graph or
        # (Triton >= 3.7) unload a kernel module: either breaks the capture.
        gc.disable()
        try:
            with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                # thread_local: other threads' CUDA calls during these few
                # microseconds neither break the capture nor fail themselves.
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    launch_directly()
                except BaseException:
                    with contextlib.suppress(Exception):    # keep the first error
                        graph.capture_end()
                    raise
                graph.capture_end()
        except FloatzipError:           # the launch's own complaint: no fault of capturing
            raise
        except Exception as exc:        # CUDA or Triton refusing: direct launches from now on
            _failed[self.device.index] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"floatzip: a decode launch could not be captured as a CUDA graph on "
                          f"{self.device} ({self.failed}); decodes there launch directly from "
                          "now on, which costs more host time a call", RuntimeWarning,
                          stacklevel=6)     # the caller of DeviceBlockDecoder.decode
            return None
        finally:
            if collecting:
                gc.enable()
        self.captures += 1
        return graph
