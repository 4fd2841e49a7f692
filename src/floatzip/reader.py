"""Reading tensors from a floatzip file as safetensors' ``safe_open`` does."""
from __future__ import annotations

import os

import numpy as np

from .codecs.encoded import EncodedTensor, decode_group_range
from .codecs.layout import LANES
from .decode import decode_stored
from .directory import safetensors_kind
from .dtypes import ITEMSIZE
from .errors import CorruptDataError, UnsupportedError
from .format import container
from .io_utils import resolve_workers


def safe_open(path, framework: str = "np", device: str = "cpu", *, backend=None,
              workers: int | None = 1):
    """Read tensors from a floatzip file, mirroring ``safetensors.safe_open``::

        with floatzip.safe_open("model.fz.safetensors", framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)

    A plain (uncompressed) safetensors file is opened by safetensors itself,
    so one call reads a directory holding both kinds."""
    if safetensors_kind(os.fspath(path)) == "plain":
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
        return decode_stored(self._file, name, self._backend, self._workers)

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
