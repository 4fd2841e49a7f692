"""Coded tensors in device memory, still compressed, and the decoder that
decodes several of them (one transformer block) with one kernel launch.
They share this module: a DeviceCodedTensor decodes through a one-tensor
DeviceBlockDecoder, which takes DeviceCodedTensors.

``DeviceCodedTensor(enc, device, name=None)``
    One EncodedTensor moved to a device, still compressed: its decode table
    (int32[2**table_log], in the device layout of ``host.device_table``: nbits,
    the decoded value with a zero raw field, next-state base), the start bit of each
    lane (int64[lanes + 1], the last entry is the payload's end), the payload
    and the packed raw fields as int32 words with zero slack after them.
    A ``raw``-codec tensor is a device copy of its bytes.
    ``.decode(out=None) -> torch.Tensor`` decodes it (one launch).

``DeviceBlockDecoder(tensors, *, groups_per_program=4, num_warps=4, table_memory=None,
raw_ahead=None, prefetch=None, staging=None, max_registers=None, launch=None)``
    Concatenates the buffers of several DeviceCodedTensors (one transformer
    block, say) once, and builds one descriptor row per program.
    ``table_memory``, ``prefetch``, ``raw_ahead``, ``staging`` and
    ``max_registers`` pick the build of the kernel (``.build``, a
    KernelBuild): ``table_memory``
    "global" reads decode tables through L1, "shared" first copies each program's table
    to shared memory and reads it with inline PTX; ``prefetch`` "L1" or
    "L2" prefetches payload words and raw rows into that cache level
    (inline PTX), "none" does not, "auto" does below a launch size;
    ``raw_ahead`` is how many raw rows each lane keeps in flight;
    ``staging`` "async" stages payload words through a per-lane FIFO in
    shared memory filled by cp.async (inline PTX), "fifo" through one in
    global scratch memory with plain loads and stores, "none" loads them
    directly (builds.STAGINGS says more); ``max_registers`` caps the registers of
    a thread (ptxas's maxnreg: more resident warps, maybe spills), 0 does
    not. Inline PTX runs on CUDA only; None
    takes CUDA_BUILD on a GPU and INTERPRETER_BUILD (no inline PTX) under
    TRITON_INTERPRET=1.
    ``launch`` is how the kernel is queued (LAUNCHES): "graph" (the default
    on CUDA, unless FLOATZIP_LAUNCH=direct) launches directly the first
    time for each build and output buffer, then captures that launch as a
    CUDA graph and replays it, which costs the host a driver call instead
    of Triton's dispatch (graph_launch.py says why that matters); "direct"
    always goes through Triton. Launches made while the current stream is
    captured are direct.
    ``DeviceBlockDecoder.from_encoded(encoded, device, names=None)`` does the
    same from EncodedTensors with a single upload per buffer.
    ``.decode(out=None) -> list[torch.Tensor]`` runs ONE launch for every
    tans-coded tensor, on torch's current stream, into ``out`` (a uint8
    buffer of ``.out_nbytes`` bytes, ``.new_output()`` makes one) or into a
    buffer the decoder allocates once and reuses. It returns views of that
    buffer, in the order of ``tensors``; a raw-codec tensor comes back as a
    view of its stored bytes (no copy: do not write to it). Nothing in it
    waits for the device.
    ``.check()`` waits for the device and raises CorruptDataError if any
    lane decoded since the last check did not end exactly where its size
    says, or left non-zero padding bits (the checks numpy_ref makes).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ...codecs.encoded import CODEC_RAW, EncodedTensor
from ...codecs.layout import LANES, CodedGeometry
from ...dtypes import ITEMSIZE
from ...errors import CorruptDataError, DecoderArgumentError, UnsupportedError
from .builds import (
    kernel_constants,
    launch_options,
    launchable,
    resolve_build,
    resolve_prefetch,
)
from .graph_launch import GraphLauncher
from .host import (
    CodedParts,
    check_encoded,
    check_output,
    host_parts,
    output_dtype,
    resolve_device,
    typed_view,
)
from .kernel import (
    DESC_FIELDS,
    DESC_FIRST,
    DESC_GROUPS,
    DESC_K,
    DESC_LANE,
    DESC_LEFT,
    DESC_DROPPED,
    DESC_DROPPED_VALUE,
    DESC_MIN_STEPS,
    DESC_OUT,
    DESC_RAW_BIT,
    DESC_RAW_BITS,
    DESC_SIGN_RAW,
    DESC_STEPS,
    DESC_TABLE,
    DESC_TABLE_LOG,
    DESC_WIDTH,
    FIFO_SLOTS,
    MAX_ASYNC_GROUPS,
)

# Output slots of a block start on this boundary (bytes): every dtype view is
# aligned, and the weights are as aligned as a fresh allocation would be.
SLOT_ALIGN = 256
LAUNCHES = ("direct", "graph")     # how DeviceBlockDecoder queues the kernel


def default_launch(device: torch.device) -> str:
    """How a decoder queues its kernel when its caller does not say:
    "graph" on CUDA, unless the environment variable FLOATZIP_LAUNCH says
    "direct" (for load_model, which has no such option, should graph
    replays misbehave somewhere); "direct" elsewhere."""
    if device.type != "cuda":
        return "direct"
    chosen = os.environ.get("FLOATZIP_LAUNCH", "graph")
    if chosen not in LAUNCHES:
        raise DecoderArgumentError(f"the environment variable FLOATZIP_LAUNCH must be one of "
                                   f"{LAUNCHES}, got {chosen!r}")
    return chosen


class DeviceCodedTensor:
    """One coded tensor in device memory, still compressed."""

    def __init__(self, enc: EncodedTensor, device="cuda", name: str | None = None):
        self.name = name
        label = f"tensor {name!r}" if name else "tensor"
        check_encoded(enc, label)
        self.device = resolve_device(device)
        self.dtype = enc.dtype
        self.shape = tuple(enc.shape)
        self.codec = enc.codec
        self.geometry: CodedGeometry | None = enc.geometry
        self.parts: CodedParts | None = None
        self.data: torch.Tensor | None = None       # raw codec: the bytes
        if enc.codec == CODEC_RAW:
            raw = np.ascontiguousarray(np.asarray(enc.raw, dtype=np.uint8)).copy()
            self.data = torch.from_numpy(raw).to(self.device)
        else:
            host = host_parts(enc, label)
            self.parts = CodedParts(*(t.to(self.device) for t in
                                      (host.table, host.lane_bits, host.payload, host.raw)))
        self._decoder: DeviceBlockDecoder | None = None

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def torch_dtype(self) -> torch.dtype:
        return output_dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        """Device memory the coded tensor occupies."""
        if self.data is not None:
            return self.data.numel()
        return sum(t.numel() * t.element_size() for t in
                   (self.parts.table, self.parts.lane_bits, self.parts.payload, self.parts.raw))

    @property
    def out_nbytes(self) -> int:
        return self.count * ITEMSIZE.get(self.dtype, 1)

    def decode(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The decoded tensor (``self.torch_dtype``, ``self.shape``), written
        into ``out`` when given (same dtype, ``count`` elements, contiguous,
        on this device). One launch, no synchronisation."""
        if out is None:
            if self.data is not None:       # a new tensor, as for tans: not a view
                return typed_view(self.data.clone(), self.dtype, self.shape)
            out = torch.empty(self.shape, dtype=self.torch_dtype, device=self.device)
        check_output(out, self.device, self.torch_dtype, self.count, self.name)
        if self.data is not None:
            out.view(-1).view(torch.uint8).copy_(self.data)
            return out.view(self.shape)
        if self._decoder is None:
            # Direct: a graph pays for a reused output buffer, and these
            # one-off decodes mostly get a new one.
            self._decoder = DeviceBlockDecoder([self], launch="direct")
        self._decoder._launch(out.view(-1).view(torch.uint8))
        return out.view(self.shape)

    def check(self) -> None:
        """Raise CorruptDataError if a decode since the last check met a
        corrupt lane (waits for the device)."""
        if self._decoder is not None:
            self._decoder.check()


