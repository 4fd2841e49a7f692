"""Public API: compress, decompress, verify, check — files or model
directories. Reading tensors: :mod:`floatzip.reader` (``safe_open``)."""
from __future__ import annotations

import errno
import os

from .codecs.encoded import check_lane_symbols, encode_tensor
from .codecs.model import DEFAULT_LANE_SYMBOLS
from .decode import decode_stored
from .directory import (
    MANIFEST,
    check_directory,
    is_floatzip,
    process_directory,
    require_manifest,
    safetensors_kind,
    walk,
    write_manifest,
)
from .errors import FloatzipError, FormatError, OutputExistsError, UnsupportedError
from .format import container
from .format.safetensors_header import read_header
from .io_utils import atomic_output, file_mode, resolve_workers
from .reader import FloatzipReader, TensorSlice, safe_open  # noqa: F401  (public names)
from .results import VerifyResult


def _progress(total, desc, enabled):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled,
                leave=False)


# -- single files --------------------------------------------------------------

def compress_file(src, dst, *, workers=None, backend=None, progress=False,
                  lane_symbols: int = DEFAULT_LANE_SYMBOLS, overwrite: bool = True) -> dict:
    """Compress one .safetensors file. Returns a summary dict."""
    src, dst = os.fspath(src), os.fspath(dst)
    workers = resolve_workers(workers)
    check_lane_symbols(lane_symbols)
    try:
        with open(src, "rb") as f:
            header = read_header(f, src)
    except OSError as exc:
        raise FormatError(f"{src}: cannot read file: {exc.strerror or exc}") from None
    if header.metadata and container.KEY_VERSION in header.metadata:
        raise FormatError(f"{src}: already a floatzip file; decompress it first")

    def encoded_tensors(bar):
        # Each tensor is read into memory on its own (not memory-mapped), so
        # the resident set stays near one tensor however large the file.
        for name, entry in header.tensors.items():
            region = container.read_range(src, header.data_start + entry.begin, entry.nbytes)
            yield name, encode_tensor(region, entry.dtype, entry.shape, backend=backend,
                                      workers=workers, lane_symbols=lane_symbols)
            bar.update(entry.nbytes)

    with _progress(header.data_bytes, os.path.basename(src), progress) as bar:
        count = container.write_file(dst, header.raw, encoded_tensors(bar), mode=file_mode(src),
                                     overwrite=overwrite)
    return {"original_bytes": os.path.getsize(src), "compressed_bytes": os.path.getsize(dst),
            "tensors": count}


def decompress_file(src, dst, *, workers=None, backend=None, progress=False,
                    overwrite: bool = True) -> dict:
    """Restore the original .safetensors file, byte for byte."""
    src, dst = os.fspath(src), os.fspath(dst)
    workers = resolve_workers(workers)
    fz = container.FloatzipFile(src)
    source = fz.source
    with atomic_output(dst, mode=file_mode(src), overwrite=overwrite) as out, \
            _progress(source.data_bytes, os.path.basename(src), progress) as bar:
        out.write(len(source.raw).to_bytes(8, "little"))
        out.write(source.raw)
        for name in source.tensors:      # in data-offset order: the output is sequential
            out.write(decode_stored(fz, name, backend, workers, mapped=False).data)
            bar.update(source.tensors[name].nbytes)
    return {"original_bytes": os.path.getsize(dst), "compressed_bytes": os.path.getsize(src),
            "tensors": len(source.tensors)}


# -- directories ---------------------------------------------------------------

def _check_output(src: str, dst: str, overwrite: bool) -> None:
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        raise FormatError(f"{dst}: is the input itself; choose another output")
    if os.path.lexists(dst) and not overwrite:
        raise OutputExistsError(f"{dst}: already exists; pass overwrite=True (CLI: --force) "
                                "to replace it")


def compress(src, dst, *, workers=None, backend=None, progress=False, overwrite=False,
             lane_symbols: int = DEFAULT_LANE_SYMBOLS) -> dict:
    """Compress a .safetensors file, or a model directory: every
    ``*.safetensors`` file is compressed under its own name, every other file
    copied, and a ``floatzip.json`` manifest written. An existing ``dst`` is
    replaced only with ``overwrite=True``. ``lane_symbols`` (1..4096,
    default 1024) trades size for GPU parallelism: 256 gives a GPU 4x the
    lanes to decode at once for ~0.6% more bytes (README, GPU results)."""
    src, dst = os.fspath(src), os.fspath(dst)
    _check_output(src, dst, overwrite)
    check_lane_symbols(lane_symbols)
    if os.path.isdir(src):
        if not any(rel.endswith(".safetensors") for rel, _ in walk(src)):
            raise FormatError(f"{src}: holds no .safetensors file to compress (weights in "
                              "pickle .bin or .pt files must be converted to safetensors first)")
        return process_directory(src, dst, compress_file,
                                 lambda rel, full: rel.endswith(".safetensors"),
                                 write_manifest, {}, overwrite=overwrite, workers=workers,
                                 backend=backend, progress=progress, lane_symbols=lane_symbols)
    return compress_file(src, dst, workers=workers, backend=backend, progress=progress,
                         lane_symbols=lane_symbols, overwrite=overwrite)


