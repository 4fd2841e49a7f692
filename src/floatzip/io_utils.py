"""Atomic output: write to a temporary sibling, rename into place on success."""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile


def temporary_prefix(path: str) -> str:
    """Prefix of a hidden temporary sibling of ``path``: its name cut to 100
    bytes, so that the random part and a suffix still fit in 255."""
    return "." + os.fsencode(os.path.basename(path))[:100].decode("utf-8", "ignore") + "."


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: int | None = None, *, overwrite: bool = True):
    """Yield a binary file opened on a temporary sibling of ``path``; on a
    clean exit it replaces ``path``, on an exception it is removed. ``mode``:
    the file's permission bits (default: what the umask gives a new file).
    ``overwrite`` False: an existing ``path`` is an OutputExistsError.
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
        publish_file(tmp, path, overwrite=overwrite)
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


def publish_file(tmp: str, path: str, *, overwrite: bool) -> None:
    """Give the finished temporary file ``tmp`` its final name ``path``."""
    if not overwrite and os.path.lexists(path):
        from .errors import OutputExistsError
        raise OutputExistsError(f"{path}: already exists; pass overwrite=True (CLI: --force) "
                                "to replace it")
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise error_about(exc, path) from None


def publish_directory(staging: str, path: str, *, overwrite: bool) -> None:
    """Give the finished staging directory its final name ``path``,
    replacing what is there only with ``overwrite``."""
    if os.path.lexists(path) and not overwrite:
        from .errors import OutputExistsError
        raise OutputExistsError(f"{path}: already exists; pass overwrite=True (CLI: --force) "
                                "to replace it")
    if os.path.islink(path):
        os.unlink(path)                  # replace the link, not what it points to
    elif os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(staging, path)


def pread_exact(fd: int, out, offset: int, where: str) -> None:
    """Fill the writable buffer ``out`` with the bytes of ``fd`` from
    ``offset``. One read returns at most ~2 GiB on Linux (and less at
    will on other files), so it loops; the file ending first is a
    FormatError naming ``where``."""
    view = memoryview(out).cast("B")
    done, total = 0, view.nbytes
    while done < total:
        got = os.preadv(fd, [view[done:done + _MAX_IO]], offset + done)
        if got == 0:
            from .errors import FormatError
            raise FormatError(f"{where}: file ended while reading {total} bytes at offset "
                              f"{offset} (truncated?)")
        done += got


def write_all(fd: int, data) -> None:
    """Write every byte of ``data`` to ``fd`` (os.write may write less, and
    at most ~2 GiB a call)."""
    view = memoryview(data).cast("B")
    done, total = 0, view.nbytes
    while done < total:
        done += os.write(fd, view[done:done + _MAX_IO])


def pwrite_all(fd: int, data, offset: int) -> None:
    """os.pwrite of every byte of ``data`` at ``offset``."""
    view = memoryview(data).cast("B")
    done, total = 0, view.nbytes
    while done < total:
        done += os.pwrite(fd, view[done:done + _MAX_IO], offset + done)


# Linux moves at most 0x7ffff000 bytes a read or write call; ask for 1 GiB
# at a time, which any system takes.
_MAX_IO = 1 << 30
