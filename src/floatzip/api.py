"""Public API: compress, decompress, verify, check — files or model
directories. Reading tensors: :mod:`floatzip.reader` (``safe_open``)."""
from __future__ import annotations

import contextlib
import errno
import os

import numpy as np

from .codecs.encoded import check_lane_symbols
from .codecs.model import DEFAULT_LANE_SYMBOLS
from .background_writer import BackgroundWriter
from .decode import StreamDecoder
from .encode import encode_file
from .directory import check_directory, compress_directory, decompress_directory, verify_directory
from .errors import FloatzipError, FormatError, OutputExistsError, UnsupportedError
from .format import container
from .format.container import FORMAT_VERSION
from .format.safetensors_header import read_header
from .io_utils import atomic_output, file_mode, pread_exact, resolve_workers
from .model_dir import safetensors_kind
from .progress import Progress
from .reader import FloatzipReader, TensorSlice, safe_open  # noqa: F401  (public names)
from .results import VerifyResult


@contextlib.contextmanager
def _job_progress(progress, total: int, desc: str):
    """The Progress a file job advances: the caller's (a directory job's
    one bar) or, for ``progress`` True or False, a bar of its own."""
    if isinstance(progress, Progress):
        yield progress
        return
    with Progress(total, desc, enabled=bool(progress)) as bar:
        yield bar


def check_format_version(version) -> None:
    if isinstance(version, bool) or version not in range(1, FORMAT_VERSION + 1):
        raise UnsupportedError(f"format_version must be 1 to {FORMAT_VERSION} (the versions "
                               f"this floatzip writes), got {version!r}")


# -- single files --------------------------------------------------------------

def compress_file(src, dst, *, workers=None, backend=None, progress=False,
                  lane_symbols: int = DEFAULT_LANE_SYMBOLS, overwrite: bool = True,
                  fsync: bool = True, format_version: int = FORMAT_VERSION) -> dict:
    """Compress one .safetensors file, a step at a time (memory stays
    bounded whatever the tensors' sizes). ``fsync``, ``format_version``: as
    for :func:`compress`. Returns a summary dict."""
    src, dst = os.fspath(src), os.fspath(dst)
    workers = resolve_workers(workers)
    check_lane_symbols(lane_symbols)
    check_format_version(format_version)
    try:
        f = open(src, "rb", buffering=0)
    except OSError as exc:
        raise FormatError(f"{src}: cannot read file: {exc.strerror or exc}") from None
    with f:
        header = read_header(f, src)
        if container.is_floatzip_metadata(header.metadata):
            raise FormatError(f"{src}: already a floatzip file; decompress it first")
        with _job_progress(progress, header.data_start + header.data_bytes,
                           os.path.basename(src)) as bar, \
                atomic_output(dst, mode=file_mode(src), overwrite=overwrite,
                              fsync=fsync) as out:
            count = encode_file(f.fileno(), header, out.fileno(), src=src, dst=dst,
                                backend=backend, workers=workers, lane_symbols=lane_symbols,
                                progress=bar, version=format_version, fsync=fsync)
            bar.advance(header.data_start)
    return {"original_bytes": os.path.getsize(src), "compressed_bytes": os.path.getsize(dst),
            "tensors": count}


def decompress_file(src, dst, *, workers=None, backend=None, progress=False,
                    overwrite: bool = True, fsync: bool = True) -> dict:
    """Restore the original .safetensors file, byte for byte, a step at a
    time (memory stays bounded whatever the tensors' sizes). ``fsync``: as
    for :func:`compress`."""
    src, dst = os.fspath(src), os.fspath(dst)
    workers = resolve_workers(workers)
    fz = container.FloatzipFile(src)
    source = fz.source
    with open(src, "rb", buffering=0) as f, \
            _job_progress(progress, os.path.getsize(src), os.path.basename(src)) as bar, \
            atomic_output(dst, mode=file_mode(src), overwrite=overwrite, fsync=fsync) as out:
        with BackgroundWriter(out.fileno(), writeback=fsync) as writer:
            writer.write(len(source.raw).to_bytes(8, "little") + source.raw)
            for _, piece in _decoded(fz, f.fileno(), bar, backend, workers):
                writer.write(piece)
    return {"original_bytes": os.path.getsize(dst), "compressed_bytes": os.path.getsize(src),
            "tensors": len(source.tensors)}


