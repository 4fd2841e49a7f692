"""GPU decoder in Triton: coded tensors stay compressed in device memory and
are decoded there, all tensors of a transformer block in one launch.

The kernel is the twin of ``numpy_ref.decode``: one GPU thread per tANS lane,
all lanes of a group advancing one symbol per step, so that the 32 threads of
a warp decode one group and write 32 consecutive outputs per step.

Host API
--------
``DeviceCodedTensor(enc, device, name=None)``
    One EncodedTensor moved to a device, still compressed: its decode table
    (int32[2**table_log], in the device layout of ``_device_table``: nbits,
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
    directly (STAGINGS says more); ``max_registers`` caps the registers of
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

``decode(geometry, counts, lane_sizes, payload, raw, dtype, workers=1)``
    The back-end interface of ``floatzip.backends`` (numpy in, numpy out),
    on the default CUDA device; it synchronises, so it is for tests and
    tools, not for the hot path. ``encode`` raises UnsupportedError.

Kernel
------
One program decodes up to GROUPS consecutive groups of ONE tensor, described
by one row of ``desc`` (the DESC_* columns), so every tensor parameter is a
scalar and tensors of any width (8, 16, 32 bits) and geometry share a launch.
Per step and lane: a gather from the decode table at the current state, a
funnel shift of ``nbits`` bits out of two payload words the lane holds in
registers, the raw field out of two raw words loaded in an earlier step
(see below), an OR of the rotated field into the value the table entry carries,
and a store to ``g*32*K + 32*t + lane`` (consecutive lanes, consecutive
addresses). A lane loads a payload word only when its position
passes a word boundary (every ~9 steps at ~3.5 bits a symbol), as a masked
load that a lane staying put keeps off the memory bus, and it first reads
that word a step later; per warp-step that is ~4 payload lines instead of
~64. The raw words of a step are one coalesced row (32 fields of R bits are
R words). Loads past a lane's last symbol are masked; the buffers carry
zero slack after each tensor for what a corrupt lane can still reach
(PAYLOAD: table_log + 12*lane_symbols bits plus the look-ahead word; raw:
RAW_SLACK_WORDS). A finished lane gets table entry 0 (0 bits), keeps its
state and stores nothing. Loops have a trip count fixed per program (no
per-lane ``while``), one loop per output width, picked once per program,
in two phases. While every lane of the program still has RAW_AHEAD symbols
to go (DESC_MIN_STEPS tells how long), steps run without masks, RAW_AHEAD
an iteration, each lane loading the raw row it needs RAW_AHEAD steps later
into a ring of registers: a row is 16-32 bytes, so nearly every step's row
is a new memory sector, and loaded one step ahead its DRAM latency was paid
at every step (single matrices decoded at the same ~600 cycles a step
whatever their size). The rest run masked, a row loaded one step ahead.
A payload word is read a step after its load, so a word that misses L1
stalls the warp for a DRAM round trip; L1 fills 32-byte sectors, and the
32 lanes of a warp cross one every ~2 steps (still ~200 ns a step on an
H200 with the ring). The prefetching builds therefore prefetch, in the
unmasked phase, the payload sector after a lane's look-ahead word and the
raw row RAW_PREFETCH_ROWS steps past the ring; the staged builds instead
copy each payload word into a per-lane FIFO FIFO_AHEAD words early.
benchmarks/kernel_sass.py counts the SASS instructions of each loop.
At the end each lane checks, as numpy_ref does, that it ended in its last
byte with zero padding bits (the bits after its end are still in its
registers) and in state 0; bad lanes add to ``errors`` (an atomic add only on bad lanes),
which ``check()`` reads.

Without a GPU, set TRITON_INTERPRET=1: the same kernel then runs in Triton's
interpreter on CPU torch tensors (device="cpu" is accepted only then). The
mode is read at launch, not at import, so a test can switch it; the kernel
uses only Triton builtins (no @triton.jit library functions such as
``tl.sum``), because those work in the interpreter only if TRITON_INTERPRET
was set before triton was first imported. The interpreter does not run
inline PTX: the CUDA builds differ from the interpreted one only in the
lines under ``if SHARED_TABLE`` (the table copy and the table reads),
``if PREFETCH`` (two prefetches a step) and ``STAGING == 2`` (the
cp.async FIFO, whose bookkeeping the interpreter checks in the "fifo"
build), and CI checks them by compiling them for sm_80 and sm_90 and
reading their SASS (tests/test_triton.py). The builds without staging
were run bit-exact and timed on an H200 (gpu_check.py); the staged ones
have not run on a GPU yet.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import triton.language as tl

from ..codecs import tans
from ..codecs.encoded import CODEC_RAW, CODEC_TANS, EncodedTensor
from ..codecs.layout import LANES, MAX_LANE_SYMBOLS, CodedGeometry
from ..dtypes import FLOAT_LAYOUTS, ITEMSIZE
from ..errors import (
    CorruptDataError,
    DecoderArgumentError,
    FormatError,
    UnsupportedError,
)
from ..torch.dtypes import TORCH_DTYPES
from .graph_launch import GraphLauncher

name = "triton"
can_encode = False


def devices() -> frozenset[str]:
    """CUDA; and the CPU under TRITON_INTERPRET=1 (Triton's interpreter: for
    tests, not speed)."""
    return frozenset({"cuda", "cpu"}) if interpreting() else frozenset({"cuda"})

# Output slots of a block start on this boundary (bytes): every dtype view is
# aligned, and the weights are as aligned as a fresh allocation would be.
SLOT_ALIGN = 256
# Zero words after a tensor's raw fields: the second word of the two-word
# read of the last field. Rows past a lane's last symbol are not loaded.
RAW_SLACK_WORDS = 1
# Raw rows each lane has in flight in the unmasked phase (kernel docstring);
# 16 in CUDA_BUILD.
RAW_AHEAD = 8

# PTX of the shared-memory decode table (the "shared" build): one array of
# the largest table the format allows, declared in the kernel's body, and the
# word at byte offset $1 stored ($2) or loaded ($0). Triton globals must be
# constexpr to be read inside a kernel.
SHARED_TABLE_SLOTS = tl.constexpr(1 << tans.MAX_TABLE_LOG)
SHARED_TABLE_DECLARE = tl.constexpr(
    f".shared .align 16 .b8 floatzip_decode_table[{4 << tans.MAX_TABLE_LOG}];\n\tmov.u32 $0, 0;")
SHARED_TABLE_STORE = tl.constexpr(
    "{ .reg .u32 %fz_at; mov.u32 %fz_at, floatzip_decode_table; add.u32 %fz_at, %fz_at, $1; "
    "st.shared.u32 [%fz_at], $2; mov.u32 $0, 0; }")
SHARED_TABLE_LOAD = tl.constexpr(
    "{ .reg .u32 %fz_at; mov.u32 %fz_at, floatzip_decode_table; add.u32 %fz_at, %fz_at, $1; "
    "ld.shared.u32 $0, [%fz_at]; }")
# Prefetching builds (PREFETCHES): PTX that prefetches the line at address
# $1 into L1 or L2 on lanes where $2 is non-zero, passed to the kernel as the
# constexpr PREFETCH_PTX. Like the table reads, CUDA only.
PREFETCHES = ("none", "L1", "L2")
_PREFETCH_PTX = ("{{ .reg .pred %fz_p; setp.ne.b32 %fz_p, $2, 0; "
                 "@%fz_p prefetch.global.{level} [$1]; mov.u32 $0, 0; }}")
# A lane prefetches the payload word this many words past its look-ahead
# word each time it moves on a word: one 32-byte sector, ~70 steps before it
# reads it at ~3.5 bits a symbol. The payload slack covers it (_host_parts).
PAYLOAD_PREFETCH_WORDS = tl.constexpr(8)
# Raw rows are prefetched this many steps after the ring's newest row.
RAW_PREFETCH_ROWS = tl.constexpr(16)
# How a lane gets its payload words (STAGINGS). "none": loads the word
# after hi when it moves on a word and reads it one step later (a miss
# stalls its warp). The staged builds keep, per lane, a FIFO of
# FIFO_SLOTS words in which the word FIFO_AHEAD words past the look-ahead
# word is requested whenever the lane moves on a word, so a word is asked
# for FIFO_AHEAD word moves, at least FIFO_MIN_STEPS steps, before the
# lane reads it. "fifo": the FIFO is global scratch memory, filled by plain
# loads and stores (runs anywhere, the interpreter included: the staging
# logic checked on the CPU; on a GPU each store waits for its load).
# "async": the FIFO is in shared memory, filled by cp.async (sm_80+, CUDA
# only), which lands without holding a register; each step commits one
# copy group and waits for all but the FIFO_WAIT newest, so a word read
# has landed. Only the unmasked phase stages; the masked one loads directly.
STAGINGS = ("none", "fifo", "async")
FIFO_SLOTS = tl.constexpr(16)       # words a lane's FIFO holds (power of two)
FIFO_AHEAD = tl.constexpr(8)        # words requested past the look-ahead word
# A step reads at most 12 bits and a lane enters a word at bit 11 at the
# latest, so FIFO_AHEAD word moves take at least this many steps:
FIFO_MIN_STEPS = -(-(32 * FIFO_AHEAD.value - 11) // 12)     # 21
# Copy groups left in flight when a step waits (the group of the step that
# requested the word a lane reads next is at least FIFO_MIN_STEPS back).
# The wait holds every copy to this many steps, though a lane reads its word
# ~70 steps after asking at ~3.5 bits a symbol: the worst lane sets it. At
# 4 words ahead it was 8 steps, which at the ~60 ns a step the kernel could
# reach would be shorter than a loaded DRAM round trip.
FIFO_WAIT = FIFO_MIN_STEPS - 2
FIFO_COPY = tl.constexpr(
    "{ .reg .u32 %fz_at; .reg .pred %fz_p; mov.u32 %fz_at, floatzip_payload_fifo; "
    "add.u32 %fz_at, %fz_at, $1; setp.ne.b32 %fz_p, $3, 0; "
    "@%fz_p cp.async.ca.shared.global [%fz_at], [$2], 4; mov.u32 $0, 0; }")
FIFO_FENCE = tl.constexpr(
    f"cp.async.commit_group; cp.async.wait_group {FIFO_WAIT}; mov.u32 $0, 0;")
FIFO_DRAIN = tl.constexpr("cp.async.wait_all; mov.u32 $0, 0;")
# A program's FIFOs take FIFO_SLOTS * 4 bytes a lane (2 KiB a group), next
# to the 16 KiB shared table, within 48 KiB of static shared memory.
MAX_ASYNC_GROUPS = 16
FIFO_READ = tl.constexpr(
    "{ .reg .u32 %fz_at; .reg .pred %fz_p; mov.u32 %fz_at, floatzip_payload_fifo; "
    "add.u32 %fz_at, %fz_at, $1; setp.ne.b32 %fz_p, $2, 0; mov.b32 $0, $3; "
    "@%fz_p ld.shared.u32 $0, [%fz_at]; }")
# Largest tensor the kernel indexes with 32-bit value offsets.
MAX_COUNT = 2**31 - 2**20


# -- the kernel ----------------------------------------------------------------

# Columns of a descriptor row; one row per program, all int64.
DESC_TABLE = 0       # first entry of the tensor's decode table in the table buffer
DESC_TABLE_LOG = 1   # log2 of its size; initial states are this many bits
DESC_LANE = 2        # index of the program's first lane in the lane-start buffer
DESC_RAW_BIT = 3     # bit of the tensor's value 0 in the raw-field buffer
DESC_RAW_BITS = 4    # raw field width (width - symbol_bits)
DESC_FIRST = 5       # tensor's value index of the program's first value
DESC_LEFT = 6        # values from there to the end of the program's groups or of the tensor
DESC_K = 7           # lane_symbols: symbols per full lane
DESC_OUT = 8         # output byte offset of the program's first value
DESC_WIDTH = 9       # bits per value: 8, 16 or 32
DESC_GROUPS = 10     # groups this program decodes (<= GROUPS)
DESC_STEPS = 11      # steps the program runs: min(K, ceil(LEFT / 32)), less than K in a tail
DESC_MIN_STEPS = 12  # symbols in the program's shortest lane; 0 when it lacks a group
DESC_FIELDS = 16     # row length (padded)


def _decode_kernel(
    desc_ptr,       # int64[programs, DESC_FIELDS]: what each program decodes (DESC_* columns)
    table_ptr,      # int32: decode tables of all tensors, concatenated
    lane_ptr,       # int64: absolute start bit of every lane, plus one end entry per tensor
    payload_ptr,    # int32: tANS payload words of all tensors, with zero slack after each
    raw_ptr,        # int32: packed raw-field words of all tensors, with zero slack after each
    out_ptr,        # uint8: output bytes; each tensor's slot is aligned to its value width
    err_ptr,        # int32[1]: incremented by the number of lanes that end wrongly
    fifo_ptr,       # int32: the "fifo" payload build's scratch FIFOs (else unused)
    DESC_FIELDS: tl.constexpr,  # row length of desc
    GROUPS: tl.constexpr,       # groups of 32 lanes per program (one lane per thread)
    SHARED_TABLE: tl.constexpr = False,  # the decode table in shared memory (CUDA only)
    TABLE_FILL: tl.constexpr = 512,      # shared table slots copied a pass: 4 a thread
    RAW_AHEAD: tl.constexpr = 8,         # raw rows in flight per lane (power of two)
    PREFETCH: tl.constexpr = False,      # prefetch payload and raw rows (CUDA only)
    PREFETCH_PTX: tl.constexpr = "",     # the prefetch instruction (_PREFETCH_PTX)
    STAGING: tl.constexpr = 0,           # index in STAGINGS: none, fifo, async
    FIFO_DECLARE: tl.constexpr = "",     # the async build's shared FIFOs (kernel_constants)
):
    # Column numbers are the DESC_* constants (plain globals cannot be read
    # inside a kernel); tests/test_triton.py checks that they agree.
    row = desc_ptr + tl.program_id(0) * DESC_FIELDS
    table = table_ptr + tl.load(row + 0)            # DESC_TABLE
    table_log = tl.load(row + 1).to(tl.int32)       # DESC_TABLE_LOG
    lane_first = tl.load(row + 2)                   # DESC_LANE
    raw_bit0 = tl.load(row + 3)                     # DESC_RAW_BIT
    raw_bits = tl.load(row + 4).to(tl.int32)        # DESC_RAW_BITS
    first = tl.load(row + 5)                        # DESC_FIRST
    left = tl.load(row + 6).to(tl.int32)            # DESC_LEFT
    k = tl.load(row + 7).to(tl.int32)               # DESC_K
    out = out_ptr + tl.load(row + 8)                # DESC_OUT
    width = tl.load(row + 9).to(tl.int32)           # DESC_WIDTH
    groups = tl.load(row + 10).to(tl.int32)         # DESC_GROUPS
    steps = tl.load(row + 11).to(tl.int32)          # DESC_STEPS
    min_steps = tl.load(row + 12).to(tl.int32)      # DESC_MIN_STEPS

    lane = tl.arange(0, GROUPS * 32)
    group = lane // 32
    lane_ok = group < groups
    # Value index (from the program's first value) of each lane's step-0 symbol.
    rel = group * (32 * k) + lane % 32

    # Symbols in each lane: k, except in a tensor's last group.
    lane_steps = (left - rel + 31) >> 5
    lane_steps = tl.where(lane_steps > k, k, lane_steps)
    lane_steps = tl.where(lane_ok & (lane_steps > 0), lane_steps, 0)
    has = lane_steps > 0

    # Payload: each lane holds the aligned words lo, hi at ``wp`` (a pointer
    # into its stream), its bit position ``pos`` (0..31) in lo, and the word
    # after hi, ``nxt``, loaded in advance. A step reads at most 12 bits, all
    # inside lo:hi; when pos passes 32 the lane shifts one word down and
    # loads one new word (masked: a lane that stays puts nothing on the
    # memory bus), which it first reads a step later. Bits are taken with a
    # 64-bit shift of hi:lo, which compiles to one funnel shift.
    start = tl.load(lane_ptr + lane_first + lane, mask=lane_ok, other=0)
    end = tl.load(lane_ptr + lane_first + lane + 1, mask=lane_ok, other=0)
    words = payload_ptr + (start >> 5)
    pos0 = (start & 31).to(tl.int32)
    lo = tl.load(words, mask=has, other=0)
    hi = tl.load(words + 1, mask=has, other=0)
    nxt = tl.load(words + 2, mask=has, other=0)

    # Initial state: table_log bits, for lanes that hold at least one symbol.
    window = (((hi.to(tl.uint32, bitcast=True).to(tl.uint64) << 32)
               | lo.to(tl.uint32, bitcast=True).to(tl.uint64)) >> pos0.to(tl.uint64)).to(tl.uint32)
    state = (window & ((1 << table_log) - 1).to(tl.uint32)).to(tl.int32)
    pos = pos0 + tl.where(has, table_log, 0)
    adv = pos >= 32
    pos = pos & 31
    lo = tl.where(adv, hi, lo)
    hi = tl.where(adv, nxt, hi)
    wp = words + adv.to(tl.int32)
    nxt = tl.load(wp + 2, mask=adv, other=nxt)

    # Raw fields: the 32 fields of a group's step fill exactly raw_bits
    # words (the row starts on a word boundary), so a lane's field sits at
    # the same bit of every row (two words: rows are 16-32 bytes, so nearly
    # every row is a new memory sector, loaded RAW_AHEAD steps before use).
    raw_row = raw_ptr + ((raw_bit0 + (first + (group * (32 * k)).to(tl.int64)) * raw_bits) >> 5)
    raw_at = (lane % 32) * raw_bits
    raw_lane = raw_row + (raw_at >> 5)
    rs = (raw_at & 31).to(tl.uint64)
    raw_mask = ((1 << raw_bits) - 1).to(tl.uint32)

    # Unmasked steps: whole iterations of RAW_AHEAD steps in which every lane
    # decodes and the row it loads, RAW_AHEAD steps ahead, exists.
    unmasked = tl.where(min_steps >= RAW_AHEAD, min_steps - RAW_AHEAD, 0) & ~(RAW_AHEAD - 1)
    ring_ok = tl.where(unmasked > 0, has, False)
    ring_lo = ()
    ring_hi = ()
    for u in tl.static_range(RAW_AHEAD):
        ring_lo = ring_lo + (tl.load(raw_lane + u * raw_bits, mask=ring_ok, other=0),)
        ring_hi = ring_hi + (tl.load(raw_lane + u * raw_bits + 1, mask=ring_ok, other=0),)
    ahead = raw_lane + RAW_AHEAD * raw_bits

    # Staged payload (STAGINGS), unmasked phase only: lane l keeps word w
    # (counted from the payload buffer's start) in FIFO slot
    # (w mod FIFO_SLOTS) * lanes + l, so a warp's 32 lanes hit 32 banks.
    # While it holds lo, hi, nxt at wp, wp+1, wp+2, its FIFO holds (or
    # has been asked for) the FIFO_AHEAD words after nxt.
    fifo_lanes = GROUPS * 32
    fifo = fifo_ptr + tl.program_id(0) * (FIFO_SLOTS * fifo_lanes)
    if STAGING == 2:
        tl.inline_asm_elementwise(FIFO_DECLARE, "=r", [], dtype=tl.int32, is_pure=False, pack=1)
    fifo_mask = 4 * FIFO_SLOTS * fifo_lanes - 1
    if STAGING != 0:
        first_word = (wp.to(tl.int64) >> 2).to(tl.int32)
        # Byte offset of nxt's slot; a step moves it on with the lane.
        fifo_at = (((first_word + 2) & (FIFO_SLOTS - 1)) * fifo_lanes + lane) * 4
        for j in tl.static_range(1, FIFO_AHEAD + 1):
            # The words after nxt, in the slots a step asks for them in.
            ask_at = (fifo_at + 4 * j * fifo_lanes) & fifo_mask
            if STAGING == 1:
                tl.store(fifo + (ask_at >> 2), tl.load(wp + (2 + j), mask=ring_ok, other=0),
                         mask=ring_ok)
            else:
                tl.inline_asm_elementwise(
                    FIFO_COPY, "=r,r,l,r",
                    [ask_at, (wp + (2 + j)).to(tl.int64), ring_ok.to(tl.int32)],
                    dtype=tl.int32, is_pure=False, pack=1)
        if STAGING == 2:
            # The first reads come sooner than FIFO_MIN_STEPS after these.
            tl.inline_asm_elementwise(FIFO_DRAIN, "=r", [], dtype=tl.int32, is_pure=False,
                                      pack=1)

    if SHARED_TABLE:
        # The program's decode table, copied once into shared memory: a
        # warp's 32 lookups then cost ~4 bank wavefronts instead of ~28 L1
        # cache-line wavefronts. Triton has no shared-memory gather (Gluon
        # has one in 3.9, not in 3.6), so the table is a PTX array declared
        # here, once in the kernel's code (an asm with no tensor operand is
        # emitted once), written and read with st/ld.shared (SHARED_TABLE_*).
        # Slots past 2**table_log hold 0 and are never read: every state
        # stays below 2**table_log (_decode_table checks that each entry's
        # next states do).
        tl.inline_asm_elementwise(SHARED_TABLE_DECLARE, "=r", [], dtype=tl.int32,
                                  is_pure=False, pack=1)
        fill = tl.arange(0, TABLE_FILL)
        for c in range(0, SHARED_TABLE_SLOTS, TABLE_FILL):
            slot = c + fill
            tl.inline_asm_elementwise(
                SHARED_TABLE_STORE, "=r,r,r",
                [slot * 4, tl.load(table + slot, mask=slot < (1 << table_log), other=0)],
                dtype=tl.int32, is_pure=False, pack=1)
        # Every thread's slots are in before any thread reads.
        tl.debug_barrier()

    # One copy of the loop per output width, chosen once per program: the
    # store's type is then fixed inside the loop and costs no branch. Each
    # runs in two phases: ``unmasked`` steps without masks, RAW_AHEAD steps
    # an iteration, raw rows coming from a ring of RAW_AHEAD rows in
    # registers; then the rest with masks, a row loaded one step ahead, where
    # a lane past its last symbol gets entry 0 (0 bits, state 0), stays where
    # it is, loads and stores nothing. Table entries are in the device layout
    # of _device_table: nbits, the value with a zero raw field, base.
    for w in tl.static_range(3):
        if width == (8 << w):
            if w == 0:
                dst = out + rel
            elif w == 1:
                dst = out.to(tl.pointer_type(tl.int16)) + rel
            else:
                dst = out.to(tl.pointer_type(tl.int32)) + rel
            for masked in tl.static_range(2):
                if masked:
                    if STAGING == 2:
                        # No copy may land after the program ends.
                        tl.inline_asm_elementwise(FIFO_DRAIN, "=r", [], dtype=tl.int32,
                                                  is_pure=False, pack=1)
                    raw_lane = ahead - RAW_AHEAD * raw_bits
                    left_steps = lane_steps - unmasked
                    rlo = tl.load(raw_lane, mask=left_steps > 0, other=0)
                    rhi = tl.load(raw_lane + 1, mask=left_steps > 0, other=0)
                for t in range(unmasked if masked else 0, steps if masked else unmasked,
                               1 if masked else RAW_AHEAD):
                    for u in tl.static_range(1 if masked else RAW_AHEAD):
                        if masked:
                            active = left_steps > 0
                            next_row = left_steps > 1
                            left_steps -= 1
                            if SHARED_TABLE:
                                entry = tl.where(active, tl.inline_asm_elementwise(
                                    SHARED_TABLE_LOAD, "=r,r", [state * 4], dtype=tl.int32,
                                    is_pure=False, pack=1), 0)
                            else:
                                entry = tl.load(table + state, mask=active, other=0)
                        elif SHARED_TABLE:
                            entry = tl.inline_asm_elementwise(
                                SHARED_TABLE_LOAD, "=r,r", [state * 4], dtype=tl.int32,
                                is_pure=False, pack=1)
                        else:
                            entry = tl.load(table + state)
                        # This step's raw field; then the load of a later row.
                        if masked:
                            lo_word = rlo
                            hi_word = rhi
                            raw_lane += raw_bits
                            rlo = tl.load(raw_lane, mask=next_row, other=0)
                            rhi = tl.load(raw_lane + 1, mask=next_row, other=0)
                        else:
                            lo_word = ring_lo[0]
                            hi_word = ring_hi[0]
                            ring_lo = ring_lo[1:] + (tl.load(ahead),)
                            ring_hi = ring_hi[1:] + (tl.load(ahead + 1),)
                            ahead += raw_bits
                        field = (((hi_word.to(tl.uint32, bitcast=True).to(tl.uint64) << 32)
                                  | lo_word.to(tl.uint32, bitcast=True).to(tl.uint64)) >> rs
                                 ).to(tl.uint32) & raw_mask

                        window = (((hi.to(tl.uint32, bitcast=True).to(tl.uint64) << 32)
                                   | lo.to(tl.uint32, bitcast=True).to(tl.uint64))
                                  >> pos.to(tl.uint64)).to(tl.uint32)
                        nbits = (entry.to(tl.uint32, bitcast=True) >> 28).to(tl.int32)
                        next_state = (entry & 0xFFF) \
                            + (window & ((1 << nbits) - 1).to(tl.uint32)).to(tl.int32)
                        # A finished lane keeps its last state, for the final check.
                        state = tl.where(active, next_state, state) if masked else next_state
                        pos += nbits
                        adv = pos >= 32
                        pos = pos & 31
                        lo = tl.where(adv, hi, lo)
                        hi = tl.where(adv, nxt, hi)
                        wp = tl.where(adv, wp + 1, wp)
                        if STAGING != 0 and not masked:
                            # nxt from the FIFO; ask for the word FIFO_AHEAD past it.
                            fifo_at = tl.where(adv, (fifo_at + 4 * fifo_lanes) & fifo_mask,
                                               fifo_at)
                            ask_at = (fifo_at + 4 * FIFO_AHEAD * fifo_lanes) & fifo_mask
                            ask = wp + (2 + FIFO_AHEAD)
                            if STAGING == 1:
                                nxt = tl.load(fifo + (fifo_at >> 2), mask=adv, other=nxt)
                                tl.store(fifo + (ask_at >> 2), tl.load(ask, mask=adv, other=0),
                                         mask=adv)
                            else:
                                nxt = tl.inline_asm_elementwise(
                                    FIFO_READ, "=r,r,r,r", [fifo_at, adv.to(tl.int32), nxt],
                                    dtype=tl.int32, is_pure=False, pack=1)
                                tl.inline_asm_elementwise(
                                    FIFO_COPY, "=r,r,l,r",
                                    [ask_at, ask.to(tl.int64), adv.to(tl.int32)],
                                    dtype=tl.int32, is_pure=False, pack=1)
                                tl.inline_asm_elementwise(FIFO_FENCE, "=r", [], dtype=tl.int32,
                                                          is_pure=False, pack=1)
                        else:
                            nxt = tl.load(wp + 2, mask=adv, other=nxt)
                        if PREFETCH and not masked:
                            # Loaded one step before use, a word that misses
                            # L1 stalls its warp for a DRAM round trip, and
                            # lanes cross 32-byte sectors every few warp
                            # steps (a staged build needs no payload
                            # prefetch); so are raw rows a ring ahead.
                            if STAGING == 0:
                                tl.inline_asm_elementwise(
                                    PREFETCH_PTX, "=r,l,r",
                                    [(wp + (2 + PAYLOAD_PREFETCH_WORDS)).to(tl.int64),
                                     adv.to(tl.int32)],
                                    dtype=tl.int32, is_pure=False, pack=1)
                            tl.inline_asm_elementwise(
                                PREFETCH_PTX, "=r,l,r",
                                [(ahead + RAW_PREFETCH_ROWS * raw_bits).to(tl.int64),
                                 (lane_steps > t + (u + 1 + RAW_AHEAD + RAW_PREFETCH_ROWS))
                                 .to(tl.int32)],
                                dtype=tl.int32, is_pure=False, pack=1)

                        # value = rotate_right_1(symbol << raw_bits | field):
                        # the symbol's part comes rotated from the table, the
                        # field's sign bit (its bit 0) goes to the top; the
                        # store's truncation drops the field bits shifted past it.
                        if w == 2:
                            symbol_part = (entry.to(tl.uint32, bitcast=True) << 4) & 0xFFFF0000
                        else:
                            symbol_part = entry.to(tl.uint32, bitcast=True) >> 12
                        value = symbol_part | (field >> 1) | (field << ((8 << w) - 1))
                        if w == 0:
                            value = value.to(tl.uint8)
                        elif w == 1:
                            value = value.to(tl.int16)
                        else:
                            value = value.to(tl.int32, bitcast=True)
                        if masked:
                            tl.store(dst, value, mask=active)
                            dst += 32
                        else:
                            tl.store(dst + 32 * u, value)
                    if not masked:
                        dst += 32 * RAW_AHEAD

    # A lane must end in its last byte, and the bits after its end (still in
    # lo:hi) must be 0.
    used = (32 * ((wp.to(tl.int64) - words.to(tl.int64)) >> 2)).to(tl.int32) + pos - pos0
    size_bits = (end - start).to(tl.int32)
    tail = (0 - used) & 7
    window = (((hi.to(tl.uint32, bitcast=True).to(tl.uint64) << 32)
               | lo.to(tl.uint32, bitcast=True).to(tl.uint64)) >> pos.to(tl.uint64)).to(tl.uint32)
    padding = window & ((1 << tail) - 1).to(tl.uint32)
    # And end in state 0, where its encoder started (a lane without symbols
    # read state 0 from its masked loads).
    bad = lane_ok & ((((used + 7) >> 3) * 8 != size_bits) | (padding != 0) | (state != 0))
    # One atomic per bad lane, so none on sound data (tl.sum is not a builtin).
    tl.atomic_add(err_ptr + lane * 0, bad.to(tl.int32), mask=bad)


# Kernels are plain functions turned into Triton kernels on first launch, so
# that TRITON_INTERPRET is read then (tests switch it) and so that
# tests/test_triton.py can compile the same source for sm_80 / sm_90.
KERNELS = {"decode": _decode_kernel}
_launchable: dict[tuple[str, bool], object] = {}

# Where the kernel reads decode tables. "global": through the L1 cache (this
# build also runs in the interpreter). "shared": copied first into shared
# memory and read with inline PTX, which only a CUDA device runs.
TABLE_MEMORIES = ("global", "shared")
LAUNCHES = ("direct", "graph")     # how DeviceBlockDecoder queues the kernel
MAX_RAW_AHEAD = 16      # Triton 3.6 took minutes to compile a ring of 32 rows


class KernelBuild(NamedTuple):
    """Which kernel a decoder launches (see DeviceBlockDecoder)."""
    table_memory: str       # TABLE_MEMORIES
    prefetch: str           # PREFETCHES, or "auto" before a decoder resolves it
    raw_ahead: int          # raw rows in flight, a power of two up to MAX_RAW_AHEAD
    staging: str = "none"   # STAGINGS: how lanes get their payload words
    max_registers: int = 0  # registers a thread at most (ptxas maxnreg); 0: ptxas decides


# The build a decoder gets for what its caller leaves None. On CUDA, the
# fastest on an H200 (benchmarks/results/gpu_check_h200.md): the shared
# table beat L1 on every launch; 16 raw rows in flight beat 8 on single
# matrices (+6-10%) and tied on a whole Llama block; prefetching gained
# 33-45% on launches of fewer lanes than the GPU holds at once (a 14336x4096
# matrix: 57,344 lanes) and lost 19% on a block of 213,056, where the
# resident warps hide latency themselves and the prefetches cost issue
# slots and L1 room: "auto" prefetches (AUTO_PREFETCH) below
# PREFETCH_LANES_PER_SM lanes per multiprocessor. The interpreter runs no
# inline PTX.
# The staged payloads (STAGINGS) and register caps are not timed yet: none
# until a GPU run says otherwise.
CUDA_BUILD = KernelBuild("shared", "auto", 16, "none")
INTERPRETER_BUILD = KernelBuild("global", "none", RAW_AHEAD, "none")
AUTO_PREFETCH = "L2"            # L1 and L2 measured the same
# An SM's resident threads at 64 registers, where this threshold was
# measured; uncapped, the default build's 72-80 registers hold 768-896.
PREFETCH_LANES_PER_SM = 1024


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernel(kernel_name: str):
    key = (kernel_name, interpreting())
    if key not in _launchable:
        if key[1]:
            from triton.runtime.interpreter import InterpretedFunction
            _launchable[key] = InterpretedFunction(KERNELS[kernel_name])
        else:
            from triton.runtime.jit import JITFunction
            _launchable[key] = JITFunction(KERNELS[kernel_name])
    return _launchable[key]


def kernel_constants(groups_per_program: int, num_warps: int, build: KernelBuild) -> dict:
    """The decode kernel's constexpr arguments for a launch shape and build."""
    if build.prefetch not in PREFETCHES:
        raise DecoderArgumentError(f"prefetch {build.prefetch!r} is not resolved to one of "
                                   f"{PREFETCHES}")
    return {"DESC_FIELDS": DESC_FIELDS, "GROUPS": groups_per_program,
            "SHARED_TABLE": build.table_memory == "shared",
            "TABLE_FILL": 128 * num_warps,          # 4 slots a thread a pass
            "RAW_AHEAD": build.raw_ahead,
            "PREFETCH": build.prefetch != "none",
            "PREFETCH_PTX": ("" if build.prefetch == "none"
                             else _PREFETCH_PTX.format(level=build.prefetch)),
            "STAGING": STAGINGS.index(build.staging),
            "FIFO_DECLARE": ("" if build.staging != "async" else
                             f".shared .align 16 .b8 floatzip_payload_fifo"
                             f"[{4 * FIFO_SLOTS.value * LANES * groups_per_program}];"
                             "\n\tmov.u32 $0, 0;")}


