"""Public API: compress, decompress, verify, safe_open — files or model
directories."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass

import numpy as np

from .codecs.encoded import (
    EncodedTensor,
    check_lane_symbols,
    decode_group_range,
    decode_tensor,
    encode_tensor,
)
from .codecs.layout import LANES
from .codecs.model import DEFAULT_LANE_SYMBOLS
from .dtypes import ITEMSIZE
from .errors import (
    CorruptDataError,
    FloatzipError,
    FormatError,
    OutputExistsError,
    UnsupportedError,
)
from .format import container
from .format.safetensors_header import read_header
from .io_utils import atomic_output, error_about, file_mode, resolve_workers, temporary_prefix

MANIFEST = "floatzip.json"


def _progress(total, desc, enabled):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled,
                leave=False)


# -- single files --------------------------------------------------------------

def compress_file(src, dst, *, workers=None, backend=None, progress=False,
                  lane_symbols: int = DEFAULT_LANE_SYMBOLS) -> dict:
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
        count = container.write_file(dst, header.raw, encoded_tensors(bar), mode=file_mode(src))
    return {"original_bytes": os.path.getsize(src), "compressed_bytes": os.path.getsize(dst),
            "tensors": count}


def decompress_file(src, dst, *, workers=None, backend=None, progress=False) -> dict:
    """Restore the original .safetensors file, byte for byte."""
    src, dst = os.fspath(src), os.fspath(dst)
    workers = resolve_workers(workers)
    fz = container.FloatzipFile(src)
    source = fz.source
    with atomic_output(dst, mode=file_mode(src)) as out, \
            _progress(source.data_bytes, os.path.basename(src), progress) as bar:
        out.write(len(source.raw).to_bytes(8, "little"))
        out.write(source.raw)
        for name in source.tensors:      # in data-offset order: the output is sequential
            out.write(_decode(fz, name, backend, workers, mapped=False).data)
            bar.update(source.tensors[name].nbytes)
    return {"original_bytes": os.path.getsize(dst), "compressed_bytes": os.path.getsize(src),
            "tensors": len(source.tensors)}


def _decode(fz: container.FloatzipFile, name: str, backend, workers, verify=True,
            mapped=True) -> np.ndarray:
    try:
        return decode_tensor(fz.encoded(name, mapped=mapped), backend=backend, workers=workers,
                             verify=verify)
    except CorruptDataError as exc:
        raise CorruptDataError(f"{fz.path}: tensor {name!r}: {exc}") from None


# -- directories ---------------------------------------------------------------

def _safetensors_kind(path: str) -> str | None:
    """"floatzip" or "plain" for a readable safetensors file, by its
    metadata; None if it cannot be read as one."""
    try:
        with open(path, "rb") as f:
            header = read_header(f, path)
    except (OSError, FloatzipError):
        return None
    return "floatzip" if header.metadata and container.KEY_VERSION in header.metadata \
        else "plain"


def _is_floatzip(path: str) -> bool:
    return _safetensors_kind(path) == "floatzip"


def _walk(root: str, directories: bool = False, outside_links: bool = True):
    """(path relative to root, full path) of every file under ``root``, in a
    stable order; with ``directories``, of every directory instead (root
    first). Symbolic links are followed, to files and directories alike (a
    model fetched into the Hugging Face cache is a tree of links); a link to
    a directory it is inside of is an error, not a loop. ``outside_links``
    False: a link that leads out of ``root`` is an error (floatzip writes no
    links, so one in a compressed directory came from elsewhere, and a
    decompressed copy must not carry what it points to)."""
    top = os.path.realpath(root)
    ancestors = {root: {top}}       # real paths of each directory's chain, itself included
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                real = os.path.realpath(full)
                if not outside_links and os.path.commonpath([top, real]) != top:
                    raise FormatError(f"{full}: a symbolic link out of {root} (to {real}); "
                                      "a compressed directory holds none, so it is refused")
                if real in ancestors[dirpath]:
                    raise FormatError(f"{full}: a symbolic link loops back to {real}")
        for name in dirnames:
            full = os.path.join(dirpath, name)
            ancestors[full] = ancestors[dirpath] | {os.path.realpath(full)}
        if directories:
            yield os.path.relpath(dirpath, root), dirpath
            continue
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root), full


def _process_directory(src, dst, file_fn, select, manifest_fn, walk: dict, **kw) -> dict:
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise FormatError(f"{dst}: exists and is not a directory")
    inner, outer = os.path.realpath(src), os.path.realpath(dst)
    common = os.path.commonpath([inner, outer])
    if common in (inner, outer):            # replacing dst would delete src, or walk into dst
        where = "is" if inner == outer else "is inside" if common == inner else "contains"
        raise FormatError(f"{dst}: {where} the source directory {src}; choose an output "
                          "directory outside it")
    # Work in a temporary sibling and rename at the end: no half-written directory.
    parent = os.path.dirname(os.path.abspath(dst))
    try:
        staging = tempfile.mkdtemp(prefix=temporary_prefix(dst), dir=parent)
    except OSError as exc:
        raise error_about(exc, dst) from None
    files = {}
    try:
        for rel, full in _walk(src, **walk):
            if rel == MANIFEST:
                continue
            target = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if select(rel, full):
                summary = file_fn(full, target, **kw)
                files[rel] = summary
            else:
                shutil.copy2(full, target)
        manifest_fn(staging, files)
        # Directories keep their source's permissions (mkdtemp's are 0700),
        # but stay writable by their owner, so that --force can replace them.
        for rel, full in _walk(src, directories=True, **walk):
            target = os.path.join(staging, rel)
            if os.path.isdir(target):
                os.chmod(target, file_mode(full) | stat.S_IRWXU)
        if os.path.islink(dst):
            os.unlink(dst)                  # replace the link, not what it points to
        elif os.path.isdir(dst):
            shutil.rmtree(dst)
        os.replace(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"files": files,
            "original_bytes": sum(s["original_bytes"] for s in files.values()),
            "compressed_bytes": sum(s["compressed_bytes"] for s in files.values())}


def _write_manifest(directory: str, files: dict) -> None:
    doc = {"format": "floatzip", "version": container.FORMAT_VERSION, "files": files}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)


def _require_manifest(directory: str) -> str:
    """The manifest's path, or FormatError if ``directory`` has none."""
    manifest = os.path.join(directory, MANIFEST)
    if not os.path.exists(manifest):
        raise FormatError(f"{directory}: not a floatzip model directory (no {MANIFEST}); "
                          "compress it first with 'floatzip compress'")
    return manifest


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
        if not any(rel.endswith(".safetensors") for rel, _ in _walk(src)):
            raise FormatError(f"{src}: holds no .safetensors file to compress (weights in "
                              "pickle .bin or .pt files must be converted to safetensors first)")
        return _process_directory(src, dst, compress_file,
                                  lambda rel, full: rel.endswith(".safetensors"),
                                  _write_manifest, {}, workers=workers, backend=backend,
                                  progress=progress, lane_symbols=lane_symbols)
    return compress_file(src, dst, workers=workers, backend=backend, progress=progress,
                         lane_symbols=lane_symbols)