def _decoded(fz: container.FloatzipFile, fd: int, bar: Progress, backend, workers):
    """(tensor name, piece) of every tensor's original bytes, in the order
    of the original file's data (so: the restored file's bytes after its
    header, in order), moving the bar through the whole compressed file.
    Each tensor's checksum is checked after its last piece (see
    StreamDecoder.chunks), before the next tensor's first."""
    decoder = StreamDecoder(fz, fd, backend=backend, workers=workers)
    for name in fz.source.tensors:
        for piece in _moving(bar, fz.tensors[name], decoder.chunks(name)):
            yield name, piece
    bar.advance(fz.header.data_start)


def _moving(bar: Progress, stored, pieces):
    """The pieces of one tensor, moving the bar through its blob's bytes
    (the job's unit) as its decoded bytes come: a file of one large tensor
    moves as it goes, not at the end."""
    total, done, moved = max(stored.source.nbytes, 1), 0, 0
    for piece in pieces:
        yield piece
        done += piece.size
        target = stored.blob_bytes * done // total
        bar.advance(target - moved)
        moved = target
    bar.advance(stored.blob_bytes - moved)


# -- directories ---------------------------------------------------------------

def _check_output(src: str, dst: str, overwrite: bool) -> None:
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        raise FormatError(f"{dst}: is the input itself; choose another output")
    if os.path.exists(dst) and not (os.path.isfile(dst) or os.path.isdir(dst)):
        # --force would replace a device (/dev/null, say) with a regular file.
        raise FormatError(f"{dst}: is not a regular file or directory; floatzip writes "
                          "regular files only (to write elsewhere, write a file and copy it)")
    if os.path.lexists(dst) and not overwrite:
        raise OutputExistsError(f"{dst}: already exists; pass overwrite=True (CLI: --force) "
                                "to replace it")


def compress(src, dst, *, workers=None, backend=None, progress=False, overwrite=False,
             lane_symbols: int = DEFAULT_LANE_SYMBOLS, fsync: bool = True,
             format_version: int = FORMAT_VERSION) -> dict:
    """Compress a .safetensors file, or a model directory: every
    ``*.safetensors`` file is compressed under its own name, every other file
    copied, and a ``floatzip.json`` manifest written. An existing ``dst`` is
    replaced only with ``overwrite=True``. ``lane_symbols`` (1..4096,
    default 1024) trades size for GPU parallelism: 256 gives a GPU 4x the
    lanes to decode at once for ~0.6% more bytes (README, GPU results).

    ``fsync`` False: the output is not fsynced before the job returns, which
    saves the wait for the disk (most of decompress's time on a large file:
    README, whole-command results). The trade: after a power failure or an
    OS crash the output may be missing, empty or partial on disk. Another
    process never sees a partial output either way (it gets its name by an
    atomic rename once complete).

    ``format_version``: the newest file format version (docs/FORMAT.md) the
    output may use; 1 keeps every file readable by floatzip 0.1, at the cost
    of what format 2 saves (constant tensors, the sign coded with the
    exponent, bits that never vary). Either way a file is written in the
    lowest version its tensors need."""
    src, dst = os.fspath(src), os.fspath(dst)
    _check_output(src, dst, overwrite)
    check_lane_symbols(lane_symbols)
    check_format_version(format_version)
    if os.path.isdir(src):
        return compress_directory(src, dst, compress_file, overwrite=overwrite,
                                  progress=progress, workers=workers, backend=backend,
                                  lane_symbols=lane_symbols, fsync=fsync,
                                  format_version=format_version)
    return compress_file(src, dst, workers=workers, backend=backend, progress=progress,
                         lane_symbols=lane_symbols, overwrite=overwrite, fsync=fsync,
                         format_version=format_version)


def decompress(src, dst, *, workers=None, backend=None, progress=False, overwrite=False,
               fsync: bool = True) -> dict:
    """Inverse of :func:`compress`, for a file or a compressed directory
    (``fsync``: as there)."""
    src, dst = os.fspath(src), os.fspath(dst)
    _check_output(src, dst, overwrite)
    if os.path.isdir(src):
        return decompress_directory(src, dst, decompress_file, overwrite=overwrite,
                                    progress=progress, workers=workers, backend=backend,
                                    fsync=fsync)
    return decompress_file(src, dst, workers=workers, backend=backend, progress=progress,
                           overwrite=overwrite, fsync=fsync)