def launch_options(num_warps: int, build: KernelBuild) -> dict:
    """Triton's compile options for a launch shape and build (not kernel
    arguments): what a launch passes and what triton_build compiles with."""
    options = {"num_warps": num_warps}
    if build.max_registers:
        options["maxnreg"] = build.max_registers
    return options


def resolve_build(table_memory: str | None = None, prefetch: str | None = None,
                  raw_ahead: int | None = None, staging: str | None = None,
                  max_registers: int | None = None, *,
                  interpreted: bool | None = None) -> KernelBuild:
    """The build with the defaults filled in for where the kernel runs
    (CUDA_BUILD, INTERPRETER_BUILD), checked: inline-PTX builds run on CUDA
    only. ``prefetch`` may stay "auto" (DeviceBlockDecoder resolves it).
    The interpreter has no registers: there ``max_registers`` becomes 0."""
    interpreted = interpreting() if interpreted is None else interpreted
    defaults = INTERPRETER_BUILD if interpreted else CUDA_BUILD
    build = KernelBuild(*(d if v is None else v for v, d in
                          zip((table_memory, prefetch, raw_ahead, staging, max_registers),
                              defaults)))
    if build.table_memory not in TABLE_MEMORIES:
        raise DecoderArgumentError(f"table_memory must be one of {TABLE_MEMORIES}, "
                                   f"got {build.table_memory!r}")
    if build.prefetch not in PREFETCHES + ("auto",):
        raise DecoderArgumentError(f"prefetch must be one of {PREFETCHES + ('auto',)}, "
                                   f"got {build.prefetch!r}")
    if build.staging not in STAGINGS:
        raise DecoderArgumentError(f"staging must be one of {STAGINGS}, got {build.staging!r}")
    ahead = build.raw_ahead
    if not isinstance(ahead, int) or not 1 <= ahead <= MAX_RAW_AHEAD or ahead & (ahead - 1):
        raise DecoderArgumentError(f"raw_ahead must be a power of two from 1 to "
                                   f"{MAX_RAW_AHEAD}, got {ahead!r}")
    cap = build.max_registers
    if not isinstance(cap, int) or not (cap == 0 or 32 <= cap <= 255 and cap % 8 == 0):
        # ptxas hands registers out 8 a thread at a time: other caps round.
        raise DecoderArgumentError(f"max_registers must be 0 (no cap) or a multiple of 8 "
                                   f"from 32 to 248, got {cap!r}")
    if interpreted:
        for option, value, runs in (("table_memory", build.table_memory, ("global",)),
                                    ("prefetch", build.prefetch, ("none", "auto")),
                                    ("staging", build.staging, ("none", "fifo"))):
            if value not in runs:
                raise UnsupportedError(
                    f"{option}={value!r} is inline PTX, which TRITON_INTERPRET=1 cannot run; "
                    f"use {option}={runs[0]!r} there")
        if build.prefetch == "auto":
            build = build._replace(prefetch="none")
        build = build._replace(max_registers=0)
    return build


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


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _resolve_prefetch(build: KernelBuild, lanes: int, device: torch.device) -> KernelBuild:
    """"auto": prefetch when the launch has fewer lanes than the device
    keeps resident (CUDA_BUILD says why)."""
    if build.prefetch != "auto":
        return build
    few = device.type == "cuda" and lanes < PREFETCH_LANES_PER_SM * _multiprocessors(device)
    return build._replace(prefetch=AUTO_PREFETCH if few else "none")


