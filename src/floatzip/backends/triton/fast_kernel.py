"""The GPU decoder of the fast in-memory code (docs/FAST_CODE.md): the
Triton kernel, the constants its code reads, and the same kernel compiled
for a GPU that is not there (for its SASS).

One program decodes one tile of TILE = 4096 weights (16 groups of 256),
then patches that tile's escapes. A step decodes STEP_GROUPS groups at
once, seen as STEP_GROUPS * 8 rows of 32 weights: row k is the weights
32 * (k % 8) .. 32 * (k % 8) + 31 of group k // 8, whose fields sit at
one bit position of 32 consecutive bytes of each plane (the doc's "one
vector load, one shift, one mask"). A row's byte offset and shift are
worked out once, before the loop. The loop works on 32-bit words of 4
weights (SWAR): one word of plane A gives 4 fields with one shift and one
mask (plus a word, shift and mask of plane B for 3-bit codes); the palette
is read once per weight from ``table`` (``exponent << 7`` per code, 2**bits
int16: one 32-byte sector for the whole warp's gather); a word of 4 sm
bytes is spread to two words of 16-bit lanes, ``* 0x101`` puts each sign
at bit 15 and each mantissa at bits 0-6 at once, ``& 0x807F807F`` keeps
those and the table values are ORed in: 4 weights, one 64-bit output word.
A thread takes 8 consecutive weights of a row, so its sm load (8 bytes)
and output store (16 bytes) are vectors. No weight waits for another.

Steps wholly inside the tile run without masks; the rest of the tile (the
tensor's last tile only) runs once, a weight at a time with masks (the
tensor may end inside a word). Loops have trip counts fixed
per program (no per-lane ``while``).

Escapes. An escaped weight has code 0, so the step wrote palette[0]'s
exponent for it; the patch rewrites the weight whole, from its sm byte and
the escape's exponent (no read of the output), for entries
esc_start[t] .. esc_start[t+1]-1 of the tile, PATCH entries an iteration
(masked; the trip count is the program's, the same for every lane). Each
tile belongs to one program, so no two programs write the same weight; the
only order that matters is the step's store before the patch's store of
the same weight, by two threads of one program, which the barrier between
the two phases gives (bar.sync orders a CTA's memory accesses; the
interpreter runs a program's operations in order anyway).

As in kernel.py, the function below is turned into a Triton kernel at its
first launch (TRITON_INTERPRET is read then) and uses only Triton builtins,
so the same source runs in the interpreter on CPU tensors (tests) and
compiles, here without a GPU, for sm_80 / sm_90 (:func:`compile_fast_decoder`,
benchmarks/kernel_sass.py).
"""
from __future__ import annotations

import re

import triton.language as tl

from ...codecs import fast_code

# The code's units (docs/FAST_CODE.md); Triton globals must be constexpr.
GROUP = tl.constexpr(fast_code.GROUP)
TILE = tl.constexpr(fast_code.TILE)

# Groups a step decodes: 1024 weights, 8 a thread with 4 warps.
STEP_GROUPS = 4
NUM_WARPS = 4
# Escapes a patch iteration writes (one a thread with 4 warps).
PATCH = 128
# SASS instructions a decoded weight may cost in the unmasked loop
# (issue 15's budget for the standalone decoder; tests/test_triton_fast_code.py).
SASS_BUDGET_PER_WEIGHT = 16
# Largest tensor the kernel indexes (weights within a tile are int32,
# tiles' first weights int64; esc_start is read as int32).
MAX_COUNT = 2**31 - 1


