"""Run a model whose weights stay compressed: decode each block just before
its forward, into a reused buffer, and let go of it right after.

Pieces, from the bottom up:

* A *unit* is a module whose parameters are decoded together: each child
  of the model's repeated-block ``nn.ModuleList`` (found generically, see
  :func:`find_block_lists`), the input embeddings and the output head.
* A :class:`BlockDecoder` writes a unit's decoded weights into a flat byte
  buffer, each tensor at a fixed, 64-byte aligned offset. The CPU one
  (:class:`CpuBlockDecoder`) runs the selected coding back end (numba
  releases the GIL); the GPU one (:class:`TritonBlockDecoder`) keeps the coded
  weights on the GPU and decodes a whole unit with one launch of the Triton
  kernels in ``floatzip.backends.triton_decode``, on the current stream, with
  no host synchronisation; from a unit's second decode into the same buffer
  on, that launch is a replayed CUDA graph (``launch="graph"``), which
  spares eager generation Triton's per-launch host time.
* :class:`OnTheFlyDecoder` owns the buffers ("slots") and the hooks. A
  forward pre-hook on a unit takes a slot holding its decoded weights
  (prefetched, or decoded now), points the unit's parameters at views of it
  and, with prefetch, starts decoding the next unit in a background thread;
  the forward hook turns the parameters back into placeholders and frees
  the slot. The next unit is the one that followed last time (learnt
  as the model runs, so generation's head -> embeddings wrap-around is
  prefetched too), at first the static order embeddings, blocks, head.
* Input embeddings (an ``nn.Embedding``) decode only the rows a forward
  looks up (:class:`EmbeddingRows`): the groups of the coded table that hold
  them, a few KB for a generated token instead of the whole table.

Prefetch on CPU pays only where torch leaves cores idle: decoding on the
cores that run the forward's threads slows both down (measured on 2 cores,
1.1B Llama in BF16: 1.21 s/token with prefetch against 0.95 s without). The default
("auto") prefetches only when ``torch.get_num_threads()`` is below the core
count, and then decodes with the idle cores.

Parameters are swapped as ``torch.utils.swap_tensors`` swaps them (see
:func:`swap_contents`), which keeps each Parameter object: tied weights
(the same Parameter in two modules) stay tied, and any other reference to a
parameter sees the decoded tensor while its unit runs. Between uses a
parameter is a :class:`CompressedWeight` placeholder (on the meta device,
no data) that raises if anything computes with it outside its module's
forward.

Resident memory is the compressed blobs (memory-mapped: RSS grows to the
compressed size as they are first read, and the kernel may drop clean pages
under pressure; of a row-decoded embedding, only the groups of the rows
looked up, as the original's memory map holds only those rows) plus the
slots (two of the largest unit with prefetch, one without; row-decoded
embeddings need none) plus activations. Inference only:
decoded weights do not require grad, and a backward pass through a freed
slot would see the next unit's weights. One forward at a time: the runtime
is not meant for concurrent forwards from several threads.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import backends
from ..codecs.encoded import CODEC_RAW, EncodedTensor, checksum, decode_group_range
from ..decode import StreamDecoder
from ..dtypes import FLOAT_LAYOUTS
from ..errors import CorruptDataError, FloatzipError, FormatError, UnsupportedError
from .dtypes import bytes_to_torch

ALIGN = 64      # what torch's CPU allocator guarantees; kernels may pick paths by alignment
TRITON_MODULE = "floatzip.backends.triton_decode"


# -- which modules are decoded on the fly --------------------------------------

def find_block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's repeated blocks: ``nn.ModuleList``s of at least two
    children of one class that hold parameters, not nested in another such
    list, keeping those with at least half the parameters of the largest
    (an encoder-decoder has two stacks). In module order."""
    candidates = []
    for name, module in model.named_modules():
        if (isinstance(module, nn.ModuleList) and len(module) >= 2
                and len({type(child) for child in module}) == 1):
            size = sum(p.numel() for p in module.parameters())
            if size:
                candidates.append((name, module, size))
    top = [c for c in candidates
           if not any(o is not c and c[0].startswith(o[0] + ".") for o in candidates)]
    if not top:
        return []
    largest = max(size for _, _, size in top)
    return [(name, module) for name, module, size in top if 2 * size >= largest]


