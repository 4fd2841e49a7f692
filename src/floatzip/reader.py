"""Reading tensors from a floatzip file as safetensors' ``safe_open`` does.

Where code written for safetensors could tell the two apart, floatzip's
reader behaves as safetensors' (0.8) does: a missing tensor, an index
outside the tensor and a reader used after its ``with`` block raise errors
that are ``safetensors.SafetensorError`` too (see floatzip.errors); NumPy
arrays come back writable; slices follow safetensors' rules for the
framework (``np``: indices checked against the shape, out of range an error;
``pt``: torch's indexing, which clips slices)."""
from __future__ import annotations

import operator
import os

import numpy as np

from .codecs.encoded import EncodedTensor
from .decode import check_stored, decode_stored, decode_values
from .model_dir import safetensors_kind
from .dtypes import ITEMSIZE
from .errors import (
    ClosedFileError,
    DecoderArgumentError,
    NumpyDtypeError,
    SliceError,
    TensorNotFoundError,
    UnsupportedError,
)
from .format import container
from .io_utils import resolve_workers

_FRAMEWORKS = {"np": "np", "numpy": "np", "pt": "pt", "torch": "pt", "pytorch": "pt"}


def safe_open(path, framework: str = "np", device: str = "cpu", *, backend=None,
              workers: int | None = 1):
    """Read tensors from a floatzip file, mirroring ``safetensors.safe_open``::

        with floatzip.safe_open("model.fz.safetensors", framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)

    A plain (uncompressed) safetensors file is opened by safetensors itself,
    so one call reads a directory holding both kinds. Such a file holds
    nothing to decode, so ``backend=`` and ``workers=`` (other than 1) are
    refused for it rather than ignored."""
    if safetensors_kind(os.fspath(path)) == "plain":
        given = ([f"backend={backend!r}"] if backend is not None else []) \
            + ([f"workers={workers!r}"] if workers != 1 else [])
        if given:
            raise DecoderArgumentError(
                f"{os.fspath(path)}: a plain safetensors file, with nothing to decode, so "
                f"{' and '.join(given)} would have no effect; open it without "
                f"{'them' if len(given) > 1 else 'it'}, or compress it first "
                "(floatzip compress)")
        import safetensors
        return safetensors.safe_open(os.fspath(path), framework=framework, device=device)
    return FloatzipReader(path, framework, device, backend=backend, workers=workers)