def decompress(src, dst, *, workers=None, backend=None, progress=False, overwrite=False) -> dict:
    """Inverse of :func:`compress`, for a file or a compressed directory."""
    src, dst = os.fspath(src), os.fspath(dst)
    _check_output(src, dst, overwrite)
    if os.path.isdir(src):
        _require_manifest(src)
        return _process_directory(src, dst, decompress_file,
                                  lambda rel, full: rel.endswith(".safetensors") and _is_floatzip(full),
                                  lambda d, files: None, {"outside_links": False},
                                  workers=workers, backend=backend, progress=progress)
    return decompress_file(src, dst, workers=workers, backend=backend, progress=progress)


@dataclass
class VerifyResult:
    ok: bool
    problems: list[str]


def verify(original, compressed, *, workers=None, backend=None) -> VerifyResult:
    """Decode ``compressed`` and compare it with ``original`` byte for byte
    (files or directories). Never writes anything."""
    original, compressed = os.fspath(original), os.fspath(compressed)
    if os.path.isdir(original) != os.path.isdir(compressed):
        return VerifyResult(False, [f"{original} and {compressed}: one is a directory, the other is not"])
    if os.path.isdir(original):
        problems = []
        names_a = {rel for rel, _ in _walk(original)}
        names_b = {rel for rel, _ in _walk(compressed)} - {MANIFEST}
        for rel in sorted(names_a ^ names_b):
            problems.append(f"{rel}: present in only one of the directories")
        for rel in sorted(names_a & names_b):
            problems += verify(os.path.join(original, rel), os.path.join(compressed, rel),
                               workers=workers, backend=backend).problems
        return VerifyResult(not problems, problems)
    if not _is_floatzip(compressed):
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
                got = _decode(fz, name, backend, workers, mapped=False)
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
        return _check_directory(path, workers=workers, backend=backend)
    if _safetensors_kind(path) == "plain":
        raise FormatError(f"{path}: not a floatzip file (a safetensors file without "
                          f"'{container.KEY_VERSION}' metadata); nothing to check")
    return _check_file(path, workers=workers, backend=backend)