class DeviceBlockDecoder:
    """Decodes several coded tensors (one transformer block) in one launch."""

    def __init__(self, tensors: Sequence[DeviceCodedTensor], *, groups_per_program: int = 4,
                 num_warps: int = 4, device=None, table_memory: str | None = None,
                 raw_ahead: int | None = None, prefetch: str | None = None,
                 staging: str | None = None, max_registers: int | None = None,
                 launch: str | None = None):
        tensors = list(tensors)
        if not tensors:
            raise DecoderArgumentError("DeviceBlockDecoder needs at least one tensor")
        for t in tensors:
            if not isinstance(t, DeviceCodedTensor):
                raise UnsupportedError(
                    f"DeviceBlockDecoder takes DeviceCodedTensor, got {type(t).__name__}; "
                    "use DeviceBlockDecoder.from_encoded for EncodedTensor")
        devices = {t.device for t in tensors}
        if device is None and len(devices) > 1:
            raise UnsupportedError(f"tensors of one block lie on several devices: {sorted(map(str, devices))}")
        self.device = resolve_device(device if device is not None else tensors[0].device)
        self._build([(t.name, t.dtype, t.shape, t.geometry, t.parts, t.data) for t in tensors],
                    groups_per_program, num_warps,
                    (table_memory, prefetch, raw_ahead, staging, max_registers))
        self.launch = launch

    @classmethod
    def from_encoded(cls, encoded: Sequence[EncodedTensor], device="cuda", *,
                     names: Sequence[str] | None = None, groups_per_program: int = 4,
                     num_warps: int = 4, table_memory: str | None = None,
                     raw_ahead: int | None = None, prefetch: str | None = None,
                     staging: str | None = None, max_registers: int | None = None,
                     launch: str | None = None) -> DeviceBlockDecoder:
        """Build on the host and upload each concatenated buffer once."""
        encoded = list(encoded)
        names = list(names) if names is not None else [None] * len(encoded)
        if len(names) != len(encoded):
            raise DecoderArgumentError(f"{len(names)} names for {len(encoded)} tensors")
        if not encoded:
            raise DecoderArgumentError("DeviceBlockDecoder needs at least one tensor")
        self = cls.__new__(cls)
        self.device = resolve_device(device)
        items = []
        for enc, nm in zip(encoded, names):
            check_encoded(enc, f"tensor {nm!r}" if nm else "tensor")
            if enc.codec == CODEC_RAW:
                raw = torch.from_numpy(np.asarray(enc.raw, dtype=np.uint8).copy())
                items.append((nm, enc.dtype, tuple(enc.shape), None, None, raw.to(self.device)))
            else:
                items.append((nm, enc.dtype, tuple(enc.shape), enc.geometry,
                              host_parts(enc, f"tensor {nm!r}" if nm else "tensor"), None))
        self._build(items, groups_per_program, num_warps,
                    (table_memory, prefetch, raw_ahead, staging, max_registers))
        self.launch = launch
        return self

    def _build(self, items, groups_per_program: int, num_warps: int, options: tuple) -> None:
        """``options``: resolve_build's arguments, the caller's Nones included."""
        staging = options[3]
        if groups_per_program < 1 or groups_per_program & (groups_per_program - 1):
            raise UnsupportedError(f"groups_per_program must be a power of two, got {groups_per_program}")
        if staging == "async" and not num_warps <= groups_per_program <= MAX_ASYNC_GROUPS:
            # Fewer lanes than threads: Triton runs a lane in several warps
            # and masks their stores, not their inline PTX, so every copy
            # would land several times, each copy's wait covering only its
            # own warp. More groups: the FIFOs outgrow static shared memory.
            raise UnsupportedError(
                f"staging='async' needs num_warps <= groups_per_program <= {MAX_ASYNC_GROUPS} "
                f"(one thread per lane at least), got {groups_per_program} groups and "
                f"{num_warps} warps")
        build = resolve_build(*options)
        self.groups_per_program = groups_per_program
        self.num_warps = num_warps
        self.names = [it[0] for it in items]
        self.dtypes = [it[1] for it in items]
        self.shapes = [it[2] for it in items]
        self._raw_data = {}          # index -> bytes of a raw-codec tensor
        self._slots = {}             # index -> output byte offset
        tables, lanes, payloads, raws, rows = [], [], [], [], []
        table_at = lane_at = payload_words = raw_words = 0
        out_at = 0
        for i, (_, dtype, _, g, parts, data) in enumerate(items):
            if g is None:
                self._raw_data[i] = data.to(self.device)
                continue
            self._slots[i] = out_at
            itemsize = g.width // 8
            k = g.lane_symbols
            group_values = LANES * k
            lane_bits = parts.lane_bits + payload_words * 32 if payload_words else parts.lane_bits
            for first_group in range(0, g.groups, groups_per_program):
                n_groups = min(groups_per_program, g.groups - first_group)
                first = first_group * group_values
                row = [0] * DESC_FIELDS
                row[DESC_TABLE] = table_at
                row[DESC_TABLE_LOG] = g.table_log
                row[DESC_LANE] = lane_at + first_group * LANES
                row[DESC_RAW_BIT] = raw_words * 32
                row[DESC_RAW_BITS] = g.raw_bits
                row[DESC_FIRST] = first
                row[DESC_LEFT] = min(g.count - first, n_groups * group_values)
                row[DESC_K] = k
                row[DESC_OUT] = out_at + first * itemsize
                row[DESC_WIDTH] = g.width
                row[DESC_SIGN_RAW] = 1 - g.sign_in_symbol
                row[DESC_DROPPED] = g.dropped_bits
                row[DESC_DROPPED_VALUE] = g.dropped_value
                row[DESC_GROUPS] = n_groups
                row[DESC_STEPS] = min(k, -(-row[DESC_LEFT] // LANES))
                if n_groups == groups_per_program:
                    # Lanes of the last group hold the fewest symbols.
                    last_group = row[DESC_LEFT] - (n_groups - 1) * group_values
                    row[DESC_MIN_STEPS] = last_group // LANES
                rows.append(row)
            tables.append(parts.table)
            lanes.append(lane_bits)
            payloads.append(parts.payload)
            raws.append(parts.raw)
            table_at += parts.table.numel()
            lane_at += parts.lane_bits.numel()
            payload_words += parts.payload.numel()
            raw_words += parts.raw.numel()
            out_at += -(-g.count * itemsize // SLOT_ALIGN) * SLOT_ALIGN
        self.out_nbytes = max(out_at, SLOT_ALIGN)
        self.programs = len(rows)
        self.build = resolve_prefetch(build, sum(r[DESC_GROUPS] for r in rows) * LANES,
                                      self.device)
        dev = self.device

        def joined(parts_list, dtype):
            if not parts_list:
                return torch.zeros(1, dtype=dtype, device=dev)
            if len(parts_list) == 1:
                return parts_list[0].to(dev)
            return torch.cat([p.to(dev) for p in parts_list])

        self.table = joined(tables, torch.int32)
        self.lane_bits = joined(lanes, torch.int64)
        self.payload = joined(payloads, torch.int32)
        self.raw = joined(raws, torch.int32)
        self.desc = torch.tensor(rows, dtype=torch.int64, device=dev).reshape(-1, DESC_FIELDS) \
            if rows else torch.zeros((0, DESC_FIELDS), dtype=torch.int64, device=dev)
        self.errors = torch.zeros(1, dtype=torch.int32, device=dev)
        # The "fifo" build's per-lane FIFOs; other builds get a dummy.
        fifo_words = (FIFO_SLOTS.value * LANES * groups_per_program * self.programs
                      if self.build.staging == "fifo" else 0)
        self.fifo = torch.zeros(max(fifo_words, 1), dtype=torch.int32, device=dev)
        self._out: torch.Tensor | None = None
        self._views: tuple[int, list[torch.Tensor]] | None = None

    @property
    def table_memory(self) -> str:
        return self.build.table_memory

    @property
    def prefetch(self) -> str:
        return self.build.prefetch

    @property
    def raw_ahead(self) -> int:
        return self.build.raw_ahead

    @property
    def staging(self) -> str:
        return self.build.staging

    @property
    def max_registers(self) -> int:
        return self.build.max_registers

    @property
    def launch(self) -> str:
        """How launches are queued: "graph" or "direct" (LAUNCHES)."""
        return "direct" if self._graphs is None else "graph"

    @launch.setter
    def launch(self, launch: str | None) -> None:
        if launch is None:
            launch = default_launch(self.device)
        if launch not in LAUNCHES:
            raise DecoderArgumentError(f"launch must be one of {LAUNCHES}, got {launch!r}")
        if launch == "graph" and self.device.type != "cuda":
            raise UnsupportedError(f"launch='graph' replays CUDA graphs, which {self.device} "
                                   "cannot; use launch='direct'")
        if launch == "direct":
            self._graphs = None
        elif getattr(self, "_graphs", None) is None:     # "graph" again keeps its graphs
            self._graphs = GraphLauncher(self.device)

    @property
    def nbytes(self) -> int:
        """Device memory of the coded block (descriptors included)."""
        bufs = [self.table, self.lane_bits, self.payload, self.raw, self.desc,
                *self._raw_data.values()]
        return sum(t.numel() * t.element_size() for t in bufs)

    def new_output(self) -> torch.Tensor:
        return torch.empty(self.out_nbytes, dtype=torch.uint8, device=self.device)

    def _launch(self, out: torch.Tensor) -> None:
        if self.programs == 0:
            return
        if self._graphs is None:
            self._launch_direct(out)
        else:
            # A graph bakes in every argument: what a caller can change is
            # the output, the build and (with it, by hand) the fifo scratch.
            self._graphs.launch((out.data_ptr(), self.build, self.fifo.data_ptr()),
                                lambda: self._launch_direct(out))

    def _launch_direct(self, out: torch.Tensor) -> None:
        resolve_build(*self.build)          # TRITON_INTERPRET is read at launch
        kernel = launchable("decode")
        kernel[(self.programs,)](
            self.desc, self.table, self.lane_bits, self.payload, self.raw, out, self.errors,
            self.fifo,
            **kernel_constants(self.groups_per_program, self.num_warps, self.build),
            **launch_options(self.num_warps, self.build))

    def decode(self, out: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Decode every tensor with one launch; see the module docstring."""
        if out is None:
            if self._out is None:
                self._out = self.new_output()
            out = self._out
        else:
            self._check_buffer(out)
        self._launch(out)
        key = out.data_ptr()
        if self._views is None or self._views[0] != key:
            self._views = (key, self._make_views(out))
        return list(self._views[1])

    def _check_buffer(self, out) -> None:
        if not isinstance(out, torch.Tensor):
            raise DecoderArgumentError(f"output buffer must be a torch.Tensor, got {type(out).__name__}")
        if out.device != self.device:
            raise DecoderArgumentError(f"output buffer is on {out.device}, the coded block on "
                                    f"{self.device}; allocate it with new_output()")
        if out.dtype != torch.uint8 or out.dim() != 1 or not out.is_contiguous():
            raise DecoderArgumentError(
                f"output buffer must be a contiguous 1-D uint8 tensor, got {out.dtype} "
                f"with shape {tuple(out.shape)}; allocate it with new_output()")
        if out.numel() < self.out_nbytes:
            raise DecoderArgumentError(f"output buffer holds {out.numel()} bytes, the block "
                                    f"needs {self.out_nbytes}")
        if out.data_ptr() % 16:
            raise DecoderArgumentError("output buffer must start on a 16-byte boundary")

    def _make_views(self, out: torch.Tensor) -> list[torch.Tensor]:
        views = []
        for i, (dtype, shape) in enumerate(zip(self.dtypes, self.shapes)):
            if i in self._raw_data:
                views.append(typed_view(self._raw_data[i], dtype, shape))
            else:
                n = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
                at = self._slots[i]
                views.append(out[at:at + n].view(output_dtype(dtype)).view(shape))
        return views

    def check(self) -> None:
        """Wait for the device; raise CorruptDataError if a lane decoded since
        the last check ended in the wrong place or left non-zero padding."""
        bad = int(self.errors.item())
        if bad:
            self.errors.zero_()
            names = ", ".join(repr(n) for n in self.names if n) or "unnamed tensors"
            raise CorruptDataError(
                f"{bad} lane(s) of the block ({names}) did not end where their sizes say or "
                "carry non-zero padding bits; the coded data is corrupt, re-read or re-encode it")