class FloatzipReader:
    """An open floatzip file (what :func:`safe_open` returns for one): the
    methods of safetensors' reader, plus ``get_encoded`` and ``get_bytes``.

    Every byte it returns is covered by a verified checksum: a whole tensor
    is checked as it is decoded, and a tensor is checked whole once, before
    the first read of a part of it (a part cannot be checked on its own)."""

    def __init__(self, path, framework: str = "np", device: str = "cpu", *,
                 backend=None, workers: int | None = 1):
        self._path = os.fspath(path)
        if framework not in _FRAMEWORKS:
            raise DecoderArgumentError(
                f"{self._path}: framework must be 'pt' (torch) or 'np' (numpy), not "
                f"{framework!r}: floatzip reads into no other framework")
        self._file = container.FloatzipFile(path)
        self._framework = _FRAMEWORKS[framework]
        self._device = device
        self._backend = backend
        self._workers = resolve_workers(workers)
        self._verified: set[str] = set()     # tensors whose checksum this reader has checked

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # As safetensors': the reader refuses further use; the memory map
        # lives on only in slices taken before, which stay usable.
        self._file = None
        return False

    def keys(self) -> list[str]:
        """Tensor names, sorted (as safetensors lists them)."""
        return sorted(self._open_file().source.tensors)

    def offset_keys(self) -> list[str]:
        """Tensor names in the order of their data in the original file."""
        return list(self._open_file().source.tensors)

    def metadata(self) -> dict[str, str] | None:
        """The original file's ``__metadata__``."""
        return self._open_file().source.metadata

    def get_encoded(self, name: str) -> EncodedTensor:
        """The tensor still coded (sections are views of the memory-mapped file)."""
        fz = self._open_file()
        self._stored(fz, name)
        return fz.encoded(name)

    def get_bytes(self, name: str) -> np.ndarray:
        """The original little-endian bytes of a tensor, checksum-verified."""
        return self._whole_bytes(self._open_file(), name)

    def get_tensor(self, name: str):
        return self._whole_tensor(self._open_file(), name)

    def get_tensors(self) -> dict:
        """Every tensor, by name, in the order of their data."""
        fz = self._open_file()
        return {name: self._whole_tensor(fz, name) for name in fz.source.tensors}

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy view of one tensor, as safetensors' ``get_slice``:
        ``.get_shape()``, ``.get_dtype()``, and indexing, which decodes only
        the groups that hold the rows (first axis) the index asks for."""
        return TensorSlice(self, name)

    # -- the file, which a slice keeps after the reader is closed ---------------

    def _open_file(self) -> container.FloatzipFile:
        if self._file is None:
            raise ClosedFileError(
                f"{self._path}: file is closed (the with-block of this reader has ended); "
                "read inside the block, or open the file again with floatzip.safe_open")
        return self._file

    @staticmethod
    def _stored(fz: container.FloatzipFile, name: str) -> container.StoredTensor:
        try:
            return fz.tensors[name]
        except (KeyError, TypeError):
            raise TensorNotFoundError(
                f"{fz.path}: no tensor named {name!r}; keys() lists the {len(fz.tensors)} "
                "tensors it holds") from None

    def _whole_tensor(self, fz: container.FloatzipFile, name: str):
        self._stored(fz, name)
        if self._framework == "np":
            self._numpy_dtype(fz, name)          # before decoding, not after
        data = self._whole_bytes(fz, name)
        return self._as_tensor(fz, name, data, fz.tensors[name].source.shape)

    def _whole_bytes(self, fz: container.FloatzipFile, name: str) -> np.ndarray:
        self._stored(fz, name)
        data = decode_stored(fz, name, self._backend, self._workers)
        self._verified.add(name)
        # A tensor stored raw comes as a view of the read-only memory map;
        # safetensors hands out arrays one may write to.
        return data if data.flags.writeable else data.copy()

    def _verify_once(self, fz: container.FloatzipFile, name: str) -> None:
        """Check the whole tensor against its checksum unless this reader did."""
        if name not in self._verified:
            check_stored(fz, name, backend=self._backend, workers=self._workers)
            self._verified.add(name)

    @staticmethod
    def _numpy_dtype(fz: container.FloatzipFile, name: str) -> np.dtype:
        """The NumPy dtype of a tensor; NumpyDtypeError (a TypeError, as
        safetensors raises) for bfloat16 and float8, which NumPy lacks."""
        from .dtypes import numpy_dtype
        try:
            return numpy_dtype(fz.tensors[name].source.dtype, fz.path, name)
        except UnsupportedError as exc:
            raise NumpyDtypeError(str(exc)) from None

    def _as_tensor(self, fz: container.FloatzipFile, name: str, data: np.ndarray, shape):
        """A tensor of the file's dtype over little-endian bytes."""
        dtype = fz.tensors[name].source.dtype
        if self._framework == "pt":
            from .dtypes import bytes_to_torch
            try:
                return bytes_to_torch(data, dtype, shape, self._device)
            except UnsupportedError as exc:
                raise UnsupportedError(f"{fz.path}: tensor {name!r}: {exc}") from None
        kind = self._numpy_dtype(fz, name)
        if not data.flags.writeable:
            data = data.copy()
        return data.view(kind).reshape(shape)