def _check_file(path: str, *, workers, backend) -> VerifyResult:
    """check() of a file that is not a plain safetensors file."""
    workers = resolve_workers(workers)
    try:
        fz = container.FloatzipFile(path)
        for name in fz.source.tensors:
            _decode(fz, name, backend, workers, mapped=False)
    except UnsupportedError:
        raise
    except FloatzipError as exc:
        return VerifyResult(False, [str(exc)])
    return VerifyResult(True, [])


def _check_directory(path: str, **kw) -> VerifyResult:
    """check() of every floatzip file in a compressed directory (the files
    decompress decodes), and of the manifest's list of them."""
    manifest = _require_manifest(path)
    try:
        with open(manifest) as f:
            listed = json.load(f)["files"]
        if not isinstance(listed, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        return VerifyResult(False, [f"{manifest}: unreadable, or not a floatzip manifest"])
    found = {rel: full for rel, full in _walk(path, outside_links=False)
             if rel.endswith(".safetensors") and _is_floatzip(full)}
    problems = []
    root = os.path.realpath(path)
    for rel in sorted(listed):
        full = os.path.join(path, rel)
        if os.path.isabs(rel) or os.path.commonpath(
                [root, os.path.realpath(full)]) != root:
            problems.append(f"{manifest}: entry {rel!r} points outside {path}")
        elif rel not in found:
            kind = "missing" if not os.path.lexists(full) else "not a floatzip file"
            problems.append(f"{full}: listed in {MANIFEST} but {kind}")
    for rel in sorted(found):
        problems += _check_file(found[rel], **kw).problems
    return VerifyResult(not problems, problems)


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


# -- reading tensors -------------------------------------------------------------

def safe_open(path, framework: str = "np", device: str = "cpu", *, backend=None,
              workers: int | None = 1):
    """Read tensors from a floatzip file, mirroring ``safetensors.safe_open``::

        with floatzip.safe_open("model.fz.safetensors", framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)

    A plain (uncompressed) safetensors file is opened by safetensors itself,
    so one call reads a directory holding both kinds."""
    if _safetensors_kind(os.fspath(path)) == "plain":
        import safetensors
        return safetensors.safe_open(os.fspath(path), framework=framework, device=device)
    return FloatzipReader(path, framework, device, backend=backend, workers=workers)


class FloatzipReader:
    """An open floatzip file (what :func:`safe_open` returns for one): the
    methods of safetensors' reader, plus ``get_encoded`` and ``get_bytes``."""

    def __init__(self, path, framework: str = "np", device: str = "cpu", *,
                 backend=None, workers: int | None = 1):
        if framework not in ("np", "numpy", "pt", "torch", "pytorch"):
            raise ValueError(f"framework must be 'pt' (torch) or 'np' (numpy), not "
                             f"{framework!r}: floatzip reads into no other framework")
        self._file = container.FloatzipFile(path)
        self._framework = "np" if framework in ("np", "numpy") else "pt"
        self._device = device
        self._backend = backend
        self._workers = resolve_workers(workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self) -> list[str]:
        """Tensor names, sorted (as safetensors lists them)."""
        return sorted(self._file.source.tensors)

    def offset_keys(self) -> list[str]:
        """Tensor names in the order of their data in the original file."""
        return list(self._file.source.tensors)

    def metadata(self) -> dict[str, str] | None:
        """The original file's ``__metadata__``."""
        return self._file.source.metadata

    def get_encoded(self, name: str) -> EncodedTensor:
        """The tensor still coded (sections are views of the memory-mapped file)."""
        return self._file.encoded(name)

    def get_bytes(self, name: str) -> np.ndarray:
        """The original little-endian bytes of a tensor, checksum-verified."""
        return _decode(self._file, name, self._backend, self._workers)

    def get_tensor(self, name: str):
        entry = self._file._get(name).source
        return self._as_tensor(name, self.get_bytes(name), entry.shape)

    def get_tensors(self) -> dict:
        """Every tensor, by name, in the order of their data."""
        return {name: self.get_tensor(name) for name in self.offset_keys()}

    def get_slice(self, name: str) -> "TensorSlice":
        """A lazy view of one tensor, as safetensors' ``get_slice``:
        ``.get_shape()``, ``.get_dtype()``, and indexing, which decodes only
        the groups that hold the rows (first axis) the index asks for."""
        return TensorSlice(self, name)

    def _as_tensor(self, name: str, data: np.ndarray, shape):
        """A tensor of the file's dtype over little-endian bytes."""
        dtype = self._file._get(name).source.dtype
        if self._framework == "pt":
            from .torch.dtypes import bytes_to_torch
            try:
                return bytes_to_torch(data, dtype, shape, self._device)
            except UnsupportedError as exc:
                raise UnsupportedError(f"{self._file.path}: tensor {name!r}: {exc}") from None
        from .dtypes import numpy_dtype
        return data.view(numpy_dtype(dtype, self._file.path, name)).reshape(shape)


class TensorSlice:
    """One tensor of a :class:`FloatzipReader`, decoded when indexed. An
    index that narrows the first axis decodes only the groups of values
    that hold those rows; the tensor's checksum is verified only when the
    index takes every row (a part of a tensor cannot be checked against
    it), while the structural checks of every decoded lane still apply."""

    def __init__(self, reader: FloatzipReader, name: str):
        self._reader = reader
        self._name = name
        self._entry = reader._file._get(name).source

    def get_shape(self) -> list[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype

    def __getitem__(self, index):
        shape = tuple(self._entry.shape)
        index = index if isinstance(index, tuple) else (index,)
        first = index[0] if index else slice(None)
        if not shape:
            return self._reader.get_tensor(self._name)[index]
        if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            rows = range(shape[0])[first]           # IndexError as a sequence gives
            rows, rest = range(rows, rows + 1), (0,) + index[1:]
        elif isinstance(first, slice) and first.step in (None, 1):
            rows, rest = range(shape[0])[first], (slice(None),) + index[1:]
        else:                                       # Ellipsis, steps: decode it all
            rows, rest = range(shape[0]), index
        if rows.start == 0 and len(rows) == shape[0]:
            return self._reader.get_tensor(self._name)[index]
        part = self._rows(rows.start, rows.start + len(rows))
        return part[rest]

    def _rows(self, r0: int, r1: int):
        """Rows [r0, r1) of the tensor, decoding only the groups holding them."""
        reader, name = self._reader, self._name
        fz = reader._file
        row_values = int(np.prod(self._entry.shape[1:], dtype=np.int64))
        itemsize = ITEMSIZE[self._entry.dtype]
        v0, v1 = r0 * row_values, r1 * row_values
        enc = fz.encoded(name)
        if v0 == v1:
            data = np.zeros(0, dtype=np.uint8)
        elif enc.geometry is None:                  # stored raw: the bytes themselves
            data = np.asarray(enc.raw)[v0 * itemsize:v1 * itemsize]
        else:
            group = LANES * enc.geometry.lane_symbols
            g0, g1 = v0 // group, -(-v1 // group)
            try:
                bits = decode_group_range(enc, g0, g1, backend=reader._backend,
                                          workers=reader._workers)
            except CorruptDataError as exc:
                raise CorruptDataError(f"{fz.path}: tensor {name!r}: {exc}") from None
            data = bits.view(np.uint8)[(v0 - g0 * group) * itemsize:
                                       (v1 - g0 * group) * itemsize]
        return reader._as_tensor(name, data, (r1 - r0,) + tuple(self._entry.shape[1:]))
