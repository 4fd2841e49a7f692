"""Atomic output: write to a temporary sibling, give it its final name on success.

This is the one place outputs get their final names. Without overwrite the
final name is created atomically and never replaces anything, so of two jobs
racing to one output exactly one wins and the other gets OutputExistsError.
Temporaries carry their owner's identity in their names, so that a later job
to the same output can remove those whose owner died (SIGKILL, power loss).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile

# Every temporary name: "." + the output's name cut to _NAME_CUT bytes + "."
# + _MARKER + "." + fields, each "." + something: hash of the output's full
# name, host key, owner pid, owner start time, random part. Under 255 bytes:
# 1 + 100 + 1 + 12 + (1 + 8) * 2 + (1 + 10) + (1 + 20) + (1 + 8) = 173.
_MARKER = "floatzip-tmp"
_NAME_CUT = 100


def temporary_prefix(path: str) -> str:
    """Prefix of a hidden temporary sibling of ``path`` made by this process
    (a random part of up to 32 of [A-Za-z0-9_] completes it, as mkstemp and
    mkdtemp add): the output's name cut to 100 bytes, a fixed marker, a hash
    of the full name, and who owns it (host key, pid, process start time),
    which remove_stale_temporaries reads back."""
    return _output_prefix(path) + _owner_token() + "."


def _output_prefix(path: str) -> str:
    name = os.path.basename(os.path.abspath(os.fspath(path)))
    raw = os.fsencode(name)
    # "ignore" drops a character cut in two (and bytes that are not UTF-8).
    cut = raw[:_NAME_CUT].decode("utf-8", "ignore")
    return f".{cut}.{_MARKER}.{_short_hash(raw)}."


def _short_hash(data: bytes) -> str:
    return hashlib.blake2s(data, digest_size=4).hexdigest()


# -- who owns a temporary ------------------------------------------------------

@functools.cache
def _host_key() -> str:
    """What makes pids comparable: the host's name and machine id, and the
    pid namespace (two containers of one host number their processes apart).
    A temporary made under another key is never removed: its owner cannot
    be checked from here."""
    parts = [os.uname().nodename]
    try:
        with open("/etc/machine-id") as f:
            parts.append(f.read().strip())
    except OSError:
        parts.append("")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("")
    return _short_hash("\0".join(parts).encode("utf-8", "surrogateescape"))


def _start_time(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (field 22 of
    /proc/PID/stat): with the pid, it names one process, whatever reuses
    the pid later. ProcessLookupError if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH), pid) from None
    # The command name (field 2) is in parentheses and may hold spaces and
    # parentheses itself: count fields after the last ")".
    return int(stat_line[stat_line.rindex(b")") + 2:].split()[19])


@functools.cache
def _have_proc() -> bool:
    return os.path.exists("/proc/self/stat")


@functools.cache
def _owner_token_of(pid: int) -> str:
    start = _start_time(pid) if _have_proc() else 0
    return f"{_host_key()}.{pid}.{start}"


def _owner_token() -> str:
    return _owner_token_of(os.getpid())      # keyed by pid: a forked child is another owner


def _owner_alive(pid: int, start: int) -> bool:
    """Whether the process that made a temporary on this host may still run."""
    if start == 0 or not _have_proc():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True                      # EPERM: it exists
        return True
    try:
        return _start_time(pid) == start
    except ProcessLookupError:
        return False
    except (OSError, ValueError, IndexError):
        return True                          # cannot tell: keep it


def _temporary_pattern(path: str) -> re.Pattern:
    return re.compile(re.escape(_output_prefix(path))
                      + r"(?P<host>[0-9a-f]{8})\.(?P<pid>[1-9][0-9]{0,9})\.(?P<start>[0-9]{1,20})"
                      r"\.[A-Za-z0-9_]{1,32}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files and staging directories that earlier jobs
    writing ``path`` left next to it when they died. Only names this module
    makes for ``path``, on this host, owned by this user, whose process is
    gone (or whose pid now belongs to a process started at another time);
    a live job's temporaries stay. Returns the paths removed."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    pattern, host, uid = _temporary_pattern(path), _host_key(), os.geteuid()
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed                       # the job itself will report the parent
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or match["host"] != host:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid != uid or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            continue
        if _owner_alive(int(match["pid"]), int(match["start"])):
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        if not os.path.lexists(entry.path):
            removed.append(entry.path)
    return removed


# -- writing and publishing ----------------------------------------------------

@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: int | None = None, *, overwrite: bool = True,
                  fsync: bool = True):
    """Yield a binary file opened on a temporary sibling of ``path``; on a
    clean exit it is fsynced and becomes ``path``, on an exception it is
    removed. ``mode``: the file's permission bits (default: what the umask
    gives a new file). ``overwrite`` False: an existing ``path``, or one
    that another job creates first, is an OutputExistsError. ``fsync``
    False: the file gets its name without waiting for its bytes to reach
    the disk (a crash may then leave it partial or empty under its final
    name; no other process ever sees it partial). Callers may
    also write through the file's fileno() (os.pwrite at any offset). An
    OSError raised inside (a full disk, a file too large), whether from the
    file object or the caller's own calls on its fileno, comes out naming
    ``path``, not the temporary file. Temporaries of ``path`` that dead
    jobs left are removed first."""
    path = os.fspath(path)
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path),
                                   dir=os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise error_about(exc, path) from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                # mkstemp makes the file private (0600); give it the asked or usual permissions.
                os.fchmod(f.fileno(), (0o666 & ~_umask()) if mode is None else mode)
                if fsync:
                    os.fsync(f.fileno())
        except OSError as exc:
            # An error of the caller's that already names a file (its input) is its own.
            if exc.errno is not None and exc.filename in (None, tmp):
                raise error_about(exc, path) from None
            raise
        publish_file(tmp, path, overwrite=overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def error_about(exc: OSError, path: str) -> OSError:
    """The same error about ``path``, for one that named a temporary file
    made on the way to writing ``path``, or no file at all."""
    if exc.errno is None:
        return type(exc)(f"{path}: {exc}")
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), path)


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
    # Read, not set and reset: setting it for a moment would give files that
    # other threads create meanwhile the wrong permissions.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _exists_error(path: str):
    from .errors import OutputExistsError
    return OutputExistsError(f"{path}: already exists; pass overwrite=True (CLI: --force) "
                             "to replace it")


def publish_file(tmp: str, path: str, *, overwrite: bool) -> None:
    """Give the finished temporary file ``tmp`` its final name ``path``.
    Without ``overwrite`` the name is created atomically, never replacing
    what is there or appears meanwhile (OutputExistsError). On an error
    ``tmp`` is left to the caller to remove."""
    try:
        if overwrite:
            os.replace(tmp, path)
        elif not _renameat2(tmp, path, _RENAME_NOREPLACE):
            _link_then_unlink(tmp, path)
    except OSError as exc:
        if not overwrite and exc.errno == errno.EEXIST:
            raise _exists_error(path) from None
        raise error_about(exc, path) from None


def _link_then_unlink(tmp: str, path: str) -> None:
    try:
        os.link(tmp, path)                   # fails with EEXIST, never replaces
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # A file system with neither renameat2 flags nor hard links: check
        # and rename, which another job could slip between.
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path) from None
        os.rename(tmp, path)
        return
    with contextlib.suppress(OSError):       # left behind, a later job removes it
        os.unlink(tmp)


def make_staging_directory(path: str | os.PathLike) -> str:
    """A new private (0700) staging directory next to ``path``, for a job
    that builds a directory there and gives it its final name with
    publish_directory; first removes those that dead jobs left for
    ``path``. Errors name ``path``."""
    path = os.fspath(path)
    remove_stale_temporaries(path)
    try:
        return tempfile.mkdtemp(prefix=temporary_prefix(path),
                                dir=os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise error_about(exc, path) from None


def publish_directory(staging: str, path: str, *, overwrite: bool) -> None:
    """Give the finished staging directory its final name ``path``,
    replacing what is there only with ``overwrite``. Without it the name is
    created atomically (OutputExistsError if anything is or appears there,
    an empty directory included). With it an existing directory is swapped
    for the new one in one step where the system allows, then removed: no
    moment without a directory at ``path``. A link at ``path`` is
    replaced, not what it points to. On an error ``staging`` is left to the
    caller to remove."""
    remove_stale_temporaries(path)
    try:
        if overwrite:
            _replace_directory(staging, path)
        elif not _renameat2(staging, path, _RENAME_NOREPLACE):
            _claim_then_rename(staging, path)
    except OSError as exc:
        if not overwrite and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise _exists_error(path) from None
        raise error_about(exc, path) from None


def _claim_then_rename(staging: str, path: str) -> None:
    # mkdir creates the name or fails, atomically; the rename then replaces
    # only the empty directory made here. If this job dies in between, an
    # empty directory stays at ``path``.
    os.mkdir(path, 0o700)
    try:
        os.rename(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(path)                   # only if still empty: never another's output
        raise


def _replace_directory(staging: str, path: str) -> None:
    if os.path.lexists(path):
        try:
            exchanged = _renameat2(staging, path, _RENAME_EXCHANGE)
        except FileNotFoundError:            # removed meanwhile: nothing to exchange
            exchanged = False
        if exchanged:
            # The old output now lies under the staging name. Should some of
            # it resist removal, the new output is in place all the same, and
            # a later job to ``path`` retries once this process is gone.
            if os.path.isdir(staging) and not os.path.islink(staging):
                shutil.rmtree(staging, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(staging)
            return
        if os.path.islink(path):
            os.unlink(path)                  # replace the link, not what it points to
        elif os.path.isdir(path):
            shutil.rmtree(path)
    os.replace(staging, path)


# -- renameat2 -----------------------------------------------------------------

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
# Errors that mean "not here" (kernel, C library, file system or a seccomp
# filter), for which a fallback runs; a real error of the same kind then
# comes from the fallback.
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}
_NO_HARD_LINKS = {errno.EPERM, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


@functools.cache
def _renameat2_function():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # only here: most runs never publish
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2     # glibc 2.28+
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _renameat2(src: str, dst: str, flags: int) -> bool:
    """renameat2(2) with ``flags``: True when done, False where it is not
    available; other failures raise OSError (EEXIST: ``dst`` exists)."""
    function = _renameat2_function()
    if function is None:
        return False
    import ctypes
    if function(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), dst)


# -- reads and writes of any size ------------------------------------------------

def pread_exact(fd: int, out, offset: int, where: str) -> None:
    """Fill the writable buffer ``out`` with the bytes of ``fd`` from
    ``offset``. One read returns at most ~2 GiB on Linux (and less at
    will on other files), so it loops; the file ending first is a
    FormatError naming ``where``, and an OSError names ``where`` too."""
    view = memoryview(out).cast("B")
    done, total = 0, view.nbytes
    while done < total:
        try:
            got = os.preadv(fd, [view[done:done + _MAX_IO]], offset + done)
        except OSError as exc:
            raise error_about(exc, where) from None
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