class TensorSlice:
    """One tensor of a :class:`FloatzipReader`, decoded when indexed.

    An index that narrows the first axis decodes only the groups of values
    that hold those rows. Before the first such partial read, the reader
    decodes the whole tensor once to check it against its checksum (a part
    cannot be checked on its own) and keeps nothing of it; a tensor the
    reader has already read whole, or checked, is not checked again. So any
    read of values from a damaged tensor raises CorruptDataError (naming the
    file and the tensor); none returns wrong values.

    Indices follow safetensors' rules for the reader's framework: for
    ``np``, ints (a bool counts as one), slices with a positive step and one
    ellipsis, each within the shape (``[100:200]`` on 48 rows is a
    SliceError, as safetensors' SafetensorError; negative bounds count from
    the end); for ``pt``, torch's indexing (slices clip to the shape). A
    slice stays usable after its reader's ``with`` block, as safetensors'."""

    def __init__(self, reader: FloatzipReader, name: str):
        # The slice holds the file itself, so that it outlives the reader's block.
        self._reader = reader
        self._file = reader._open_file()
        self._name = name
        self._entry = reader._stored(self._file, name).source

    def get_shape(self) -> list[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype

    def __getitem__(self, index):
        shape = tuple(self._entry.shape)
        items = index if isinstance(index, tuple) else (index,)
        where = self._where(items)
        if self._reader._framework == "np":
            self._reader._numpy_dtype(self._file, self._name)
            items = _checked_np_index(items, shape, where)
        rows, rest = _row_plan(items, shape, where)
        whole = rows is None or (rows.start == 0 and len(rows) == shape[0])
        if whole or self._entry.dtype not in ITEMSIZE:  # sub-byte values: rows need not
            # start on a byte; the whole tensor's conversion says what it makes of them
            tensor, rest = self._reader._whole_tensor(self._file, self._name), items
        else:
            tensor = self._rows(rows.start, rows.stop)
        try:
            out = tensor[rest]
        except (IndexError, ValueError) as exc:
            raise SliceError(f"{where}: {exc}") from None
        if self._reader._framework == "np" and not isinstance(out, np.ndarray):
            out = np.asarray(out)        # a 0-d array, as safetensors gives, not a NumPy scalar
        return out

    def _where(self, items) -> str:
        return (f"{self._file.path}: tensor {self._name!r} of shape {list(self._entry.shape)}, "
                f"index [{_index_text(items)}]")

    def _rows(self, r0: int, r1: int):
        """Rows [r0, r1) of the tensor, decoding only the groups holding them
        (after the tensor's one checksum check)."""
        reader, fz, name = self._reader, self._file, self._name
        row_values = int(np.prod(self._entry.shape[1:], dtype=np.int64))
        v0, v1 = r0 * row_values, r1 * row_values
        if v0 != v1:
            reader._verify_once(fz, name)
        data = decode_values(fz, name, v0, v1, backend=reader._backend, workers=reader._workers)
        return reader._as_tensor(fz, name, data, (r1 - r0,) + tuple(self._entry.shape[1:]))


def _row_plan(items: tuple, shape: tuple, where: str):
    """(rows, rest): the rows of the first axis an index needs, as a range
    with step 1, and the index to apply to those rows; rows None when the
    index needs the whole tensor (no axes, or a first index that is not an
    int or a slice with a positive step: an ellipsis, None, a bool, a list)."""
    if not shape:
        return None, items
    n = shape[0]
    first = items[0] if items else Ellipsis
    if isinstance(first, (int, np.integer)) and not isinstance(first, (bool, np.bool_)):
        i = int(first)
        if not -n <= i < n:
            raise SliceError(f"{where}: index {i} is out of bounds for dimension 0 of size {n}; "
                             f"index rows from {-n} to {n - 1}")
        i %= n
        return range(i, i + 1), (0,) + items[1:]
    if isinstance(first, slice):
        try:
            rows = range(n)[first]
        except (TypeError, ValueError) as exc:
            raise SliceError(f"{where}: {exc}") from None
        if rows.step > 0:
            if not rows:
                return range(0), (slice(None),) + items[1:]
            return range(rows[0], rows[-1] + 1), (slice(None, None, rows.step),) + items[1:]
    return None, items


def _checked_np_index(items: tuple, shape: tuple, where: str) -> tuple:
    """An index checked as safetensors checks it for framework='np', as a
    tuple of ints and slices (ellipsis expanded, bounds from 0): ints (a
    bool counts as one) and slices only, one ellipsis, no more indices than
    axes, every int and slice start inside its axis, every slice stop at most
    its size, steps positive. safetensors' own reader crashes on negative
    slice bounds and on a stop before the start; here they count from the
    end, and give nothing, as in NumPy."""
    def bad(message):
        return SliceError(f"{where}: {message}; index within the shape (slices are not "
                          "clipped to it with framework='np', as in safetensors)")

    if sum(item is Ellipsis for item in items) > 1:
        raise bad("only one ellipsis (...) is allowed")
    explicit = sum(item is not Ellipsis for item in items)
    if explicit > len(shape):
        raise bad(f"{explicit} indices for a tensor of {len(shape)} dimensions")
    expanded = []
    for item in items:
        expanded.extend([slice(None)] * (len(shape) - explicit) if item is Ellipsis else [item])
    checked = []
    for dim, (item, n) in enumerate(zip(expanded, shape)):
        if isinstance(item, slice):
            step = 1 if item.step is None else _np_int(item.step)
            if step is None or step <= 0:
                raise bad(f"the step of a slice must be a positive integer, not {item.step!r}")
            start, stop = (default if value is None else _np_int(value)
                           for value, default in ((item.start, 0), (item.stop, n)))
            if start is None or stop is None:
                raise bad(f"slice bounds must be integers, not {item.start!r}, {item.stop!r}")
            start, stop = (v + n if v < 0 else v for v in (start, stop))
            if not 0 <= start < n:
                raise bad(f"slice start {start} is out of bounds for dimension {dim} of size {n}")
            if not 0 <= stop <= n:
                raise bad(f"slice stop {stop} is out of bounds for dimension {dim} of size {n}")
            checked.append(slice(start, max(start, stop), step))
            continue
        i = _np_int(item)
        if i is None:
            raise bad(f"{item!r} at position {dim}: an index is an int, a slice or an ellipsis")
        if not -n <= i < n:
            raise bad(f"index {i} is out of bounds for dimension {dim} of size {n}")
        checked.append(i % n)
    return tuple(checked)


def _np_int(value) -> int | None:
    """An int index as safetensors takes one (Python ints and bools, NumPy
    integers, 0-d integer arrays), or None."""
    if isinstance(value, np.bool_):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _index_text(items: tuple) -> str:
    """An index as written between brackets: ``1:3, ..., 5``."""
    def one(item):
        if isinstance(item, slice):
            text = ":".join("" if v is None else str(v) for v in (item.start, item.stop))
            return text if item.step is None else f"{text}:{item.step}"
        return "..." if item is Ellipsis else repr(item)
    return ", ".join(one(item) for item in items)