def decompress(src, dst, *, workers=None, backend=None, progress=False, overwrite=False) -> dict:
    """Inverse of :func:`compress`, for a file or a compressed directory."""
    src, dst = os.fspath(src), os.fspath(dst)
    _check_output(src, dst, overwrite)
    if os.path.isdir(src):
        require_manifest(src)
        return process_directory(src, dst, decompress_file,
                                 lambda rel, full: rel.endswith(".safetensors") and is_floatzip(full),
                                 lambda d, files: None, {"outside_links": False},
                                 overwrite=overwrite, workers=workers, backend=backend,
                                 progress=progress)
    return decompress_file(src, dst, workers=workers, backend=backend, progress=progress,
                           overwrite=overwrite)


def verify(original, compressed, *, workers=None, backend=None) -> VerifyResult:
    """Decode ``compressed`` and compare it with ``original`` byte for byte
    (files or directories). Never writes anything."""
    original, compressed = os.fspath(original), os.fspath(compressed)
    if os.path.isdir(original) != os.path.isdir(compressed):
        return VerifyResult(False, [f"{original} and {compressed}: one is a directory, the other is not"])
    if os.path.isdir(original):
        problems = []
        names_a = {rel for rel, _ in walk(original)}
        names_b = {rel for rel, _ in walk(compressed)} - {MANIFEST}
        for rel in sorted(names_a ^ names_b):
            problems.append(f"{rel}: present in only one of the directories")
        for rel in sorted(names_a & names_b):
            problems += verify(os.path.join(original, rel), os.path.join(compressed, rel),
                               workers=workers, backend=backend).problems
        return VerifyResult(not problems, problems)
    if not is_floatzip(compressed):
        same = _same_file_bytes(original, compressed)
        return VerifyResult(same, [] if same else [f"{compressed}: differs from {original}"])
    workers = resolve_workers(workers)
    try:
        fz = container.FloatzipFile(compressed)
        with open(original, "rb") as f:
            head = f.read(8 + len(fz.source.raw))
            expected = len(fz.source.raw).to_bytes(8, "little") + fz.source.raw
            if head != expected:
                return VerifyResult(False, [f"{compressed}: header differs from {original}'s"])
            if os.fstat(f.fileno()).st_size != fz.source.data_start + fz.source.data_bytes:
                return VerifyResult(False, [f"{original}: size differs from what {compressed} restores"])
            for name, entry in fz.source.tensors.items():
                want = f.read(entry.nbytes)
                got = decode_stored(fz, name, backend, workers, mapped=False)
                if got.tobytes() != want:
                    return VerifyResult(False, [f"{compressed}: tensor {name!r} differs from {original}"])
    except FloatzipError as exc:
        return VerifyResult(False, [str(exc)])
    return VerifyResult(True, [])


def check(path, *, workers=None, backend=None) -> VerifyResult:
    """Decode every tensor of a floatzip file, or of every floatzip file in
    a compressed model directory, and check it against the XXH3-64 checksum
    stored with it (and the original header against its own): an integrity
    test that needs no original (as ``zstd --test``). Never writes anything.

    Damage is reported in the result: bad bytes, a file the directory's
    manifest lists that is missing, or a manifest entry that points outside
    the directory. A path that is not there, a plain safetensors file, a
    directory without a manifest and a file of a newer format raise instead
    (FileNotFoundError, FormatError, UnsupportedError), as decompress would:
    they are no damage."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if os.path.isdir(path):
        return check_directory(path, _check_file, workers=workers, backend=backend)
    if safetensors_kind(path) == "plain":
        raise FormatError(f"{path}: not a floatzip file (a safetensors file without "
                          f"'{container.KEY_VERSION}' metadata); nothing to check")
    return _check_file(path, workers=workers, backend=backend)


def _check_file(path: str, *, workers, backend) -> VerifyResult:
    """check() of a file that is not a plain safetensors file."""
    workers = resolve_workers(workers)
    try:
        fz = container.FloatzipFile(path)
        for name in fz.source.tensors:
            decode_stored(fz, name, backend, workers, mapped=False)
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
