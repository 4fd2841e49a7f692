"""Atomic output: write to a temporary sibling, rename into place on success."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile


def temporary_prefix(path: str) -> str:
    """Prefix of a hidden temporary sibling of ``path``: its name cut to 100
    bytes, so that the random part and a suffix still fit in 255."""
    return "." + os.fsencode(os.path.basename(path))[:100].decode("utf-8", "ignore") + "."


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: int | None = None):
    """Yield a binary file opened on a temporary sibling of ``path``; on a
    clean exit it replaces ``path``, on an exception it is removed. ``mode``:
    the file's permission bits (default: what the umask gives a new file).
    Errors name ``path``, not the temporary file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=directory)
    except OSError as exc:
        raise error_about(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the asked or usual permissions.
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise error_about(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def error_about(exc: OSError, path: str) -> OSError:
    """The same error about ``path``, for one that named a temporary file
    made on the way to writing ``path``."""
    return type(exc)(exc.errno, exc.strerror, path)


def file_mode(path: str) -> int:
    """Permission bits of ``path``, which an output made from it keeps (as
    zstd and gzip do: a private checkpoint stays private)."""
    return stat.S_IMODE(os.stat(path).st_mode)


def resolve_workers(workers: int | None) -> int:
    """Threads to use: None, 0 or a negative number (as joblib's -1) mean
    every core."""
    if workers is None or workers <= 0:
        return os.cpu_count() or 1
    return int(workers)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