def verify(original, compressed, *, workers=None, backend=None, progress=False) -> VerifyResult:
    """Decode ``compressed`` and compare it with ``original`` byte for byte
    (files or directories), by the rules decompress follows: a compressed
    directory is checked against its manifest as decompress checks it
    (directory.verify_directory). Never writes anything. A path that is not
    there raises FileNotFoundError, as for decompress."""
    original, compressed = os.fspath(original), os.fspath(compressed)
    for path in (original, compressed):
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if os.path.isdir(original) or os.path.isdir(compressed):
        return verify_directory(original, compressed, _verify_file, workers=workers,
                                backend=backend, progress=progress)
    kind = safetensors_kind(compressed)
    if kind != "floatzip":
        same = _same_file_bytes(original, compressed)
        why = ""
        if not same and kind is None:   # a damaged floatzip file, perhaps: say what is wrong
            try:
                container.FloatzipFile(compressed)
            except FloatzipError as exc:
                why = f" (read as a floatzip file: {exc})"
        return VerifyResult(same, [] if same else [f"{compressed}: differs from {original}{why}"])
    return _verify_file(original, compressed, workers=workers, backend=backend,
                        progress=progress)


def _verify_file(original: str, compressed: str, *, workers, backend,
                 progress=False) -> VerifyResult:
    """verify() of a floatzip file against its original, a step at a time."""
    workers = resolve_workers(workers)
    try:
        fz = container.FloatzipFile(compressed)
        with open(original, "rb", buffering=0) as f, open(compressed, "rb", buffering=0) as c, \
                _job_progress(progress, os.path.getsize(compressed),
                              os.path.basename(compressed)) as bar:
            fd = f.fileno()
            expected = len(fz.source.raw).to_bytes(8, "little") + fz.source.raw
            if os.fstat(fd).st_size != fz.source.data_start + fz.source.data_bytes:
                return VerifyResult(False, [f"{original}: size differs from what {compressed} restores"])
            head = np.empty(len(expected), dtype=np.uint8)
            pread_exact(fd, head, 0, original)
            if head.tobytes() != expected:
                return VerifyResult(False, [f"{compressed}: header differs from {original}'s"])
            want, offset, differs = None, fz.source.data_start, None
            for name, piece in _decoded(fz, c.fileno(), bar, backend, workers):
                if differs is not None and name != differs:
                    break           # that tensor was decoded to its end: its checksum held
                if want is None or want.size < piece.size:
                    want = np.empty(piece.size, dtype=np.uint8)
                pread_exact(fd, want[:piece.size], offset, original)
                if not np.array_equal(want[:piece.size], piece):
                    differs = name
                offset += piece.size
            if differs is not None:
                return VerifyResult(False, [f"{compressed}: tensor {differs!r} differs from "
                                            f"{original}"])
    except FloatzipError as exc:
        return VerifyResult(False, [str(exc)])
    return VerifyResult(True, [])


def check(path, *, workers=None, backend=None, progress=False) -> VerifyResult:
    """Decode every tensor of a floatzip file, or of every floatzip file in
    a compressed model directory, and check it against the XXH3-64 checksum
    stored with it (and the original header against its own): an integrity
    test that needs no original (as ``zstd --test``). Never writes anything.

    Damage is reported in the result: bad bytes, and for a directory what
    decompress would refuse (directory.inspect_directory: a listed file
    missing or changed, an unlisted floatzip file, an entry that points
    outside the directory). A path that is not there, a plain safetensors file, a
    directory without a manifest and a file of a newer format raise instead
    (FileNotFoundError, FormatError, UnsupportedError), as decompress would:
    they are no damage."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if os.path.isdir(path):
        return check_directory(path, _check_file, workers=workers, backend=backend,
                               progress=progress)
    if safetensors_kind(path) == "plain":
        raise FormatError(f"{path}: not a floatzip file (a safetensors file without "
                          f"'{container.KEY_VERSION}' metadata); nothing to check")
    return _check_file(path, workers=workers, backend=backend, progress=progress)


def _check_file(path: str, *, workers, backend, progress=False) -> VerifyResult:
    """check() of a file that is not a plain safetensors file."""
    workers = resolve_workers(workers)
    try:
        fz = container.FloatzipFile(path)
        with open(path, "rb", buffering=0) as f, \
                _job_progress(progress, os.path.getsize(path), os.path.basename(path)) as bar:
            for _ in _decoded(fz, f.fileno(), bar, backend, workers):
                pass
    except UnsupportedError:
        raise
    except FloatzipError as exc:
        return VerifyResult(False, [str(exc)])
    return VerifyResult(True, [])


def _same_file_bytes(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
