"""Run a model whose weights stay compressed: decode each unit (see
:mod:`.units`) just before its forward, into a reused buffer, and let go of
it right after.

:func:`attach` wires a loaded model: each deferred parameter becomes a
placeholder (:mod:`.weights`), each unit gets a block decoder
(:mod:`.block_decoders`), and an :class:`OnTheFlyDecoder` owns the buffers
("slots") and the hooks. A forward pre-hook on a unit takes a slot holding
its decoded weights (prefetched, or decoded now), points the unit's
parameters at views of it and, with prefetch, starts decoding the next unit
in a background thread; the forward hook turns the parameters back into
placeholders and frees the slot. The next unit is the one that followed
last time (learnt as the model runs, so generation's head -> embeddings
wrap-around is prefetched too), at first the static order embeddings,
blocks, head.

Prefetch on CPU pays only where torch leaves cores idle: decoding on the
cores that run the forward's threads slows both down (measured on 2 cores,
1.1B Llama in BF16: 1.21 s/token with prefetch against 0.95 s without). The default
("auto") prefetches only when ``torch.get_num_threads()`` is below the core
count, and then decodes with the idle cores.

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

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import backends
from ..errors import CorruptDataError, FloatzipError
from .block_decoders import (
    BlockDecoder,
    CpuBlockDecoder,
    EmbeddingRows,
    FastCpuBlockDecoder,
    block_backend,
    layout,
    make_block_decoder,
    verify_whole,
)
from .units import owner_prefixes, unit_modules
from .weights import placeholder, swap_contents


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
    ``param`` is a :class:`.weights.CompressedWeight` and ``shadow`` a plain
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

    @property
    def fast_code_bytes(self) -> int:
        """Bytes of the fast in-memory code held (memory="fast"; tied
        weights once), 0 otherwise."""
        held = {}
        for u in self.units:
            for ft in getattr(u.decoder, "coded", None) or ():
                if ft is not None:
                    held[id(ft)] = ft.nbytes
        return sum(held.values())

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


def attach(model: nn.Module, deferred: dict, checkpoint=None, *, device: torch.device,
           prefetch: bool | None = None, backend=None, workers: int = 1,
           memory: str = "compact") -> OnTheFlyDecoder:
    """Install on-the-fly decoding on a model whose deferred parameters are
    meta placeholders. ``deferred``: model parameter name -> SourceTensor;
    ``backend``: as ``floatzip.backends.select`` takes it, chosen once for
    ``device`` before the model is touched; ``memory``: "compact" (decode
    from the file's code) or "fast" (transcode BF16 weights now into the
    fast in-memory code, and decode from that)."""
    fast = backends.select_fast_code(backend, device=device.type) if memory == "fast" else None
    shared: dict = {}                       # source key -> FastTensor (tied weights: once)
    backend = block_backend(backend, device).name
    units_found = unit_modules(model)
    prefixes = owner_prefixes(units_found)
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)

    made: dict[int, tuple[DeferredParam, object]] = {}
    units = []
    to_transcode: list[FastCpuBlockDecoder] = []
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
                torch.utils.swap_tensors(p, placeholder(p, names[0]))
                shadow = nn.Parameter(torch.empty(0, dtype=p.dtype, device=device),
                                      requires_grad=False)
                made[id(p)] = (DeferredParam(names[0], p, shadow), src)
            dp, src = made[id(p)]
            dparams.append(dp)
            pairs.append((src, p))
        if dparams:
            placements = layout(pairs)
            decoder = make_block_decoder(placements, device, backend, workers, fast=fast,
                                         shared=shared)
            unit = Unit(kind, uname, module, dparams, decoder)
            if (kind == "embeddings" and isinstance(decoder, CpuBlockDecoder)
                    and isinstance(module, nn.Embedding) and len(dparams) == 1
                    and dparams[0].param is module.weight and module.max_norm is None):
                # Rows are looked up in the file's code in both memory modes:
                # a token's rows are a few KB of groups, and the table's
                # memory map holds only those.
                unit.rows = EmbeddingRows(placements[0], backend=backend, workers=workers)
                verify_whole(placements[0].source, backend, workers)
            elif isinstance(decoder, FastCpuBlockDecoder):
                to_transcode.append(decoder)
            units.append(unit)

    left = [n for n, p in model.named_parameters() if p.device.type == "meta" and id(p) not in made]
    left += [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if left:
        raise FloatzipError(f"floatzip: {len(left)} tensor(s) of {type(model).__name__} were left "
                            f"undecoded (first: {left[:3]}); load with decode='at_load'")
    # Transcode at load, not in the first forward; the largest unit first,
    # so that its temporary buffers are not on top of every other unit's code.
    for decoder in sorted(to_transcode, key=lambda d: -d.nbytes):
        decoder.prepare()
    runtime = OnTheFlyDecoder(units, device, prefetch)
    runtime.checkpoint = checkpoint         # keeps the memory maps open
    model.floatzip_decoder = runtime
    _pin_device(model, device)
    return runtime
