"""Atomic output: write to a temporary sibling, rename into place on success."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a binary file opened on a temporary sibling of ``path``; on a
    clean exit it replaces ``path``, on an exception it is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the usual permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def resolve_workers(workers: int | None) -> int:
    if workers is None or workers <= 0:
        return os.cpu_count() or 1
    return int(workers)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
