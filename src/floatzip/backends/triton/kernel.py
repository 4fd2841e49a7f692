"""The decode kernel: the twin of ``numpy_ref.decode`` in Triton, and the
constants its code reads.

One GPU thread per tANS lane, all lanes of a group advancing one symbol per
step, so that the 32 threads of a warp decode one group and write 32
consecutive outputs per step.

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
(payload: host.payload_slack_words; raw: host.RAW_SLACK_WORDS). A
finished lane gets table entry 0 (0 bits), keeps its state and stores
nothing. Loops have a trip count fixed per program (no
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
which ``DeviceBlockDecoder.check()`` reads.

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

import triton.language as tl

from ...codecs import tans

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
# Prefetching builds (builds.PREFETCHES): PTX that prefetches the line at
# address $1 into L1 or L2 (``{level}``) on lanes where $2 is non-zero,
# passed to the kernel as the constexpr PREFETCH_PTX. Like the table reads,
# CUDA only.
PREFETCH_PTX_FORMAT = ("{{ .reg .pred %fz_p; setp.ne.b32 %fz_p, $2, 0; "
                       "@%fz_p prefetch.global.{level} [$1]; mov.u32 $0, 0; }}")
# A lane prefetches the payload word this many words past its look-ahead
# word each time it moves on a word: one 32-byte sector, ~70 steps before it
# reads it at ~3.5 bits a symbol. The payload slack covers it (host.payload_slack_words).
PAYLOAD_PREFETCH_WORDS = tl.constexpr(8)
# Raw rows are prefetched this many steps after the ring's newest row.
RAW_PREFETCH_ROWS = tl.constexpr(16)
# How a lane gets its payload words (builds.STAGINGS). "none": loads the word
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
DESC_SIGN_RAW = 13   # 1: the raw field's bit 0 is the sign (format 1); 0: the symbol holds it
DESC_DROPPED = 14    # dropped_bits: the raw field's other bits go this far up
DESC_DROPPED_VALUE = 15  # dropped_value, ORed into every value
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
    PREFETCH_PTX: tl.constexpr = "",     # the prefetch instruction (PREFETCH_PTX_FORMAT)
    STAGING: tl.constexpr = 0,           # index in builds.STAGINGS: none, fifo, async
    FIFO_DECLARE: tl.constexpr = "",     # the async build's shared FIFOs (builds.kernel_constants)
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
    sign_raw = tl.load(row + 13).to(tl.uint32)      # DESC_SIGN_RAW
    dropped = tl.load(row + 14).to(tl.uint32)       # DESC_DROPPED
    dropped_value = tl.load(row + 15).to(tl.uint32)  # DESC_DROPPED_VALUE

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

    # Staged payload (builds.STAGINGS), unmasked phase only: lane l keeps word w
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
        # stays below 2**table_log (host.decode_table checks that each entry's
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
    # of host.device_table: nbits, the value with a zero raw field, base.
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

                        # value = the symbol's part, from the table, | the
                        # field's part (codecs.words.raw_part: in format 1
                        # its bit 0 is the sign and goes to the top, the rest
                        # sits above the dropped bits) | the dropped value;
                        # the store's truncation drops bits shifted past it.
                        if w == 2:
                            symbol_part = (entry.to(tl.uint32, bitcast=True) << 4) & 0xFFFF0000
                        else:
                            symbol_part = entry.to(tl.uint32, bitcast=True) >> 12
                        value = (symbol_part | ((field >> sign_raw) << dropped)
                                 | ((field & sign_raw) << ((8 << w) - 1)) | dropped_value)
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
