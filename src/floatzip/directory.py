"""The directory jobs (compress, decompress, check, verify), each over a
whole model directory with one progress bar (the directory itself, its
manifest and the checks against it: model_dir.py). The per-file work is done by the functions api.py
passes in; outputs are built in a staging directory that gets its final name
at the end, so no half-written directory is ever seen."""
from __future__ import annotations

import os
import shutil
import stat

import xxhash

from .codecs.model import DEFAULT_LANE_SYMBOLS
from .errors import CorruptDataError, FloatzipError, FormatError, UnsupportedError
from .format import container
from .format.safetensors_header import read_header
from .io_utils import error_about, file_mode, make_staging_directory, publish_directory
from .model_dir import (
    MANIFEST,
    inspect_directory,
    is_floatzip,
    mismatch_error,
    walk,
    write_manifest,
)
from .progress import NO_PROGRESS, Progress
from .results import VerifyResult

_COPY_CHUNK = 8 << 20


# -- progress ----------------------------------------------------------------------

class _FileShare(Progress):
    """The part of a directory job's bar that one file's function moves: it
    passes advance() on to the job's bar, never beyond the file's own bytes,
    and ``finish`` moves the rest, whatever the function advanced (nothing,
    if it stopped early at a mismatch)."""

    def __init__(self, job: Progress, nbytes: int):
        super().__init__(0, "", enabled=False)
        self._job, self._left = job, nbytes

    def advance(self, nbytes: int) -> None:
        step = min(nbytes, self._left)
        if step > 0:
            self._left -= step
            self._job.advance(step)

    def file_done(self) -> None:
        pass                # the job counts files

    def close(self) -> None:
        pass                # the job's bar closes with the job

    def finish(self) -> None:
        self.advance(self._left)


def _run_file(job: Progress, nbytes: int, fn, *args, **kw):
    """``fn(*args, progress=share, **kw)`` with the file's share of the job's
    bar; the bar is at the file's end afterwards, and counts one file more."""
    share = _FileShare(job, nbytes)
    result = fn(*args, progress=share, **kw)
    share.finish()
    job.file_done()
    return result


def _job_bar(root: str, sizes, progress) -> Progress:
    sizes = list(sizes)
    name = os.path.basename(os.path.normpath(root))
    return Progress(sum(sizes), name, enabled=bool(progress), files=len(sizes))


# -- copying and hashing -------------------------------------------------------------

def _copy_file(src: str, dst: str, *, progress: Progress, fsync: bool = True) -> tuple[int, str]:
    """Copy ``src`` to the new file ``dst`` (fsynced unless ``fsync`` is
    False, with ``src``'s permissions and times, as shutil.copy2), reading
    it once: returns its size and XXH3-64. OSErrors name the file they are
    about."""
    digest, size = xxhash.xxh3_64(), 0
    view = memoryview(bytearray(_COPY_CHUNK))
    with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
        while got := _read_some(fin, view, src):
            digest.update(view[:got])
            try:
                done = 0
                while done < got:
                    done += fout.write(view[done:got])
            except OSError as exc:
                raise error_about(exc, dst) from None
            size += got
            progress.advance(got)
        try:
            if fsync:
                os.fsync(fout.fileno())
        except OSError as exc:
            raise error_about(exc, dst) from None
    shutil.copystat(src, dst)
    return size, digest.hexdigest()


def _read_some(f, view: memoryview, path: str) -> int:
    try:
        return f.readinto(view)
    except OSError as exc:
        raise error_about(exc, path) from None


def _hash_file(path: str, *, progress: Progress) -> str:
    digest = xxhash.xxh3_64()
    view = memoryview(bytearray(_COPY_CHUNK))
    with open(path, "rb", buffering=0) as f:
        while got := _read_some(f, view, path):
            digest.update(view[:got])
            progress.advance(got)
    return digest.hexdigest()


def _compare_files(original: str, copy: str, *, progress: Progress) -> tuple[bool, str | None]:
    """Whether the two files hold the same bytes, and the XXH3-64 of
    ``copy`` when they do (None when they do not: the reading stops at the
    first difference)."""
    if os.path.getsize(original) != os.path.getsize(copy):
        return False, None
    digest = xxhash.xxh3_64()
    va, vb = memoryview(bytearray(_COPY_CHUNK)), memoryview(bytearray(_COPY_CHUNK))
    with open(original, "rb", buffering=0) as fa, open(copy, "rb", buffering=0) as fb:
        while True:
            got = _read_full(fb, vb, copy)
            if _read_full(fa, va, original) != got or va[:got] != vb[:got]:
                return False, None
            if not got:
                return True, digest.hexdigest()
            digest.update(vb[:got])
            progress.advance(got)