# -- host side -----------------------------------------------------------------

def _device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedError(
                "the Triton decoder needs a CUDA GPU and torch sees none; decode on the CPU "
                "with floatzip.codecs.encoded.decode_tensor instead")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev
    if dev.type == "cpu" and interpreting():
        return dev
    raise UnsupportedError(
        f"the Triton decoder runs on CUDA devices, not on {dev}"
        + ("" if dev.type != "cpu" else
           " (device='cpu' works only under TRITON_INTERPRET=1, for tests)"))


def _torch_dtype(dtype: str):
    return TORCH_DTYPES.get(dtype, torch.uint8)


def _words(data: np.ndarray, slack_words: int) -> np.ndarray:
    """Bytes -> int32 words (little-endian), zero-padded to whole words plus
    ``slack_words`` zero words, so that two-word reads never leave the buffer."""
    nbytes = data.size
    words = np.zeros((nbytes + 3) // 4 + slack_words, dtype=np.int32)
    words.view(np.uint8)[:nbytes] = data
    return words


def _check_encoded(enc: EncodedTensor, label: str) -> None:
    """Sizes the kernel relies on. The container validates all of this
    already; an EncodedTensor built by hand gets a clear error here."""
    if enc.codec == CODEC_RAW:
        want = enc.count * ITEMSIZE.get(enc.dtype, 1)
        if enc.raw is None or np.asarray(enc.raw).size != want:
            found = None if enc.raw is None else np.asarray(enc.raw).size
            raise FormatError(f"{label}: raw codec holds {found} bytes, expected {want} "
                              f"for {enc.dtype}{list(enc.shape)}")
        return
    if enc.codec != CODEC_TANS:
        raise UnsupportedError(f"{label}: codec {enc.codec!r} has no GPU decoder; "
                               f"expected {CODEC_TANS!r} or {CODEC_RAW!r}")
    layout = FLOAT_LAYOUTS.get(enc.dtype)
    if layout is None:
        raise UnsupportedError(f"{label}: dtype {enc.dtype} cannot be tans-coded")
    g = enc.geometry
    if g is None:
        raise FormatError(f"{label}: tans-coded tensor without geometry")

    def need(ok: bool, field: str, expected, found):
        if not ok:
            raise FormatError(f"{label}: {field} is {found}, expected {expected}; "
                              "the coded tensor is inconsistent, re-encode it")

    need(g.count == enc.count, "geometry.count", enc.count, g.count)
    need(g.width == layout.width, "geometry.width", layout.width, g.width)
    need(layout.exponent_bits <= g.symbol_bits <= min(g.width, tans.MAX_SYMBOL_BITS),
         "geometry.symbol_bits", f"{layout.exponent_bits}..{min(g.width, tans.MAX_SYMBOL_BITS)}",
         g.symbol_bits)
    need(tans.MIN_TABLE_LOG <= g.table_log <= tans.MAX_TABLE_LOG, "geometry.table_log",
         f"{tans.MIN_TABLE_LOG}..{tans.MAX_TABLE_LOG}", g.table_log)
    need(1 <= g.lane_symbols <= MAX_LANE_SYMBOLS, "geometry.lane_symbols",
         f"1..{MAX_LANE_SYMBOLS}", g.lane_symbols)
    need(g.table_symbols >= 1 and g.first_symbol >= 0
         and g.first_symbol + g.table_symbols <= 1 << g.symbol_bits,
         "symbol range", f"within 0..{(1 << g.symbol_bits) - 1}",
         f"{g.first_symbol}+{g.table_symbols}")
    counts = np.asarray(enc.counts)
    need(counts.size == g.table_symbols, "len(counts)", g.table_symbols, counts.size)
    need(int(counts.astype(np.int64).sum()) == 1 << g.table_log, "sum(counts)",
         1 << g.table_log, int(counts.astype(np.int64).sum()))
    sizes = np.asarray(enc.lane_sizes)
    need(sizes.size == g.lanes, "len(lane_sizes)", g.lanes, sizes.size)
    need(int(sizes.astype(np.int64).sum()) == g.payload_bytes, "sum(lane_sizes)",
         g.payload_bytes, int(sizes.astype(np.int64).sum()))
    need(np.asarray(enc.payload).size == g.payload_bytes, "payload bytes", g.payload_bytes,
         np.asarray(enc.payload).size)
    need(np.asarray(enc.raw).size == g.raw_bytes, "raw bytes", g.raw_bytes,
         np.asarray(enc.raw).size)
    if g.count > MAX_COUNT:
        raise UnsupportedError(f"{label}: {g.count} values; the GPU decoder handles at most "
                               f"{MAX_COUNT} per tensor, split the tensor")


@dataclass
class _Parts:
    """A tans tensor's device-ready buffers (torch tensors, same device)."""
    table: torch.Tensor         # int32[2**table_log]
    lane_bits: torch.Tensor     # int64[lanes + 1], bit offsets from the payload's first word
    payload: torch.Tensor       # int32 words, zero slack after
    raw: torch.Tensor           # int32 words, zero slack after


def _decode_table(enc: EncodedTensor, label: str) -> np.ndarray:
    """The tensor's decode table, checked to keep every next state inside
    it: the kernel's table reads are unmasked."""
    g = enc.geometry
    try:
        table = tans.build_decode_table(np.asarray(enc.counts), g.first_symbol, g.table_log)
    except (IndexError, ValueError) as exc:
        raise FormatError(f"{label}: no decode table for these counts with table_log "
                          f"{g.table_log} ({exc})") from None
    t = table.astype(np.int64)
    base = t & tans.ENTRY_BASE_MASK
    nbits = (t >> tans.ENTRY_NBITS_SHIFT) & 0xF
    symbol = t >> tans.ENTRY_SYMBOL_SHIFT
    if np.any(base + (1 << nbits) > 1 << g.table_log) or np.any(
            (symbol < g.first_symbol) | (symbol >= g.first_symbol + g.table_symbols)):
        raise FormatError(
            f"{label}: the decode table built from its counts (table_log {g.table_log}) "
            "has entries outside the table; the counts or table_log are invalid")
    return table


def _device_table(table: np.ndarray, g: CodedGeometry) -> np.ndarray:
    """The decode table in the kernel's layout (int32 per slot): bits 28-31
    nbits, bits 12-27 the decoded value with a zero raw field, i.e.
    rotate_right_1(symbol << raw_bits) in the value's width (FP32: its top 16
    bits; the low 16 are 0 because FP32 keeps at least 20 raw bits), bits
    0-11 the next state's base. The kernel ORs in the rotated raw field, so
    a step spends no instructions placing the symbol; nbits on top is one
    shift, and for 8- and 16-bit values ``entry >> 12`` is the value part
    (the store's truncation drops nbits)."""
    t = table.astype(np.int64)
    base = t & tans.ENTRY_BASE_MASK
    nbits = (t >> tans.ENTRY_NBITS_SHIFT) & 0xF
    shifted = (t >> tans.ENTRY_SYMBOL_SHIFT) << g.raw_bits
    value = (shifted >> 1) | ((shifted & 1) << (g.width - 1))
    if g.width == 32:
        assert not np.any(value & 0xFFFF), "FP32 symbols lie in the top 16 bits"
        value >>= 16
    assert g.table_log <= 12 and not np.any(value >> 16)
    return ((nbits << 28) | (value << 12) | base).astype(np.uint32).view(np.int32)


def _host_parts(enc: EncodedTensor, label: str) -> _Parts:
    g = enc.geometry
    table = _device_table(_decode_table(enc, label), g)
    sizes = np.asarray(enc.lane_sizes).astype(np.int64)
    lane_bits = np.concatenate(([0], np.cumsum(sizes))) * 8
    # A corrupt lane can read table_log + 12 * lane_symbols bits past its start
    # (12 bits per step at most) before the end-of-lane check rejects it, and
    # holds the two words after the one its position is in (hi and the
    # look-ahead word): from a start at the payload's end that reaches word
    # (12 * (lane_symbols + 1)) // 32 + 2 of the slack, its last word.
    # test_worst_lane_stays_inside_the_buffers runs that lane.
    # A staged build copies words up to FIFO_AHEAD past the look-ahead
    # word; a prefetching build prefetches PAYLOAD_PREFETCH_WORDS past it
    # (a prefetch never faults, but it stays inside too).
    slack = (tans.MAX_TABLE_LOG * (g.lane_symbols + 1)) // 32 + 3 \
        + max(FIFO_AHEAD.value, PAYLOAD_PREFETCH_WORDS.value)
    payload = _words(np.asarray(enc.payload, dtype=np.uint8), slack)
    raw = _words(np.asarray(enc.raw, dtype=np.uint8), RAW_SLACK_WORDS)
    return _Parts(torch.from_numpy(table.copy()), torch.from_numpy(lane_bits),
                  torch.from_numpy(payload), torch.from_numpy(raw))


class DeviceCodedTensor:
    """One coded tensor in device memory, still compressed."""

    def __init__(self, enc: EncodedTensor, device="cuda", name: str | None = None):
        self.name = name
        label = f"tensor {name!r}" if name else "tensor"
        _check_encoded(enc, label)
        self.device = _device(device)
        self.dtype = enc.dtype
        self.shape = tuple(enc.shape)
        self.codec = enc.codec
        self.geometry: CodedGeometry | None = enc.geometry
        self.parts: _Parts | None = None
        self.data: torch.Tensor | None = None       # raw codec: the bytes
        if enc.codec == CODEC_RAW:
            raw = np.ascontiguousarray(np.asarray(enc.raw, dtype=np.uint8)).copy()
            self.data = torch.from_numpy(raw).to(self.device)
        else:
            host = _host_parts(enc, label)
            self.parts = _Parts(*(t.to(self.device) for t in
                                  (host.table, host.lane_bits, host.payload, host.raw)))
        self._decoder: DeviceBlockDecoder | None = None

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def torch_dtype(self) -> torch.dtype:
        return _torch_dtype(self.dtype)

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
                return _typed_view(self.data.clone(), self.dtype, self.shape)
            out = torch.empty(self.shape, dtype=self.torch_dtype, device=self.device)
        _check_output(out, self.device, self.torch_dtype, self.count, self.name)
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


def _typed_view(data: torch.Tensor, dtype: str, shape) -> torch.Tensor:
    """Bytes as the tensor they hold; flat bytes for dtypes torch lacks."""
    if dtype not in TORCH_DTYPES:
        return data
    return data.view(TORCH_DTYPES[dtype]).view(shape)


def _check_output(out, device, dtype, numel, label) -> None:
    what = f"output for tensor {label!r}" if label else "output"
    if not isinstance(out, torch.Tensor):
        raise DecoderArgumentError(f"{what} must be a torch.Tensor, got {type(out).__name__}")
    if out.device != device:
        raise DecoderArgumentError(f"{what} is on {out.device}, the coded data on {device}; "
                                "allocate it on the decoder's device")
    if out.dtype != dtype:
        raise DecoderArgumentError(f"{what} has dtype {out.dtype}, expected {dtype}")
    if not out.is_contiguous():
        raise DecoderArgumentError(f"{what} is not contiguous; pass a contiguous tensor")
    if out.numel() != numel:
        raise DecoderArgumentError(f"{what} has {out.numel()} elements, expected {numel}")


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
        self.device = _device(device if device is not None else tensors[0].device)
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
        self.device = _device(device)
        items = []
        for enc, nm in zip(encoded, names):
            _check_encoded(enc, f"tensor {nm!r}" if nm else "tensor")
            if enc.codec == CODEC_RAW:
                raw = torch.from_numpy(np.asarray(enc.raw, dtype=np.uint8).copy())
                items.append((nm, enc.dtype, tuple(enc.shape), None, None, raw.to(self.device)))
            else:
                items.append((nm, enc.dtype, tuple(enc.shape), enc.geometry,
                              _host_parts(enc, f"tensor {nm!r}" if nm else "tensor"), None))
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
        self.build = _resolve_prefetch(build, sum(r[DESC_GROUPS] for r in rows) * LANES,
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
        kernel = _kernel("decode")
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
                views.append(_typed_view(self._raw_data[i], dtype, shape))
            else:
                n = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
                at = self._slots[i]
                views.append(out[at:at + n].view(_torch_dtype(dtype)).view(shape))
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


# -- back-end interface (numpy in, numpy out) ----------------------------------------

def encode(bits, geometry_args, counts, workers: int = 1):
    raise UnsupportedError("the triton back end only decodes; encode with 'numba' or 'numpy'")


def histogram(bits, width, top_bits, workers: int = 1):
    raise UnsupportedError("the triton back end only decodes; encode with 'numba' or 'numpy'")


def decode(geometry: CodedGeometry, counts: np.ndarray, lane_sizes: np.ndarray,
           payload: np.ndarray, raw: np.ndarray, dtype, workers: int = 1,
           device=None) -> np.ndarray:
    """Same contract as numpy_ref.decode, computed on the GPU (or, under
    TRITON_INTERPRET=1, on the CPU). Synchronises; not for the hot path."""
    layouts = [lay for lay in FLOAT_LAYOUTS.values() if lay.width == geometry.width]
    # Decoding depends on the width alone; the narrowest exponent accepts
    # every symbol_bits an encoder of that width can choose.
    layout = min(layouts, key=lambda lay: lay.exponent_bits) if layouts else None
    if layout is None:
        raise UnsupportedError(f"no float layout of width {geometry.width}")
    if device is None:
        device = "cpu" if interpreting() and not torch.cuda.is_available() else "cuda"
    enc = EncodedTensor(layout.name, (geometry.count,), CODEC_TANS, 0, geometry,
                        np.asarray(counts), np.asarray(lane_sizes), np.asarray(payload),
                        np.asarray(raw))
    dev = DeviceCodedTensor(enc, device)
    out = torch.empty(geometry.count * (geometry.width // 8), dtype=torch.uint8, device=dev.device)
    dev._decoder = DeviceBlockDecoder([dev], launch="direct")      # a one-off launch
    dev._decoder._launch(out)
    dev.check()
    return out.cpu().numpy().view(np.dtype(dtype))
