"""Writing an output in a thread of its own while the next step is decoded.

On a page cache, ``write`` is a copy plus page allocation that takes as long
as decoding the same bytes does, and on a busy disk it stalls for seconds
once the dirty pages pile up. Done in line, every step waits for both. Here
the caller decodes step ``i + 1`` while this thread writes step ``i``, and
each written range is handed to the disk at once (``sync_file_range``), so
dirty pages never pile up and the final fsync finds little left to do. An
output that will not be fsynced (``writeback=False``) gets no early
writeback: there it would only cost time.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from concurrent.futures import Future, ThreadPoolExecutor

from .io_utils import pwrite_all

_SYNC_FILE_RANGE_WRITE = 2      # start writeback of the range's dirty pages; do not wait


def _load_sync_file_range():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None                 # not Linux: the final fsync does it all
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_sync_file_range = _load_sync_file_range()


class BackgroundWriter:
    """Writes pieces to ``fd`` (one after the other from ``offset``, or
    where told), in a thread; at most one piece is in flight while the caller prepares the
    next, so a caller that alternates two buffers never overwrites one that
    is still being written: after ``write(piece)`` returns, the piece given
    the call before is written and its buffer free again."""

    def __init__(self, fd: int, offset: int = 0, *, writeback: bool = True):
        """``writeback`` False: ``fd`` will not be fsynced, so its ranges are
        not sent to the disk early either."""
        self._fd = fd
        self._writeback = writeback
        self.offset = offset
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floatzip-writer")
        self._pending: Future | None = None

    def write(self, piece) -> None:
        """Write ``piece`` where the previous one ended."""
        self.write_at(piece, self.offset)
        self.offset += memoryview(piece).nbytes

    def write_at(self, pieces, offset: int, *, fd: int | None = None,
                 writeback: bool = True) -> None:
        """Write ``pieces`` (one buffer, or a list written back to back) at
        ``offset`` of this writer's file, or of ``fd``; ``writeback`` False
        for a scratch file, which need not reach the disk."""
        previous = self._pending
        self._pending = self._pool.submit(self._write_at, pieces, offset,
                                          self._fd if fd is None else fd,
                                          writeback and self._writeback)
        if previous is not None:
            previous.result()           # raises what the write raised

    @staticmethod
    def _write_at(pieces, offset: int, fd: int, writeback: bool) -> None:
        start = offset
        for piece in pieces if isinstance(pieces, list) else [pieces]:
            pwrite_all(fd, piece, offset)
            offset += memoryview(piece).nbytes
        if writeback and _sync_file_range is not None:
            # Best effort: an error here is one the final fsync reports.
            _sync_file_range(fd, start, offset - start, _SYNC_FILE_RANGE_WRITE)

    def flush(self) -> None:
        """Wait for every piece to be written (raising a write's error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is None:
            self.close()
        else:                           # already failing: wait, but keep the first error
            try:
                self.close()
            except OSError:
                pass
        return False