def _read_full(f, view: memoryview, path: str) -> int:
    """Fill ``view`` from ``f`` (less only at the end of the file)."""
    done = 0
    while done < len(view):
        got = _read_some(f, view[done:], path)
        if not got:
            break
        done += got
    return done


def _changed(full: str, got: str, want: str) -> str:
    return (f"{full}: its XXH3-64 is {got} but {MANIFEST} lists {want}: changed since the "
            "directory was compressed; fetch or copy it again")


# -- building an output directory ------------------------------------------------------

def _check_destination(src: str, dst: str) -> None:
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise FormatError(f"{dst}: exists and is not a directory")
    inner, outer = os.path.realpath(src), os.path.realpath(dst)
    common = os.path.commonpath([inner, outer])
    if common in (inner, outer):            # replacing dst would delete src, or walk into dst
        where = "is" if inner == outer else "is inside" if common == inner else "contains"
        raise FormatError(f"{dst}: {where} the source directory {src}; choose an output "
                          "directory outside it")


def _build(src: str, dst: str, overwrite: bool, fill) -> None:
    """Run ``fill(staging)`` on a new staging directory next to ``dst``, give
    its directories the permissions of ``src``'s, and give it the name
    ``dst``; on any failure it is removed and ``dst`` is left as it was."""
    staging = make_staging_directory(dst)
    try:
        fill(staging)
        # Directories keep their source's permissions (the staging one is
        # 0700), but stay writable by their owner, so that --force can
        # replace them.
        for rel, full in walk(src, directories=True):
            target = os.path.join(staging, rel)
            if os.path.isdir(target):
                os.chmod(target, file_mode(full) | stat.S_IRWXU)
        publish_directory(staging, dst, overwrite=overwrite)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        # "No space left on device" about a file of the staging directory is
        # about that file of the output to the user.
        name = exc.filename if isinstance(exc, OSError) else None
        if isinstance(name, str) and name.startswith(staging + os.sep):
            raise error_about(exc, os.path.join(dst, os.path.relpath(name, staging))) from None
        if isinstance(exc, FloatzipError) and len(exc.args) == 1 and staging in str(exc):
            raise type(exc)(str(exc).replace(staging, dst)) from None
        raise


