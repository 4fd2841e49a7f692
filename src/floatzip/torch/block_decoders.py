"""Decoders of one unit's weights (see :mod:`.units`) into a flat byte buffer.

A :class:`BlockDecoder` writes a unit's decoded weights into a flat uint8
buffer (a "slot", which the runtime owns and reuses), each tensor at a fixed
offset. :func:`make_block_decoder` asks ``floatzip.backends.select`` for the
back end that decodes on the model's device (the one named, else the one
$FLOATZIP_BACKEND names, else the fastest that can; or an UnsupportedError
naming one that works) and builds the decoder that runs it:

* :class:`CpuBlockDecoder`, for a back end that decodes into host memory
  (numba, which releases the GIL, or numpy): tensor after tensor, each at a
  64-byte aligned offset.
* :class:`FastCpuBlockDecoder` (``memory="fast"``): BF16 weights
  transcoded at load into the fast in-memory code (codecs/fast_code.py) and
  decoded from it, ~10 GB/s a core instead of ~1.
* :class:`TritonBlockDecoder`, for one that decodes where the model runs
  (the Triton back end: on CUDA, or on the CPU under TRITON_INTERPRET=1, for
  tests): it keeps the coded weights on the device and decodes a whole unit
  with one launch of the back end's kernels, on the current stream, with no
  host synchronisation; from a unit's second decode into the same buffer
  on, that launch is a replayed CUDA graph (``launch="graph"``), which
  spares eager generation Triton's per-launch host time.

Input embeddings (an ``nn.Embedding``) decode only the rows a forward looks
up (:class:`EmbeddingRows`): the groups of the coded table that hold them, a
few KB for a generated token instead of the whole table. A checksum cannot
cover part of a tensor, so such a table is checked whole at load
(:func:`verify_whole`).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from .. import backends
from ..decode import decode_encoded_into as decode_into
from ..decode import decode_encoded_rows as decode_rows
from ..decode import StreamDecoder
from ..errors import FormatError, UnsupportedError
from .dtypes import bytes_to_torch

ALIGN = 64      # what torch's CPU allocator guarantees; kernels may pick paths by alignment


@dataclass
class Placement:
    """Where one tensor's decoded bytes go inside a unit's buffer."""
    source: object                  # loading.SourceTensor
    dtype: torch.dtype              # the parameter's dtype (transformers may cast)
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def layout(sources_and_params) -> list[Placement]:
    """Placements for (source, parameter) pairs, each at an ALIGN-aligned
    offset (the CPU decoder's layout; the Triton one lays out its own)."""
    out, offset = [], 0
    for src, param in sources_and_params:
        nbytes = param.numel() * param.element_size()
        out.append(Placement(src, param.dtype, tuple(param.shape), offset, nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    return out


class BlockDecoder(ABC):
    """Decodes the weights of one unit into a flat uint8 buffer ("slot")
    that the runtime owns and reuses."""

    #: bytes of buffer :meth:`decode` needs
    nbytes: int

    def __init__(self, placements: list[Placement]):
        self.placements = placements

    @abstractmethod
    def decode(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Decode every tensor of the unit into ``buffer`` (uint8, at least
        ``nbytes`` long, on the decoder's device) and return them, in the
        order of ``placements``, with the parameters' dtypes and shapes."""


# -- which back end ----------------------------------------------------------------

def decodes_on_device(impl) -> bool:
    """Whether back end ``impl`` (a module ``floatzip.backends.select``
    returned) decodes into torch tensors where the model runs (the Triton
    one: its DeviceBlockDecoder and DeviceCodedTensor) rather than into
    host arrays."""
    return hasattr(impl, "DeviceBlockDecoder")


def block_backend(backend, device: torch.device):
    """The back end that decodes units for a model on ``device``:
    ``floatzip.backends.select(backend, device=device.type)``, checked to
    have what :class:`TritonBlockDecoder` uses when it decodes on the
    device. UnsupportedError, naming what works, if there is none."""
    impl = backends.select(backend, device=device.type)
    if decodes_on_device(impl) and not hasattr(impl.DeviceBlockDecoder, "from_encoded"):
        raise UnsupportedError(f"{impl.__name__} has no DeviceBlockDecoder.from_encoded; this "
                               "floatzip's on-the-fly device path does not match it; use "
                               "decode='at_load'")
    return impl


def make_block_decoder(placements, device: torch.device, backend=None,
                       workers: int = 1, *, fast=None, shared: dict | None = None) -> BlockDecoder:
    """The block decoder for a device, with the back end
    :func:`block_backend` picks: Triton kernels on CUDA (or on the CPU under
    TRITON_INTERPRET=1 with backend="triton", for tests), the coding back
    end's ``decode`` on the CPU. ``fast`` (a backends.FastCode) asks for the
    fast in-memory code (memory="fast"), CPU only so far; ``shared`` is the
    model's source key -> FastTensor dict."""
    impl = block_backend(backend, device)
    if decodes_on_device(impl):
        if fast is not None:
            raise UnsupportedError(f"memory='fast' decodes on the CPU only in this floatzip, "
                                   f"not with {impl.name!r} on {device.type}; use "
                                   "memory='compact'")
        return TritonBlockDecoder(placements, device, impl)
    if fast is not None:
        return FastCpuBlockDecoder(placements, backend=impl.name, workers=workers, fast=fast,
                                   shared={} if shared is None else shared)
    return CpuBlockDecoder(placements, backend=impl.name, workers=workers)


# -- decoding on the CPU ---------------------------------------------------------------

class EmbeddingRows:
    """For an input-embedding unit: decode only the rows a forward looks
    up. The pre-hook hands the module a table of just those rows and the
    token ids renumbered into it; the lookup returns the same values."""

    def __init__(self, placement: Placement, *, backend=None, workers: int = 1):
        self.placement = placement
        self.backend, self.workers = backend, workers

    def lookup(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(table of the rows ``ids`` use, ids renumbered into it), or None
        if ids are out of range (the full table then lets the module raise
        its usual error)."""
        pl = self.placement
        unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        if unique.numel() == 0 or int(unique[0]) < 0 or int(unique[-1]) >= pl.shape[0]:
            return None
        src = pl.source
        rows = decode_rows(src.encoded, unique.numpy().astype(np.int64), backend=self.backend,
                           workers=self.workers)
        table = bytes_to_torch(rows, src.dtype, (len(rows), pl.shape[1]))
        if table.dtype != pl.dtype:
            table = table.to(pl.dtype)
        return table, inverse.reshape(ids.shape)


class CpuBlockDecoder(BlockDecoder):
    """Decodes with the coding back end (numba by default), tensor after
    tensor, each with ``workers`` threads, at ALIGN-aligned offsets.
    Checksums are checked the first time each tensor is decoded; after that
    the same bytes are decoded from the same memory."""

    def __init__(self, placements, *, backend=None, workers: int = 1):
        super().__init__(placements)
        self.nbytes = max((pl.offset + pl.nbytes for pl in placements), default=0)
        self.backend, self.workers = backend, workers
        self._verified = False

    def decode(self, buffer: torch.Tensor, workers: int | None = None) -> list[torch.Tensor]:
        workers = workers or self.workers
        flat = buffer.numpy()
        views = [self._decode_one(pl, buffer, flat, workers) for pl in self.placements]
        self._verified = True
        return views

    def _view(self, pl: Placement, buffer: torch.Tensor) -> torch.Tensor:
        return buffer[pl.offset:pl.offset + pl.nbytes].view(pl.dtype).view(pl.shape)

    def _decode_one(self, pl: Placement, buffer: torch.Tensor, flat: np.ndarray,
                    workers: int) -> torch.Tensor:
        """One tensor from its coded form in the file, into its place."""
        src = pl.source
        view = self._view(pl, buffer)
        if src.torch_dtype == pl.dtype:
            decode_into(src.encoded, flat[pl.offset:pl.offset + pl.nbytes], backend=self.backend,
                        workers=workers, verify=not self._verified, where=src.where())
        else:           # transformers cast it (dtype plan, or another dtype asked for)
            tmp = np.empty(src.encoded.original_bytes, dtype=np.uint8)
            decode_into(src.encoded, tmp, backend=self.backend, workers=workers,
                        verify=not self._verified, where=src.where())
            view.copy_(bytes_to_torch(tmp, src.dtype, src.shape))
        return view


class FastCpuBlockDecoder(CpuBlockDecoder):
    """``memory="fast"``: each BF16 weight is transcoded once from the
    file's tANS code into the fast in-memory code (codecs/fast_code.py,
    docs/FAST_CODE.md), checked against its checksum on the way, and decoded
    from that before every use; weights of other dtypes (or cast by
    transformers) are decoded as :class:`CpuBlockDecoder` does.

    :meth:`prepare` transcodes (the runtime calls it at load; a unit that
    may never need a whole decode, an embedding looked up by rows, leaves
    it to its first such decode). ``shared``: source key -> FastTensor,
    one dict for the model, so that a tied weight is transcoded once."""

    def __init__(self, placements, *, backend=None, workers: int = 1, fast, shared: dict):
        super().__init__(placements, backend=backend, workers=workers)
        self.fast = fast                        # backends.FastCode
        self._shared = shared
        self.coded: list | None = None          # per placement: FastTensor, or None (compact)

    @staticmethod
    def transcodes(pl: Placement) -> bool:
        return pl.source.dtype == "BF16" and pl.dtype == torch.bfloat16

    def prepare(self) -> None:
        if self.coded is not None:
            return
        coded = []
        for pl in self.placements:
            ft = None
            if self.transcodes(pl):
                ft = self._shared.get(pl.source.key)
                if ft is None:
                    ft = transcode(pl.source, self.fast, backend=self.backend,
                                   workers=self.workers)
                    self._shared[pl.source.key] = ft
            coded.append(ft)
        self.coded = coded

    def decode(self, buffer: torch.Tensor, workers: int | None = None) -> list[torch.Tensor]:
        self.prepare()
        workers = workers or self.workers
        flat = buffer.numpy()
        views = []
        for pl, ft in zip(self.placements, self.coded):
            if ft is None:
                views.append(self._decode_one(pl, buffer, flat, workers))
            else:
                self.fast.decode(ft, flat[pl.offset:pl.offset + pl.nbytes], workers)
                views.append(self._view(pl, buffer))
        self._verified = True
        return views


def transcode(src, fast, *, backend=None, workers: int = 1):
    """The FastTensor of a BF16 source tensor: decoded from the file
    (checked against its checksum), encoded with ``fast``
    (backends.FastCode) and validated; then the file's pages under it are
    released, so that the compressed copy does not stay resident too."""
    tmp = np.empty(src.encoded.original_bytes, dtype=np.uint8)
    decode_into(src.encoded, tmp, backend=backend, workers=workers, verify=True,
                where=src.where())
    ft = fast.encode(tmp.view(np.uint16))
    ft.validate(src.where())
    release_pages(src.encoded.payload)
    release_pages(src.encoded.raw)
    return ft


_MADV_DONTNEED = 4


def release_pages(array) -> None:
    """Drop this process's mapping of the file pages under ``array`` (a view
    of a read-only memory map): they stop counting in its resident memory,
    and are read again from the file (or the page cache) if touched again.
    Decoding at load calls it after each tensor, so that the compressed
    file does not stay resident next to the decoded weights. Anything but a
    memory map is left alone."""
    if not isinstance(array, np.memmap) or array.size == 0:
        return
    import ctypes
    import mmap
    page = mmap.PAGESIZE
    begin = array.__array_interface__["data"][0]
    start = -(-begin // page) * page
    end = (begin + array.nbytes) // page * page
    if end > start:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


# Original bytes decoded per step when a tensor is checked whole at load:
# the check keeps nothing, so a few MB bound its memory whatever the size of
# the tensor (a Llama-3 embedding is 1 GB). No slower than one whole decode,
# which faults in a fresh buffer: 28 ms against 31 for a 65 MB table, 1 thread.
VERIFY_CHUNK_BYTES = 4 << 20


def verify_whole(src, backend=None, workers: int = 1) -> None:
    """Check a tensor against its checksum before any part of it is used
    (row lookups decode parts of it, which a checksum cannot cover); done
    at load. It is streamed through reads of the file (decode.StreamDecoder,
    VERIFY_CHUNK_BYTES at a time), not through the memory map: the map's
    pages would stay resident after it, the whole coded tensor, where a
    forward then touches only the groups of the rows it looks up.
    CorruptDataError naming the file and the tensor if it fails."""
    fz = src.file
    try:
        with open(fz.opened_path, "rb", buffering=0) as f:
            stream = StreamDecoder(fz, f.fileno(), backend=backend, workers=workers,
                                   chunk_bytes=VERIFY_CHUNK_BYTES)
            for _ in stream.chunks(src.key):
                pass
    except OSError as exc:
        raise FormatError(f"{src.where()}: cannot read it ({exc.strerror or exc})") from None


# -- decoding on the device ------------------------------------------------------------

class TritonBlockDecoder(BlockDecoder):
    """Keeps a unit's coded weights in device memory and decodes all of them
    with one launch of the Triton kernel, on the current stream, into the
    given buffer: no host synchronisation, and reuse of the buffer is ordered
    by the stream. The first decode of each unit waits for the device once
    to check that every lane ended where it should (GPU decoding has no
    checksum; the CPU path verifies those). ``impl``: the back end module
    :func:`block_backend` returned for ``device``."""

    def __init__(self, placements, device: torch.device, impl):
        super().__init__(placements)
        for pl in placements:
            if pl.source.torch_dtype != pl.dtype:
                raise UnsupportedError(f"{pl.source.where()}: stored as {pl.source.dtype} but the "
                                       f"model wants {pl.dtype}; on-the-fly GPU decoding does not "
                                       "cast; load with the checkpoint's dtype or decode='at_load'")
        self._decoder = impl.DeviceBlockDecoder.from_encoded(
            [pl.source.encoded for pl in placements], device,
            names=[pl.source.key for pl in placements])
        self.nbytes = self._decoder.out_nbytes
        self._checked = False

    def decode(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        with torch.cuda.device(buffer.device) if buffer.is_cuda else contextlib.nullcontext():
            views = self._decoder.decode(buffer[:self.nbytes])
            if not self._checked:
                self._decoder.check()
                self._checked = True
        return views