def _embedding_module(model, getter: str):
    fn = getattr(model, getter, None)
    if fn is None:
        return None
    try:
        module = fn()
    except (NotImplementedError, AttributeError):
        return None
    return module if isinstance(module, nn.Module) else None


def unit_modules(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(kind, module name, module) of every unit, in the order a forward
    normally runs them: input embeddings, blocks, output head."""
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [(f"{list_name}.{i}" if list_name else str(i), child)
              for list_name, blocks_list in find_block_lists(model)
              for i, child in enumerate(blocks_list)]
    block_prefixes = [n + "." for n, _ in blocks] + [n + "." for n, _ in find_block_lists(model)]

    def usable(module):
        if module is None or id(module) not in names:
            return None
        name = names[id(module)]
        if not name or any(name.startswith(p) or p.startswith(name + ".") for p in block_prefixes):
            return None         # inside a block, or holding the blocks: not a unit of its own
        return name if next(module.parameters(), None) is not None else None

    units = []
    emb = _embedding_module(model, "get_input_embeddings")
    if (name := usable(emb)) is not None:
        units.append(("embeddings", name, emb))
    units += [("block", name, module) for name, module in blocks]
    head = _embedding_module(model, "get_output_embeddings")
    if head is not emb and (name := usable(head)) is not None:
        units.append(("head", name, head))
    return units


def _owner_prefixes(units) -> list[str]:
    return [name + "." for _, name, _ in units]


def deferrable_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that on-the-fly decoding leaves compressed:
    those of the unit modules, unless a module outside every unit also
    holds the same Parameter (it would run with a placeholder)."""
    prefixes = _owner_prefixes(unit_modules(model))
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    out = set()
    for names in names_of.values():
        if all(any(n.startswith(p) for p in prefixes) for n in names):
            out.update(names)
    return out


# -- block decoders -------------------------------------------------------------------

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


def decode_into(enc: EncodedTensor, out: np.ndarray, *, backend=None, workers: int = 1,
                verify: bool = True, where: str = "") -> None:
    """Decode ``enc`` into ``out`` (uint8, exactly its original size)."""
    if enc.codec == CODEC_RAW:
        np.copyto(out, np.asarray(enc.raw, dtype=np.uint8))
    else:
        impl = backends.get(backend)
        storage = FLOAT_LAYOUTS[enc.dtype].storage
        args = (enc.geometry, enc.counts, enc.lane_sizes, enc.payload, enc.raw, storage)
        try:
            impl.decode(*args, workers=workers, out=out.view(storage))
        except CorruptDataError as exc:
            raise CorruptDataError(f"{where}: {exc}") from None
    if verify and checksum(out) != enc.checksum:
        raise CorruptDataError(f"{where}: decoded bytes fail their xxh3-64 checksum "
                               f"(expected {enc.checksum:016x}, got {checksum(out):016x})")


def decode_rows(enc: EncodedTensor, rows: np.ndarray, *, backend=None,
                workers: int = 1) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of a 2-D tensor, as a uint8 array
    [len(rows), row bytes], decoding only the groups they touch."""
    n_rows, width = enc.shape
    itemsize = enc.original_bytes // max(enc.count, 1)
    out = np.empty((len(rows), width * itemsize), dtype=np.uint8)
    if enc.codec == CODEC_RAW:
        table = np.asarray(enc.raw, dtype=np.uint8).reshape(n_rows, width * itemsize)
        np.take(table, rows, axis=0, out=out)
        return out
    group = 32 * enc.geometry.lane_symbols
    first = rows * width // group                   # group of each row's first value
    last = ((rows + 1) * width - 1) // group
    # Runs of consecutive groups, each decoded with one back-end call.
    i = 0
    while i < len(rows):
        g0, g1, j = int(first[i]), int(last[i]) + 1, i + 1
        while j < len(rows) and first[j] <= g1:
            g1 = max(g1, int(last[j]) + 1)
            j += 1
        values = decode_group_range(enc, g0, g1, backend=backend, workers=workers).view(np.uint8)
        base = g0 * group * itemsize
        for k in range(i, j):
            at = int(rows[k]) * width * itemsize - base
            out[k] = values[at:at + width * itemsize]
        i = j
    return out


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
        views = []
        for pl in self.placements:
            src = pl.source
            dst = flat[pl.offset:pl.offset + pl.nbytes]
            view = buffer[pl.offset:pl.offset + pl.nbytes].view(pl.dtype).view(pl.shape)
            if src.torch_dtype == pl.dtype:
                decode_into(src.encoded, dst, backend=self.backend, workers=workers,
                            verify=not self._verified, where=src.where())
            else:           # transformers cast it (dtype plan, or another dtype asked for)
                tmp = np.empty(src.encoded.original_bytes, dtype=np.uint8)
                decode_into(src.encoded, tmp, backend=self.backend, workers=workers,
                            verify=not self._verified, where=src.where())
                view.copy_(bytes_to_torch(tmp, src.dtype, src.shape))
            views.append(view)
        self._verified = True
        return views


def _triton_module():
    import importlib
    try:
        module = importlib.import_module(TRITON_MODULE)
    except ImportError as exc:
        raise UnsupportedError(
            f"decode='on_the_fly' on CUDA needs the Triton decoder ({TRITON_MODULE}), which "
            f"cannot be imported here ({exc}); use decode='at_load' to decode once and run on "
            "the GPU") from None
    if not hasattr(getattr(module, "DeviceBlockDecoder", None), "from_encoded"):
        raise UnsupportedError(f"{TRITON_MODULE} has no DeviceBlockDecoder.from_encoded; this "
                               "floatzip's on-the-fly CUDA path does not match it; use "
                               "decode='at_load'")
    return module


def check_cuda_decoder() -> None:
    """Raise a clear error now if on-the-fly CUDA decoding cannot work."""
    if not torch.cuda.is_available():
        raise UnsupportedError(f"device='cuda': this torch ({torch.__version__}) sees no CUDA "
                               "device; use device='cpu'")
    _triton_module()


class TritonBlockDecoder(BlockDecoder):
    """Keeps a unit's coded weights in device memory and decodes all of them
    with one launch of the Triton kernel, on the current stream, into the
    given buffer: no host synchronisation, and reuse of the buffer is ordered
    by the stream. The first decode of each unit waits for the device once
    to check that every lane ended where it should (GPU decoding has no
    checksum; the CPU path verifies those)."""

    def __init__(self, placements, device: torch.device):
        super().__init__(placements)
        td = _triton_module()
        for pl in placements:
            if pl.source.torch_dtype != pl.dtype:
                raise UnsupportedError(f"{pl.source.where()}: stored as {pl.source.dtype} but the "
                                       f"model wants {pl.dtype}; on-the-fly GPU decoding does not "
                                       "cast; load with the checkpoint's dtype or decode='at_load'")
        self._decoder = td.DeviceBlockDecoder.from_encoded(
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


# -- placeholders -------------------------------------------------------------------

class CompressedWeight(nn.Parameter):
    """What a deferred parameter is between uses: shape, dtype and device
    metadata (so ``model.dtype``, ``num_parameters()`` and friends work), no
    data, and an error for any computation. A plain meta tensor would not
    do: torch computes ``F.linear(cpu_input, meta_weight)`` into an
    uninitialised CPU tensor without a word."""

    _allowed = None

    @classmethod
    def _allowed_functions(cls):
        if cls._allowed is None:
            T = torch.Tensor
            cls._allowed = {
                T.shape.__get__, T.dtype.__get__, T.device.__get__, T.ndim.__get__,
                T.layout.__get__, T.is_meta.__get__, T.is_cuda.__get__, T.nbytes.__get__,
                T.itemsize.__get__, T.requires_grad.__get__, T.requires_grad.__set__,
                T.requires_grad_, T.is_floating_point, T.is_complex, T.numel, T.dim, T.size,
                T.element_size, T.__repr__, T.__format__, T.detach, T.data.__get__,
            }
        return cls._allowed

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls._allowed_functions():
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        weight = next((a for a in args if isinstance(a, CompressedWeight)), None)
        name = weight.__dict__.get("_floatzip_name", "a weight") if weight is not None else "a weight"
        raise FloatzipError(
            f"floatzip: {name} is kept compressed and decoded only while its module runs, but "
            f"{getattr(func, '__name__', func)} used it outside that module's forward; load the "
            "model with decode='at_load' to use its weights freely")


def _placeholder(param: nn.Parameter, name: str) -> CompressedWeight:
    ph = torch.Tensor._make_subclass(
        CompressedWeight, torch.empty(param.shape, dtype=param.dtype, device="meta"), False)
    ph.__dict__["_floatzip_name"] = name
    return ph


# -- the runtime -------------------------------------------------------------------

_swap_tensor_impl = getattr(torch._C, "_swap_tensor_impl", None)


def swap_contents(a: torch.Tensor, b: torch.Tensor) -> None:
    """What ``torch.utils.swap_tensors(a, b)`` does (class, ``__dict__`` and
    tensor swapped, each Python object kept), without its Python-level checks
    when they would pass: every unit's forward swaps each of its parameters
    twice, and torch's function costs ~2 us a swap (a Llama block's hooks
    took 45 us with it, 16 without: benchmarks/results/hooks_cpu.md). The
    checks guard against other C++ references to either tensor (autograd's
    saved tensors) and against weak references: when there are any, torch's
    own function runs and raises or poisons as it does. Our two classes share
    their (empty) slots."""
    if (_swap_tensor_impl is None or a._use_count() != 1 or b._use_count() != 1
            or weakref.getweakrefs(a) or weakref.getweakrefs(b)):
        torch.utils.swap_tensors(a, b)
        return
    a.__class__, b.__class__ = b.__class__, a.__class__
    a.__dict__, b.__dict__ = b.__dict__, a.__dict__
    _swap_tensor_impl(a, b)


@dataclass
class DecodeStats:
    """What on-the-fly decoding cost. ``decode_s``: time spent decoding (in
    the background thread when prefetched); ``wait_s``: time forwards spent
    blocked on decoding, the part prefetch did not hide. Device decodes are
    asynchronous and not timed."""
    decodes: int = 0
    decoded_bytes: int = 0
    decode_s: float = 0.0
    wait_s: float = 0.0
    prefetch_hits: int = 0
    prefetch_misses: int = 0

    def reset(self) -> None:
        self.__init__()


@dataclass
class DeferredParam:
    """The model's Parameter object (identity kept: tied modules share it)
    and the one its contents are swapped with. While the unit is idle,
    ``param`` is a :class:`CompressedWeight` and ``shadow`` a plain
    Parameter; while it runs, ``param`` is the plain Parameter viewing the
    decoded weights (:func:`swap_contents` swaps class and data)."""
    name: str
    param: nn.Parameter
    shadow: nn.Parameter
    refs: int = 0               # units running that hold it (tied weights: two)


@dataclass(eq=False)
class Unit:
    kind: str                   # "embeddings", "block", "head"
    name: str
    module: nn.Module
    params: list[DeferredParam]
    decoder: BlockDecoder
    rows: EmbeddingRows | None = None       # input embeddings: decode only the rows used
    active: bool = False
    slot: torch.Tensor | None = None        # while it runs with the whole table decoded
    hooks: list = field(default_factory=list)


@dataclass
class _Decoded:
    unit: Unit
    slot: torch.Tensor
    result: Future | list       # views, or the prefetch thread's future of them


class OnTheFlyDecoder:
    """Decodes a model's units just in time. Made by :func:`attach`;
    reachable as ``model.floatzip_decoder``."""

    def __init__(self, units: list[Unit], device: torch.device, prefetch: bool | None = None):
        self.units = units
        self.device = device
        cpu = all(isinstance(u.decoder, CpuBlockDecoder) for u in units)
        # Cores torch leaves idle: a background decode there does not slow
        # the forward down. With none (torch uses every core, the default),
        # decoding in the background competes with the forward's threads
        # and costs more than it hides, so "auto" (None) does not prefetch.
        idle = (os.cpu_count() or 1) - torch.get_num_threads()
        self.prefetch = cpu and (idle > 0 if prefetch is None else bool(prefetch))
        self.prefetch_workers = max(1, idle)
        self.stats = DecodeStats()
        # Row-decoded embeddings need no slot (only if they fall back to a
        # whole decode, and then one of their own).
        self.slot_bytes = max((u.decoder.nbytes for u in units if u.rows is None), default=0)
        self._free: list[torch.Tensor] = []
        self._slots_made = 0
        self._pending: _Decoded | None = None
        self._last: Unit | None = None
        self._learnt_next: dict[int, Unit] = {}
        self._static_next = {id(u): units[(i + 1) % len(units)] for i, u in enumerate(units)}
        self._lock = threading.Lock()
        self._timed = device.type == "cpu"
        self._executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="floatzip-prefetch")
                          if self.prefetch else None)
        for unit in units:
            unit.hooks = [
                unit.module.register_forward_pre_hook(self._make_pre_hook(unit)),
                unit.module.register_forward_hook(self._make_post_hook(unit), always_call=True),
            ]

    # Hooks are closures over their unit: the module tree stays as
    # transformers built it.
    def _make_pre_hook(self, unit):
        def pre_hook(module, args):
            return self._enter(unit, args)
        return pre_hook

    def _make_post_hook(self, unit):
        def post_hook(module, args, output):
            self._exit(unit)
        return post_hook

    @property
    def slots(self) -> int:
        """Buffers allocated so far: 2 with prefetch, 1 without (more only
        if units run nested)."""
        return self._slots_made

    @property
    def compressed_bytes(self) -> int:
        """Coded bytes of the weights decoded on the fly."""
        return sum(pl.source.stored_bytes for u in self.units for pl in u.decoder.placements)

    # -- slots
    def _take_slot(self, nbytes: int = 0) -> torch.Tensor:
        if nbytes > self.slot_bytes:        # a one-off, not kept
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        if self._free:
            return self._free.pop()
        self._slots_made += 1
        return torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device)

    def _give_slot(self, slot: torch.Tensor) -> None:
        if slot.numel() == self.slot_bytes:
            self._free.append(slot)

    # -- decoding
    def _decode(self, unit: Unit, slot: torch.Tensor, background: bool = False) -> list[torch.Tensor]:
        t0 = time.perf_counter()
        if background:
            views = unit.decoder.decode(slot, workers=self.prefetch_workers)
        else:
            views = unit.decoder.decode(slot)
        dt = time.perf_counter() - t0
        with self._lock:
            self.stats.decodes += 1
            self.stats.decoded_bytes += sum(pl.nbytes for pl in unit.decoder.placements)
            if self._timed:
                self.stats.decode_s += dt
        return views

    def _decoded(self, unit: Unit) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pending, self._pending = self._pending, None
        if pending is not None:
            t0 = time.perf_counter()
            try:
                views = pending.result.result()
            except BaseException:
                self._give_slot(pending.slot)
                raise
            finally:
                self.stats.wait_s += time.perf_counter() - t0
            if pending.unit is unit:
                self.stats.prefetch_hits += 1
                return pending.slot, views
            self._give_slot(pending.slot)       # guessed wrong: decoded for nothing
        if self.prefetch:
            self.stats.prefetch_misses += 1
        slot = self._take_slot(unit.decoder.nbytes)
        t0 = time.perf_counter()
        try:
            views = self._decode(unit, slot)
        except BaseException:
            self._give_slot(slot)
            raise
        if self._timed:
            self.stats.wait_s += time.perf_counter() - t0
        return slot, views

    def _next_of(self, unit: Unit) -> Unit:
        return self._learnt_next.get(id(unit)) or self._static_next[id(unit)]

    # -- hooks
    def _enter(self, unit: Unit, args: tuple):
        if unit.active:
            raise FloatzipError(f"floatzip: module {unit.name!r} ran inside its own forward; "
                                "on-the-fly decoding cannot nest a unit in itself")
        if self._last is not None and self._last is not unit:
            self._learnt_next[id(self._last)] = unit
        self._last = unit
        new_args = None
        looked_up = self._rows(unit, args)
        if looked_up is not None:
            table, ids = looked_up
            self._bind(unit, [table])
            new_args = (ids,) + tuple(args[1:])
        else:
            slot, views = self._decoded(unit)
            unit.slot = slot
            self._bind(unit, views)
        unit.active = True
        if self.prefetch:
            nxt = self._next_of(unit)
            if nxt is not unit and not nxt.active and nxt.rows is None:
                slot = self._take_slot()
                self._pending = _Decoded(nxt, slot, self._executor.submit(self._decode, nxt, slot, True))
        return new_args

    def _rows(self, unit: Unit, args: tuple):
        """Row lookup for an embedding unit, when it applies."""
        if (unit.rows is None or not args or not isinstance(args[0], torch.Tensor)
                or args[0].is_floating_point() or args[0].device.type != "cpu"
                or unit.params[0].refs):
            return None
        t0 = time.perf_counter()
        try:
            looked_up = unit.rows.lookup(args[0])
        except CorruptDataError as exc:
            raise CorruptDataError(f"{unit.rows.placement.source.where()}: {exc}") from None
        dt = time.perf_counter() - t0
        if looked_up is not None:
            with self._lock:
                self.stats.decodes += 1
                self.stats.decoded_bytes += looked_up[0].numel() * looked_up[0].element_size()
                self.stats.decode_s += dt
                self.stats.wait_s += dt
        return looked_up

    def _bind(self, unit: Unit, tensors) -> None:
        for dp, tensor in zip(unit.params, tensors):
            if dp.refs == 0:
                dp.shadow.data = tensor
                swap_contents(dp.param, dp.shadow)
            dp.refs += 1

    def _exit(self, unit: Unit) -> None:
        if not unit.active:                 # its pre-hook failed
            return
        for dp in unit.params:
            dp.refs -= 1
            if dp.refs == 0:
                swap_contents(dp.param, dp.shadow)
        if unit.slot is not None:
            self._give_slot(unit.slot)
            unit.slot = None
        unit.active = False

    def synchronize(self) -> None:
        """Wait until a prefetch in flight has finished (it stays ready for
        its unit)."""
        if self._pending is not None and isinstance(self._pending.result, Future):
            try:
                self._pending.result.result()
            except BaseException:       # raised again when its unit runs
                pass

    def close(self) -> None:
        """Remove the hooks and stop the prefetch thread. The model is then
        unusable (its deferred weights stay placeholders)."""
        if self._pending is not None:
            self._pending.result.cancel()
            self._pending = None
        for unit in self.units:
            for h in unit.hooks:
                h.remove()
            unit.hooks = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._free.clear()

    def __repr__(self) -> str:
        blocks = sum(u.kind == "block" for u in self.units)
        kind = type(self.units[0].decoder).__name__ if self.units else "-"
        return (f"OnTheFlyDecoder({len(self.units)} units, {blocks} of them blocks, {kind}, "
                f"device={self.device}, prefetch={self.prefetch}, "
                f"slots={self.slots} x {self.slot_bytes:,} bytes)")


# -- wiring a loaded model ------------------------------------------------------------

_PINNED_CLASSES: dict[type, type] = {}


def _pin_device(model: nn.Module, device: torch.device) -> None:
    """transformers' ``model.device`` is its first parameter's device: the
    embedding, a meta placeholder between uses. Give the instance a subclass
    (same name) that reports the real device, so that generate() and
    pipelines put their tensors in the right place."""
    cls = type(model)
    pinned = _PINNED_CLASSES.get(cls)
    if pinned is None:
        pinned = type(cls.__name__, (cls,), {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "device": property(lambda self: self._floatzip_device),
        })
        _PINNED_CLASSES[cls] = pinned
    model._floatzip_device = device
    model.__class__ = pinned


def make_block_decoder(placements, device: torch.device, backend=None,
                       workers: int = 1) -> BlockDecoder:
    """The block decoder for a device: Triton kernels on CUDA (or on the
    CPU under TRITON_INTERPRET=1 with backend="triton", for tests), the
    coding back end on CPU."""
    if device.type == "cuda" or backend == "triton":
        if backend not in (None, "triton"):
            raise UnsupportedError(f"on {device}, on-the-fly decoding uses the triton back end, "
                                   f"not {backend!r}")
        return TritonBlockDecoder(placements, device)
    return CpuBlockDecoder(placements, backend=backend, workers=workers)


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
        with open(fz.path, "rb", buffering=0) as f:
            stream = StreamDecoder(fz, f.fileno(), backend=backend, workers=workers,
                                   chunk_bytes=VERIFY_CHUNK_BYTES)
            for _ in stream.chunks(src.key):
                pass
    except OSError as exc:
        raise FormatError(f"{src.where()}: cannot read it ({exc.strerror or exc})") from None


def attach(model: nn.Module, deferred: dict, checkpoint=None, *, device: torch.device,
           prefetch: bool | None = None, backend=None, workers: int = 1) -> OnTheFlyDecoder:
    """Install on-the-fly decoding on a model whose deferred parameters are
    meta placeholders. ``deferred``: model parameter name -> SourceTensor."""
    units_found = unit_modules(model)
    prefixes = _owner_prefixes(units_found)
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)

    made: dict[int, tuple[DeferredParam, object]] = {}
    units = []
    for kind, uname, module in units_found:
        pairs, dparams = [], []
        for p in module.parameters():
            if p.device.type != "meta":
                continue                    # resident (converted, or not in the checkpoint)
            if id(p) not in made:
                names = names_of[id(p)]
                src = next((deferred[n] for n in names if n in deferred), None)
                if src is None or not all(any(n.startswith(x) for x in prefixes) for n in names):
                    continue                # left for the check below
                p.requires_grad_(False)
                torch.utils.swap_tensors(p, _placeholder(p, names[0]))
                shadow = nn.Parameter(torch.empty(0, dtype=p.dtype, device=device),
                                      requires_grad=False)
                made[id(p)] = (DeferredParam(names[0], p, shadow), src)
            dp, src = made[id(p)]
            dparams.append(dp)
            pairs.append((src, p))
        if dparams:
            placements = layout(pairs)
            decoder = make_block_decoder(placements, device, backend, workers)
            unit = Unit(kind, uname, module, dparams, decoder)
            if (kind == "embeddings" and isinstance(decoder, CpuBlockDecoder)
                    and isinstance(module, nn.Embedding) and len(dparams) == 1
                    and dparams[0].param is module.weight and module.max_norm is None):
                unit.rows = EmbeddingRows(placements[0], backend=backend, workers=workers)
                verify_whole(placements[0].source, backend, workers)
            units.append(unit)

    left = [n for n, p in model.named_parameters() if p.device.type == "meta" and id(p) not in made]
    left += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if left:
        raise FloatzipError(f"floatzip: {len(left)} tensor(s) of {type(model).__name__} were left "
                            f"undecoded (first: {left[:3]}); load with decode='at_load'")
    runtime = OnTheFlyDecoder(units, device, prefetch)
    runtime.checkpoint = checkpoint         # keeps the memory maps open
    model.floatzip_decoder = runtime
    _pin_device(model, device)
    return runtime