def _fast_decode_kernel(
    table_ptr,          # int16[2**BITS]: exponent << 7 of each code
    codes_ptr,          # uint8[groups * 32 * BITS]: the code planes
    sm_ptr,             # uint8[count]: sign << 7 | mantissa
    esc_start_ptr,      # int32[tiles + 1]: tile t's escapes are esc_start[t] .. esc_start[t+1]-1
    esc_pos_ptr,        # int16[escapes]: offset in its tile (a uint16's bits)
    esc_exp_ptr,        # uint8[escapes]: its exponent
    out_ptr,            # int16[count]: the BF16 bit patterns
    count,              # weights in the tensor
    BITS: tl.constexpr,         # code width: 2, 3 or 4
    STEP_GROUPS: tl.constexpr,  # groups a step decodes (a power of two)
    PATCH: tl.constexpr,        # escapes a patch iteration writes (a power of two)
):
    tile = tl.program_id(0).to(tl.int64)
    first = tile * TILE                               # the tile's first weight
    left = tl.minimum(count - first, TILE).to(tl.int32)

    # Row k of a step: group k // 8 of the step, weights 32 * (k % 8) + col.
    ROWS: tl.constexpr = STEP_GROUPS * 8
    STEP: tl.constexpr = STEP_GROUPS * GROUP
    row = tl.arange(0, ROWS)
    q = row % 8
    # Plane A: field width 2 (4 for 4-bit codes); a row's first byte and shift.
    WA: tl.constexpr = 4 if BITS == 4 else 2
    a_at = (row // 8) * (32 * BITS) + (q % WA) * 32
    a_shift = ((q // WA) * WA)[:, None]
    # Plane B (3-bit codes): bit 2 of the code, one field a byte, after plane A.
    b_at = (row // 8) * (32 * BITS) + 64
    b_shift = q[:, None]

    codes = codes_ptr + tile * (TILE // GROUP * 32 * BITS)
    sm = sm_ptr + first
    out = out_ptr + first
    full = left - left % STEP                         # weights in whole steps

    # Whole steps, four weights a 32-bit word: a row is 8 words of each
    # plane and of sm, and 8 words of 64 bits of output. The fields of a
    # word's 4 weights come out with one shift and one mask; sm bytes are
    # spread to 16-bit lanes and ``* 0x101`` puts each one's sign at bit 15
    # and its mantissa at bits 0-6 at once; the palette is read per weight.
    word = tl.arange(0, 8)
    a_words = (a_at // 4)[:, None] + word[None, :]
    b_words = (b_at // 4)[:, None] + word[None, :]
    at_words = row[:, None] * 8 + word[None, :]        # in the step, words of 4 weights
    FIELDS: tl.constexpr = 0x0F0F0F0F if BITS == 4 else 0x03030303
    codes32 = codes.to(tl.pointer_type(tl.uint32))
    sm32 = sm.to(tl.pointer_type(tl.uint32))
    out64 = out.to(tl.pointer_type(tl.uint64))
    for j in range(0, full, STEP):
        step_codes = codes32 + (j // GROUP) * (8 * BITS)
        code = (tl.load(step_codes + a_words) >> a_shift) & FIELDS
        if BITS == 3:
            code = code | (((tl.load(step_codes + b_words) >> b_shift) & 0x01010101) << 2)
        e0 = tl.load(table_ptr + (code & 0xFF)).to(tl.uint32)
        e1 = tl.load(table_ptr + ((code >> 8) & 0xFF)).to(tl.uint32)
        e2 = tl.load(table_ptr + ((code >> 16) & 0xFF)).to(tl.uint32)
        e3 = tl.load(table_ptr + (code >> 24)).to(tl.uint32)
        s = tl.load(sm32 + (j // 4 + at_words))
        lo = ((s & 0xFF) | ((s & 0xFF00) << 8)) * 0x101
        hi = (((s >> 16) & 0xFF) | ((s >> 8) & 0xFF0000)) * 0x101
        lo = (lo & 0x807F807F) | e0 | (e1 << 16)
        hi = (hi & 0x807F807F) | e2 | (e3 << 16)
        tl.store(out64 + (j // 4 + at_words), lo.to(tl.uint64) | (hi.to(tl.uint64) << 32))

    # The tile's last, partial step (the tensor's last tile only), a weight
    # at a time with masks: the tensor may end inside a word.
    if full < left:
        col = tl.arange(0, 32)
        at = full + row[:, None] * 32 + col[None, :]
        ok = at < left
        step_codes = codes + (full // GROUP) * (32 * BITS)
        c = tl.load(step_codes + a_at[:, None] + col[None, :], mask=ok, other=0).to(tl.int32)
        code = (c >> a_shift) & ((1 << WA) - 1)
        if BITS == 3:
            b = tl.load(step_codes + b_at[:, None] + col[None, :], mask=ok, other=0).to(tl.int32)
            code = code | (((b >> b_shift) & 1) << 2)
        exponent = tl.load(table_ptr + code, mask=ok, other=0).to(tl.int32)
        s = tl.load(sm + at, mask=ok, other=0).to(tl.int32)
        value = ((s << 8) & 0x8000) | (s & 0x7F) | exponent
        tl.store(out + at, value.to(tl.int16), mask=ok)

    # Every store above is in before a patch overwrites one of them.
    tl.debug_barrier()
    e0 = tl.load(esc_start_ptr + tile)
    e1 = tl.load(esc_start_ptr + tile + 1)
    k = tl.arange(0, PATCH)
    for e in range(e0, e1, PATCH):
        has = e + k < e1
        pos = tl.load(esc_pos_ptr + e + k, mask=has, other=0).to(tl.int32) & 0xFFFF
        exp = tl.load(esc_exp_ptr + e + k, mask=has, other=0).to(tl.int32)
        s = tl.load(sm + pos, mask=has, other=0).to(tl.int32)
        value = ((s << 8) & 0x8000) | (exp << 7) | (s & 0x7F)
        tl.store(out + pos, value.to(tl.int16), mask=has)


def kernel_constants(bits: int, step_groups: int = STEP_GROUPS, patch: int = PATCH) -> dict:
    """The kernel's constexpr arguments."""
    return {"BITS": bits, "STEP_GROUPS": step_groups, "PATCH": patch}


# Turned into a Triton kernel on first launch, once per mode (compiled, or
# run by the interpreter), as builds.launchable does for the tANS kernel.
_launchable: dict[bool, object] = {}


def launchable(interpreted: bool):
    if interpreted not in _launchable:
        if interpreted:
            from triton.runtime.interpreter import InterpretedFunction
            _launchable[interpreted] = InterpretedFunction(_fast_decode_kernel)
        else:
            from triton.runtime.jit import JITFunction
            _launchable[interpreted] = JITFunction(_fast_decode_kernel)
    return _launchable[interpreted]


# -- compiled without a GPU ----------------------------------------------------

SIGNATURE = {
    "table_ptr": "*i16", "codes_ptr": "*u8", "sm_ptr": "*u8", "esc_start_ptr": "*i32",
    "esc_pos_ptr": "*i16", "esc_exp_ptr": "*u8", "out_ptr": "*i16", "count": "i64",
    "BITS": "constexpr", "STEP_GROUPS": "constexpr", "PATCH": "constexpr",
}


def compile_fast_decoder(capability: int, bits: int, step_groups: int = STEP_GROUPS,
                         num_warps: int = NUM_WARPS):
    """The kernel as fast_host launches it on a CUDA device, for
    ``sm_<capability>`` and ``bits``-bit codes, compiled without a GPU.
    Returns Triton's CompiledKernel (``.asm["ptx"]``, ``.asm["cubin"]``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    # A launch on torch tensors finds every pointer 16-byte aligned (fresh
    # allocations are) and specialises on it, which lets loads and stores
    # of consecutive bytes become vectors: compile as such a launch would.
    aligned = {(i,): [["tt.divisibility", 16]]
               for i, kind in enumerate(SIGNATURE.values()) if kind.startswith("*")}
    src = triton.compiler.ASTSource(
        fn=JITFunction(_fast_decode_kernel), signature=SIGNATURE,
        constexprs=kernel_constants(bits, step_groups), attrs=aligned)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps})


# Bytes a SASS global store writes, by its suffix.
_STORE_BYTES = {".128": 16, ".64": 8, "": 4, ".U16": 2, ".S16": 2, ".U8": 1, ".S8": 1}


def store_bytes(op: str) -> int:
    """Bytes the SASS instruction ``op`` stores to global memory (0 if none)."""
    m = re.search(r"\bSTG\.E(\.128|\.64|\.U16|\.S16|\.U8|\.S8)?\s", op)
    return _STORE_BYTES[m.group(1) or ""] if m else 0


def decode_loop(sass_text: str) -> list[str]:
    """The unmasked decode loop of a compiled fast decoder: the loop whose
    global stores are not predicated (the escape patch's are)."""
    from .builds import decode_loops
    loops = [loop for loop in decode_loops(sass_text)
             if not any(store_bytes(op) and op.startswith("@") for op in loop)]
    if len(loops) != 1:
        raise ValueError(f"expected one unmasked decode loop, found {len(loops)}")
    return loops[0]


def weights_per_iteration(loop: list[str]) -> int:
    """Weights a thread decodes in one iteration of ``loop``: the BF16
    values (2 bytes) its stores write."""
    return sum(store_bytes(op) for op in loop) // 2