def _target(staging: str, rel: str) -> str:
    target = os.path.join(staging, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    return target


# -- the directory jobs --------------------------------------------------------------

def compress_directory(src: str, dst: str, compress_file, *, overwrite: bool = False,
                       progress=False, workers=None, backend=None,
                       lane_symbols: int = DEFAULT_LANE_SYMBOLS, fsync: bool = True,
                       format_version: int = container.FORMAT_VERSION) -> dict:
    """Compress a model directory: every ``*.safetensors`` file through
    ``compress_file`` (api.compress_file) under its own name, every other
    file copied as is, version-control folders left out, and a manifest
    listing them all written, each fsynced unless ``fsync`` is False. A
    safetensors file holding a dtype this floatzip does not know is copied
    as is too, and named in the summary's ``uncoded``. One progress bar for
    the whole job, in bytes of every file. Returns the summary (see
    :func:`summary`)."""
    _check_destination(src, dst)
    skipped, coded, copied, uncoded, sizes = [], [], [], {}, {}
    for rel, full in walk(src, skipped=skipped):
        sizes[rel] = os.path.getsize(full)
        if rel == MANIFEST:
            raise FormatError(f"{full}: the source directory holds a {MANIFEST}: it is "
                              "already compressed; decompress it first")
        if not rel.endswith(".safetensors"):
            copied.append(rel)
            continue
        # Headers are read first, so that a file that cannot be compressed
        # stops the job before any work is done.
        try:
            with open(full, "rb") as f:
                header = read_header(f, full)
        except UnsupportedError as exc:
            uncoded[rel] = str(exc)
            copied.append(rel)
            continue
        if container.is_floatzip_metadata(header.metadata):
            raise FormatError(f"{full}: already a floatzip file; decompress the directory "
                              "first")
        coded.append(rel)
    if not coded:
        why = "" if not uncoded else f" ({'; '.join(uncoded.values())})"
        raise FormatError(f"{src}: holds no .safetensors file to compress{why} (weights in "
                          "pickle .bin or .pt files must be converted to safetensors first)")
    coded_set = set(coded)
    done_coded, done_copied = {}, {}
    file_kw = {"workers": workers, "backend": backend, "lane_symbols": lane_symbols,
               "overwrite": False, "fsync": fsync, "format_version": format_version}
    manifest_bytes = 0

    def fill(staging):
        nonlocal manifest_bytes
        with _job_bar(src, sizes.values(), progress) as bar:
            for rel, nbytes in sizes.items():           # in walk order
                full, target = os.path.join(src, rel), _target(staging, rel)
                if rel in coded_set:
                    s = _run_file(bar, nbytes, compress_file, full, target, **file_kw)
                    done_coded[rel] = {key: s[key] for key in
                                       ("original_bytes", "compressed_bytes", "tensors")}
                else:
                    size, digest = _run_file(bar, nbytes, _copy_file, full, target,
                                             fsync=fsync)
                    done_copied[rel] = {"bytes": size, "xxh3": digest}
            manifest_bytes = write_manifest(staging, done_coded, done_copied, fsync=fsync)

    _build(src, dst, overwrite, fill)
    return summary(done_coded, {rel: e["bytes"] for rel, e in done_copied.items()},
                   manifest_bytes, skipped=skipped, uncoded=uncoded)


def decompress_directory(src: str, dst: str, decompress_file, *, overwrite: bool = False,
                         progress=False, workers=None, backend=None, fsync: bool = True) -> dict:
    """Restore a compressed directory: the files its manifest lists as
    compressed through ``decompress_file`` (api.decompress_file), every
    other file copied, each copied file checked against the size and
    XXH3-64 the manifest lists, each file fsynced unless ``fsync`` is
    False. The directory is first checked against its manifest: a listed
    file missing or changed, or an unlisted floatzip file, is a
    CorruptDataError and nothing is written. Returns the summary."""
    _check_destination(src, dst)
    layout = inspect_directory(src)
    if layout.problems:
        raise mismatch_error(src, layout.problems)
    coded_set = set(layout.coded)
    done_coded, done_copied = {}, {}
    names = sorted(layout.coded + layout.copied, key=layout.order.__getitem__)

    def fill(staging):
        with _job_bar(src, (layout.sizes[rel] for rel in names), progress) as bar:
            for rel in names:
                full, target = layout.full(rel), _target(staging, rel)
                if rel in coded_set:
                    s = _run_file(bar, layout.sizes[rel], decompress_file, full, target,
                                  workers=workers, backend=backend, overwrite=False,
                                  fsync=fsync)
                    done_coded[rel] = {"original_bytes": s["original_bytes"],
                                       "compressed_bytes": s["compressed_bytes"],
                                       "tensors": s["tensors"]}
                    want = layout.manifest.coded[rel].get("original_bytes")
                    if want is not None and s["original_bytes"] != want:
                        raise CorruptDataError(
                            f"{full}: restores {s['original_bytes']} bytes but {MANIFEST} "
                            f"lists {want}: changed since the directory was compressed")
                else:
                    size, digest = _run_file(bar, layout.sizes[rel], _copy_file, full,
                                             target, fsync=fsync)
                    want = layout.expected_xxh3(rel)
                    if want is not None and digest != want:
                        raise CorruptDataError(_changed(full, digest, want))
                    done_copied[rel] = size

    _build(src, dst, overwrite, fill)
    return summary(done_coded, done_copied, os.path.getsize(layout.manifest.path),
                   skipped=layout.skipped)


def check_directory(path: str, check_file, *, progress=False, **kw) -> VerifyResult:
    """check() of a compressed directory: the directory against its manifest
    (inspect_directory), every floatzip file in it through ``check_file``
    (api's check of one file, given ``kw`` and a ``progress``), and every
    copied file the manifest gives an XXH3-64 for against it. Raises
    FormatError if there is no manifest; an unreadable one is a problem."""
    try:
        layout = inspect_directory(path)
    except CorruptDataError as exc:
        return VerifyResult(False, [str(exc)])
    problems = list(layout.problems)
    hashed = {rel for rel in layout.copied if layout.expected_xxh3(rel) is not None}
    names = sorted([*layout.coded, *layout.unlisted, *hashed], key=layout.order.__getitem__)
    with _job_bar(path, (layout.sizes[rel] for rel in names), progress) as bar:
        for rel in names:
            full = layout.full(rel)
            if rel in hashed:
                got = _run_file(bar, layout.sizes[rel], _hash_file, full)
                if got != layout.expected_xxh3(rel):
                    problems.append(_changed(full, got, layout.expected_xxh3(rel)))
            else:
                problems += _run_file(bar, layout.sizes[rel], check_file, full, **kw).problems
    return VerifyResult(not problems, problems)


def verify_directory(original: str, compressed: str, verify_file, *, progress=False,
                     **kw) -> VerifyResult:
    """verify() of directories: whether ``compressed`` restores ``original``
    bit for bit, by the rules decompress follows. With a manifest,
    ``compressed`` is checked against it as decompress checks it, each file
    it lists as compressed is verified against its original by
    ``verify_file`` (api's verify of one floatzip file, given ``kw`` and a
    ``progress``), and each other file is compared byte for byte and
    checked against the XXH3-64 the manifest lists. Without one, it is a
    plain directory (a restored copy, say) compared byte for byte: a
    floatzip file in it then differs, as decompress would refuse it.
    Version-control folders are left out of both sides."""
    if os.path.isdir(original) != os.path.isdir(compressed):
        why = f"{original} and {compressed}: one is a directory, the other is not"
        return VerifyResult(False, [why])
    originals = dict(walk(original))
    if os.path.lexists(os.path.join(compressed, MANIFEST)):
        try:
            layout = inspect_directory(compressed)
        except CorruptDataError as exc:
            return VerifyResult(False, [str(exc)])
        problems = list(layout.problems)
        # Listed files that are missing or changed, and unlisted floatzip
        # files, are among its problems already.
        accounted = set(layout.manifest.coded) | set(layout.manifest.copied or ()) \
            | set(layout.unlisted)
        coded = set(layout.coded)
        present = sorted(layout.coded + layout.copied, key=layout.order.__getitem__)
        sizes = layout.sizes
    else:
        layout, problems, accounted, coded = None, [], set(), set()
        present_files = dict(walk(compressed))
        present = list(present_files)
        sizes = {rel: os.path.getsize(full) for rel, full in present_files.items()}
    for rel in sorted(set(originals) - set(present) - accounted):
        problems.append(f"{os.path.join(compressed, rel)}: missing, while "
                        f"{originals[rel]} exists")
    for rel in sorted(set(present) - set(originals)):
        problems.append(f"{os.path.join(compressed, rel)}: has no counterpart in {original}")
    compared = [rel for rel in present if rel in originals]
    with _job_bar(compressed, (sizes[rel] for rel in compared), progress) as bar:
        for rel in compared:
            full = os.path.join(compressed, rel)
            if rel in coded:
                problems += _run_file(bar, sizes[rel], verify_file, originals[rel], full,
                                      **kw).problems
                continue
            same, digest = _run_file(bar, sizes[rel], _compare_files, originals[rel], full)
            want = layout.expected_xxh3(rel) if layout is not None else None
            if not same and want is not None:
                # Which side changed: the copy since it was compressed, or the original?
                digest = _hash_file(full, progress=NO_PROGRESS)
            if want is not None and digest != want:
                problems.append(_changed(full, digest, want))
            elif not same:
                hint = ""
                if layout is None and rel.endswith(".safetensors") and is_floatzip(full):
                    hint = (f" (a floatzip file, but {compressed} has no {MANIFEST}: "
                            "decompress refuses it)")
                problems.append(f"{full}: differs from {originals[rel]}{hint}")
    return VerifyResult(not problems, problems)


def summary(coded: dict, copied: dict, manifest_bytes: int, *, skipped=(),
            uncoded=None) -> dict:
    """What a directory job did, honestly counted. ``coded``: relative path
    -> the file function's summary (original_bytes, compressed_bytes,
    tensors); ``copied``: relative path -> bytes; ``manifest_bytes``: the
    manifest's size (written by compress, read by decompress). Returns
    ``files`` (= ``coded``), ``copied``, ``skipped`` (version-control
    folders left out), ``uncoded`` (safetensors files copied as is: path ->
    why), the totals ``coded_files``, ``coded_original_bytes``,
    ``coded_compressed_bytes``, ``copied_files``, ``copied_bytes``, and
    ``original_bytes`` / ``compressed_bytes``: every byte of the original
    and of the compressed directory (copied files and manifest included)."""
    coded_original = sum(s["original_bytes"] for s in coded.values())
    coded_compressed = sum(s["compressed_bytes"] for s in coded.values())
    copied_bytes = sum(copied.values())
    return {"files": coded, "copied": copied, "skipped": list(skipped),
            "uncoded": dict(uncoded or {}),
            "coded_files": len(coded), "coded_original_bytes": coded_original,
            "coded_compressed_bytes": coded_compressed,
            "copied_files": len(copied), "copied_bytes": copied_bytes,
            "original_bytes": coded_original + copied_bytes,
            "compressed_bytes": coded_compressed + copied_bytes + manifest_bytes}
