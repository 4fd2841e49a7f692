"""Fast CPU back end: the reference coder compiled with numba.

Same streams as ``numpy_ref``, byte for byte; tests/test_backends.py checks
it. What makes it fast:

* Lane interleaving. The 32 lanes of a group are coded together, the step
  loop outside and the lane loop inside, so their serial dependency chains
  (table read -> bit read -> next state) overlap, and the 32 values of one
  step are 32 consecutive values of the tensor.
* SIMD. Where the CPU has AVX2, one step of all 32 lanes is a handful of
  vector operations around gathers: table entries, stream bits and raw
  fields when decoding (:func:`_decode_steps`), symbol parameters and next
  states when encoding (:func:`_encode_steps`). They are written in LLVM IR
  because numba's auto-vectorizer cannot prove the gathers safe. Scalar
  kernels do the same work elsewhere (``use_simd``), and take over if the
  vector ones do not compile on some numba/LLVM.
* One table read per decoded symbol. Each uint32 entry of our decoding
  table holds the next-state base, the bit count and the symbol already
  shifted and sign-rotated into its place in the output word; the output is
  that OR the raw field, whose lowest bit (the sign) moves to the top.
* Unaligned 4- and 8-byte loads instead of byte-by-byte reads. They may
  read a few bytes past the field, so a group that could read past the end
  of ``payload`` or ``raw`` (only the last one or two, even on a corrupt
  stream) is decoded from a zero-padded copy of the tail.
* Tables are built by jitted code too: small tensors are dominated by them.
* Groups are split over threads; the kernels release the GIL.

Kernels compile on first use (``cache=True`` keeps them on disk): one
specialization per value storage type (uint8/16/32); everything else is a
run-time argument. Importing this module compiles nothing.
"""
from __future__ import annotations

import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import leading_zeros
from numba.extending import intrinsic

from ..codecs import tans
from ..codecs.layout import LANES, MAX_LANE_SYMBOLS, CodedGeometry
from ..errors import CorruptDataError
from ..io_utils import resolve_workers

name = "numba"
can_encode = True


def devices() -> frozenset[str]:
    return frozenset({"cpu"})

if sys.byteorder != "little":      # the unaligned loads assume it
    raise ImportError("the numba back end needs a little-endian machine")
if numba.config.DISABLE_JIT:       # the LLVM intrinsics below cannot run as Python
    raise ImportError("numba's JIT is disabled (NUMBA_DISABLE_JIT)")

_NJIT = dict(cache=True, nogil=True)
# A bit read is one unaligned 8-byte load (4 in the SIMD kernels) from the
# field's first byte: enough for a stream field (<= 12 bits at a bit offset
# <= 7) and for a raw field (<= 31 bits; <= 25 where the SIMD decoder is used).
_LOAD_BYTES = 8
_RAW_SLACK = 2 * _LOAD_BYTES

# Packed decoding-table entry (our own layout, not the tans module's):
#   bits  0..11  base      next state = base + (nbits bits from the stream)
#   bits 12..15  nbits
#   bits 16..31  the symbol's part of the output word, >> out_shift
_E_NBITS_SHIFT = 12
_E_OUT_SHIFT = 16

# Packed encoding parameters of one symbol, uint32 (0: a symbol with count 0):
#   bits  0..13  threshold  states below it emit nbits0 - 1 bits, the rest nbits0
#   bits 14..17  nbits0
#   bits 18..31  cumulative - count + 2**table_log  (kept non-negative)
# so that encoding s from state x emits nbits = nbits0 - (x < threshold) low
# bits of x and goes to next_state[delta - 2**table_log + (x >> nbits)].
_P_THRESHOLD_MASK = 0x3FFF
_P_NBITS_SHIFT = 14
_P_DELTA_SHIFT = 18

# Decoder failure kinds (err[2])
_BAD_SIZE = 1
_BAD_PADDING = 2
_BAD_STATE = 3


def _host_has_gathers() -> bool:
    """Whether numba compiles for a CPU with vector gathers (x86 AVX2+).
    Elsewhere LLVM would split each gather into scalar loads, which is
    slower than the scalar kernel."""
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        return bool(llvm_binding.get_host_cpu_features().get("avx2", False))
    except Exception:           # pragma: no cover - feature query unsupported
        return False


# Tests flip this to cover the scalar kernel on machines that have AVX2.
use_simd = _host_has_gathers()


# -- LLVM helpers ----------------------------------------------------------

_I8P = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V = ir.VectorType(_I32, LANES)          # one i32 per lane


def _array_pointer(context, builder, arrty, value):
    return context.make_array(arrty)(context, builder, value).data


@intrinsic
def _load_u64(typingctx, buf, index):
    """8 bytes of a uint8 array from ``index`` on, as a little-endian uint64.
    No bounds check: the caller guarantees index + 8 <= buf.size."""
    def codegen(context, builder, signature, args):
        data = _array_pointer(context, builder, signature.args[0], args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(data, [idx]), _I64.as_pointer())
        return builder.load(ptr, align=1)
    return types.uint64(buf, index), codegen


@intrinsic
def _store_u64(typingctx, buf, index, value):
    """Write ``value`` as 8 little-endian bytes at ``index`` of a uint8 array.
    No bounds check: the caller guarantees index + 8 <= buf.size."""
    def codegen(context, builder, signature, args):
        data = _array_pointer(context, builder, signature.args[0], args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        val = context.cast(builder, args[2], signature.args[2], types.uint64)
        ptr = builder.bitcast(builder.gep(data, [idx]), _I64.as_pointer())
        builder.store(val, ptr, align=1)
        return context.get_dummy_value()
    return types.none(buf, index, value), codegen


@intrinsic
def _store_u32(typingctx, buf, index, value):
    """Write the low 32 bits of ``value`` as 4 little-endian bytes at
    ``index`` of a uint8 array. No bounds check."""
    def codegen(context, builder, signature, args):
        data = _array_pointer(context, builder, signature.args[0], args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        val = builder.trunc(context.cast(builder, args[2], signature.args[2], types.uint64), _I32)
        ptr = builder.bitcast(builder.gep(data, [idx]), _I32.as_pointer())
        builder.store(val, ptr, align=1)
        return context.get_dummy_value()
    return types.none(buf, index, value), codegen


class _VectorGEP(ir.Instruction):
    """``getelementptr i8, ptr base, <N x i32> offsets``: a vector of
    pointers. llvmlite's builder only makes scalar GEPs; this form (one
    base, i32 offsets) is what x86 lowers to a single vpgatherdd."""

    def __init__(self, parent, base, offsets):
        super().__init__(parent, ir.VectorType(base.type, offsets.type.count),
                         "getelementptr", [base, offsets])

    def descr(self, buf):
        base, offsets = self.operands
        buf.append(f"getelementptr inbounds i8, {base.type} {base.get_reference()}, "
                   f"{offsets.type} {offsets.get_reference()}\n")


def _splat(builder, value):
    undef = ir.Constant(_V, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(first, undef, ir.Constant(_V, [0] * LANES))


def _vconst(value):
    return ir.Constant(_V, [value] * LANES)


def _gather_u32(builder, base, offsets):
    """The little-endian uint32 at byte ``base + offsets[i]`` for each lane."""
    geps = _VectorGEP(builder.block, base, offsets)
    builder._insert(geps)
    pointers = builder.bitcast(geps, ir.VectorType(_I32.as_pointer(), LANES))
    mask_type = ir.VectorType(ir.IntType(1), LANES)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V, [pointers.type, _I32, mask_type, _V]),
        f"llvm.masked.gather.v{LANES}i32.v{LANES}p0")
    return builder.call(fn, [pointers, ir.Constant(_I32, 1), ir.Constant(mask_type, [1] * LANES),
                             ir.Constant(_V, ir.Undefined)])


@intrinsic
def _decode_steps(typingctx, table, payload, group_byte, state, pos, raw, raw_byte, raw_offset,
                  raw_shift, out, out_index, steps, raw_bits, width, out_shift):
    """Decode ``steps`` steps of all 32 lanes of a group with vector ops.

    table        uint32[]  packed entries; every next state indexes inside it
    payload      uint8[]   the group's lanes start at byte ``group_byte``
    state, pos   uint32[32] in/out: each lane's state and bit position
                           (counted from ``group_byte``)
    raw          uint8[]   the group's raw fields start at byte ``raw_byte``
    raw_offset, raw_shift  uint32[32]: lane l's raw field in a step is at
                           byte raw_offset[l], bit raw_shift[l] of the step
    out          uint8/16/32[]  step k of lane l goes to out_index + 32 k + l
    No bounds checks: every read must be in bounds (see decode()).
    """
    def codegen(context, builder, sig, args):
        (table_a, payload_a, group_byte_v, state_a, pos_a, raw_a, raw_byte_v, raw_offset_a,
         raw_shift_a, out_a, out_index_v, steps_v, raw_bits_v, width_v, out_shift_v) = args

        def pointer(i, value):
            return _array_pointer(context, builder, sig.args[i], value)

        def i64(i, value):
            return context.cast(builder, value, sig.args[i], types.int64)

        def vec_pointer(i, value):
            return builder.bitcast(pointer(i, value), _V.as_pointer())

        c = _vconst
        table_p = builder.bitcast(pointer(0, table_a), _I8P)
        payload_p = builder.gep(builder.bitcast(pointer(1, payload_a), _I8P),
                                [i64(2, group_byte_v)])
        raw_p = builder.gep(builder.bitcast(pointer(5, raw_a), _I8P), [i64(6, raw_byte_v)])
        raw_offset = builder.load(vec_pointer(7, raw_offset_a), align=4)
        raw_shift = builder.load(vec_pointer(8, raw_shift_a), align=4)
        out_p = builder.gep(pointer(9, out_a), [i64(10, out_index_v)])
        out_vec = ir.VectorType(out_p.type.pointee, LANES)
        raw_bits = builder.trunc(i64(12, raw_bits_v), _I32)
        raw_mask = _splat(builder, builder.sub(builder.shl(ir.Constant(_I32, 1), raw_bits),
                                               ir.Constant(_I32, 1)))
        sign_shift = _splat(builder, builder.sub(builder.trunc(i64(13, width_v), _I32),
                                                 ir.Constant(_I32, 1)))
        out_shift = _splat(builder, builder.trunc(i64(14, out_shift_v), _I32))
        step_raw_bytes = builder.mul(raw_bits, ir.Constant(_I32, LANES // 8))

        # Allocas of vectors: LLVM keeps them in registers across the loop.
        state_slot = cgutils.alloca_once(builder, _V)
        pos_slot = cgutils.alloca_once(builder, _V)
        builder.store(builder.load(vec_pointer(3, state_a), align=4), state_slot)
        builder.store(builder.load(vec_pointer(4, pos_a), align=4), pos_slot)
        with cgutils.for_range(builder, i64(11, steps_v)) as loop:
            k = loop.index
            st = builder.load(state_slot)
            ps = builder.load(pos_slot)
            entry = _gather_u32(builder, table_p, builder.shl(st, c(2)))
            window = builder.lshr(_gather_u32(builder, payload_p, builder.lshr(ps, c(3))),
                                  builder.and_(ps, c(7)))
            nbits = builder.and_(builder.lshr(entry, c(_E_NBITS_SHIFT)), c(15))
            mask = builder.sub(builder.shl(c(1), nbits), c(1))
            builder.store(builder.add(builder.and_(entry, c(0xFFF)), builder.and_(window, mask)),
                          state_slot)
            builder.store(builder.add(ps, nbits), pos_slot)
            step_raw = _splat(builder, builder.mul(builder.trunc(k, _I32), step_raw_bytes))
            raw_field = builder.and_(
                builder.lshr(_gather_u32(builder, raw_p, builder.add(raw_offset, step_raw)),
                             raw_shift),
                raw_mask)
            value = builder.or_(
                builder.shl(builder.lshr(entry, c(_E_OUT_SHIFT)), out_shift),
                builder.or_(builder.lshr(raw_field, c(1)),
                            builder.shl(builder.and_(raw_field, c(1)), sign_shift)))
            if out_vec.element.width < 32:
                value = builder.trunc(value, out_vec)
            dst = builder.gep(out_p, [builder.mul(k, ir.Constant(_I64, LANES))])
            builder.store(value, builder.bitcast(dst, out_vec.as_pointer()), align=1)
        builder.store(builder.load(state_slot), vec_pointer(3, state_a), align=4)
        builder.store(builder.load(pos_slot), vec_pointer(4, pos_a), align=4)
        return context.get_dummy_value()

    return types.none(table, payload, group_byte, state, pos, raw, raw_byte, raw_offset,
                      raw_shift, out, out_index, steps, raw_bits, width, out_shift), codegen


@intrinsic
def _encode_steps(typingctx, bits, first, x, params, next_state, fields, steps, table_log,
                  raw_bits, width, first_symbol):
    """Encode steps steps-1, ..., 1, 0 of all 32 lanes of the group whose
    first value is bits[first], with vector ops; as _encode_scalar_steps.

    x            uint32[32] in/out: each lane's encoder state, in [L, 2L)
    params       uint32[symbols]  see _P_*
    next_state   uint16[L + 2]    the 2 extra entries are gather slack
    fields       uint32[]  receives field k of lane l at k*32 + l
    Returns 1 if some symbol has no count (the fields are then garbage),
    else 0. Bad symbols read params[0] instead, so every read is in bounds.
    """
    def codegen(context, builder, sig, args):
        (bits_a, first_v, x_a, params_a, next_state_a, fields_a, steps_v, table_log_v,
         raw_bits_v, width_v, first_symbol_v) = args

        def pointer(i, value):
            return _array_pointer(context, builder, sig.args[i], value)

        def i32(i, value):
            return builder.trunc(context.cast(builder, value, sig.args[i], types.int64), _I32)

        c = _vconst
        bits_p = builder.gep(pointer(0, bits_a), [context.cast(builder, first_v, sig.args[1],
                                                               types.int64)])
        in_vec = ir.VectorType(bits_p.type.pointee, LANES)
        x_p = builder.bitcast(pointer(2, x_a), _V.as_pointer())
        params_p = builder.bitcast(pointer(3, params_a), _I8P)
        next_p = builder.bitcast(pointer(4, next_state_a), _I8P)
        fields_p = pointer(5, fields_a)
        steps = context.cast(builder, steps_v, sig.args[6], types.int64)
        size = builder.shl(ir.Constant(_I32, 1), i32(7, table_log_v))
        raw_bits = _splat(builder, i32(8, raw_bits_v))
        width = i32(9, width_v)
        sign_shift = _splat(builder, builder.sub(width, ir.Constant(_I32, 1)))
        value_mask = _splat(builder, builder.lshr(ir.Constant(_I32, -1),
                                                  builder.sub(ir.Constant(_I32, 32), width)))
        first_symbol = _splat(builder, i32(10, first_symbol_v))
        params_shape = context.make_array(sig.args[3])(context, builder, params_a).shape
        symbols = _splat(builder, builder.trunc(builder.extract_value(params_shape, 0), _I32))
        minus_size = _splat(builder, builder.neg(size))

        x_slot = cgutils.alloca_once(builder, _V)
        bad_slot = cgutils.alloca_once(builder, _V)
        builder.store(builder.load(x_p, align=4), x_slot)
        builder.store(c(0), bad_slot)
        with cgutils.for_range(builder, steps) as loop:
            step = builder.sub(builder.sub(steps, ir.Constant(_I64, 1)), loop.index)
            src = builder.gep(bits_p, [builder.mul(step, ir.Constant(_I64, LANES))])
            v = builder.load(builder.bitcast(src, in_vec.as_pointer()), align=1)
            if in_vec.element.width < 32:
                v = builder.zext(v, _V)
            rotated = builder.and_(builder.or_(builder.shl(v, c(1)), builder.lshr(v, sign_shift)),
                                   value_mask)
            s = builder.sub(builder.lshr(rotated, raw_bits), first_symbol)
            in_range = builder.icmp_unsigned("<", s, symbols)
            p = _gather_u32(builder, params_p,
                            builder.shl(builder.select(in_range, s, c(0)), c(2)))
            bad = builder.or_(builder.zext(builder.not_(in_range), _V),
                              builder.zext(builder.icmp_unsigned("==", p, c(0)), _V))
            builder.store(builder.or_(builder.load(bad_slot), bad), bad_slot)
            x = builder.load(x_slot)
            nbits = builder.sub(builder.and_(builder.lshr(p, c(_P_NBITS_SHIFT)), c(15)),
                                builder.zext(builder.icmp_unsigned(
                                    "<", x, builder.and_(p, c(_P_THRESHOLD_MASK))), _V))
            field = builder.or_(builder.and_(x, builder.sub(builder.shl(c(1), nbits), c(1))),
                                builder.shl(nbits, c(16)))
            dst = builder.gep(fields_p, [builder.mul(builder.add(step, ir.Constant(_I64, 1)),
                                                     ir.Constant(_I64, LANES))])
            builder.store(field, builder.bitcast(dst, _V.as_pointer()), align=4)
            index = builder.add(builder.add(builder.lshr(p, c(_P_DELTA_SHIFT)), minus_size),
                                builder.lshr(x, nbits))
            x = builder.and_(_gather_u32(builder, next_p, builder.shl(index, c(1))), c(0xFFFF))
            builder.store(x, x_slot)
        builder.store(builder.load(x_slot), x_p, align=4)
        bad = builder.bitcast(builder.icmp_unsigned("!=", builder.load(bad_slot), c(0)),
                              ir.IntType(LANES))
        return builder.zext(builder.icmp_unsigned("!=", bad, ir.Constant(ir.IntType(LANES), 0)),
                            _I64)

    return types.int64(bits, first, x, params, next_state, fields, steps, table_log, raw_bits,
                       width, first_symbol), codegen


# -- tables ----------------------------------------------------------------

@numba.njit(**_NJIT)
def _highest_bit(x):
    """floor(log2(x)) for 0 < x < 2**63."""
    return 63 - leading_zeros(np.uint64(x))


@numba.njit(**_NJIT)
def _spread(counts, table_log, step):
    """Slot -> symbol index, as tans.spread_symbols with stride ``step``, or
    an empty array if the counts are not non-negative numbers summing to
    2**table_log or the stride leaves a slot empty."""
    size = 1 << table_log
    total = 0
    for s in range(counts.size):
        if counts[s] < 0:
            return np.empty(0, np.int64)
        total += counts[s]
    if total != size:
        return np.empty(0, np.int64)
    slot_symbol = np.full(size, -1, np.int64)
    slot = 0
    for s in range(counts.size):
        for _ in range(counts[s]):
            slot_symbol[slot] = s
            slot = (slot + step) & (size - 1)
    for slot in range(size):
        if slot_symbol[slot] < 0:
            return np.empty(0, np.int64)
    return slot_symbol


@numba.njit(**_NJIT)
def _build_decode_table(counts, first_symbol, table_log, step, width, raw_bits, out_shift, table):
    """Fill ``table`` (uint32[2**table_log]) with packed entries (see _E_*):
    the states and symbols of tans.build_decode_table. Returns 0; 1 if the
    counts are invalid; 2 if a symbol does not fit an entry."""
    size = 1 << table_log
    slot_symbol = _spread(counts, table_log, step)
    if slot_symbol.size != size:
        return 1
    value_mask = (1 << width) - 1
    symbol_part = np.empty(counts.size, np.int64)
    for s in range(counts.size):
        rotated = ((s + first_symbol) << raw_bits) & value_mask
        out_part = (rotated >> 1) | ((rotated & 1) << (width - 1))
        if out_part & ((1 << out_shift) - 1) or (out_part >> out_shift) >> 16:
            return 2
        symbol_part[s] = (out_part >> out_shift) << _E_OUT_SHIFT
    next_x = counts.copy()
    for slot in range(size):
        s = slot_symbol[slot]
        x = next_x[s]       # the k-th slot (in slot order) of s gets counts[s] + k
        next_x[s] = x + 1
        nbits = table_log - _highest_bit(x)
        table[slot] = ((x << nbits) - size) | (nbits << _E_NBITS_SHIFT) | symbol_part[s]
    return 0


@numba.njit(**_NJIT)
def _build_encode_table(counts, table_log, step, params, next_state):
    """Fill ``params`` (uint32[symbols], see _P_*) and ``next_state``
    (uint16[2**table_log], states in [L, 2L)), as tans.build_encode_table.
    Returns 0, or 1 if the counts are invalid."""
    size = 1 << table_log
    slot_symbol = _spread(counts, table_log, step)
    if slot_symbol.size != size:
        return 1
    fill = np.empty(counts.size, np.int64)
    cumulative = 0
    for s in range(counts.size):
        f = counts[s]
        fill[s] = cumulative
        if f:
            nbits0 = table_log - _highest_bit(f)
            params[s] = ((f << nbits0) | (nbits0 << _P_NBITS_SHIFT)
                         | ((cumulative - f + size) << _P_DELTA_SHIFT))
        else:
            params[s] = 0
        cumulative += f
    for slot in range(size):
        s = slot_symbol[slot]
        next_state[fill[s]] = slot + size
        fill[s] += 1
    return 0


def _counts_array(counts, table_log: int) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or not 1 <= counts.size <= 1 << tans.MAX_SYMBOL_BITS:
        raise CorruptDataError(
            f"expected 1..{1 << tans.MAX_SYMBOL_BITS} symbol counts, found {counts.size}")
    return counts.astype(np.int64)


def _bad_counts(counts: np.ndarray, table_log: int) -> CorruptDataError:
    if counts.min() >= 0 and counts.sum() == 1 << table_log:
        return CorruptDataError(
            f"table_log {table_log}: the spread stride {tans.spread_step(table_log)} leaves "
            f"table slots empty")
    return CorruptDataError(
        f"symbol counts must be non-negative and sum to {1 << table_log} (table_log "
        f"{table_log}); found {counts.size} counts summing to {int(counts.sum())}")


def _out_shift(width: int) -> int:
    """Entries hold 16 bits of the output word; 32-bit words keep the top 16."""
    return max(0, width - 16)


def decode_table(counts, geometry: CodedGeometry) -> np.ndarray:
    """Packed decoding entries (see _E_*) for ``counts``."""
    if not tans.MIN_TABLE_LOG <= geometry.table_log <= tans.MAX_TABLE_LOG:
        raise CorruptDataError(f"table_log {geometry.table_log} is outside "
                               f"{tans.MIN_TABLE_LOG}..{tans.MAX_TABLE_LOG}")
    counts = _counts_array(counts, geometry.table_log)
    table = np.empty(1 << geometry.table_log, dtype=np.uint32)
    status = _build_decode_table(counts, geometry.first_symbol, geometry.table_log,
                                 tans.spread_step(geometry.table_log), geometry.width,
                                 geometry.raw_bits, _out_shift(geometry.width), table)
    if status == 1:
        raise _bad_counts(counts, geometry.table_log)
    if status:
        raise CorruptDataError(
            f"symbol_bits {geometry.symbol_bits} is too wide for {geometry.width}-bit values")
    return table


def encode_table(counts, table_log: int) -> tuple[np.ndarray, np.ndarray]:
    """(params uint32[symbols], next_state uint16[2**table_log + 2]); the two
    extra entries are slack for the 4-byte gathers of the SIMD encoder."""
    counts = _counts_array(counts, table_log)
    params = np.empty(counts.size, dtype=np.uint32)
    next_state = np.zeros((1 << table_log) + 2, dtype=np.uint16)
    if _build_encode_table(counts, table_log, tans.spread_step(table_log), params, next_state):
        raise _bad_counts(counts, table_log)
    return params, next_state


# -- decoder ---------------------------------------------------------------
#
# Arguments shared by the decoding kernels:
#   table        uint32[2**table_log]  packed entries (see _E_*)
#   payload      uint8[]   holds every lane of these groups, with slack past
#                          the furthest byte any step could load
#   lane_start   int64[32*groups+1]  byte offset of each lane in ``payload``,
#                          then the end of the last lane
#   raw          uint8[]   packed raw fields from the first value of ``out``
#                          on, with _RAW_SLACK bytes of slack
#   out          uint8/16/32[count]  the values of these groups
#   state, pos   uint32[32]  each lane's state, and its bit position counted
#                          from the group's first byte
#   raw_offset, raw_shift  uint32[32]: lane l's raw field in a step is at
#                          byte raw_offset[l], bit raw_shift[l] of the step
#   err          int64[3]  on failure: lane (counted from these groups'
#                          first), bits it used, kind (_BAD_*)


@numba.njit(**_NJIT)
def _lane_scratch(raw_bits):
    """(state, pos, raw_offset, raw_shift) for a decoding kernel."""
    raw_offset = np.empty(LANES, np.uint32)
    raw_shift = np.empty(LANES, np.uint32)
    for lane in range(LANES):
        raw_offset[lane] = (lane * raw_bits) >> 3
        raw_shift[lane] = (lane * raw_bits) & 7
    return np.zeros(LANES, np.uint32), np.zeros(LANES, np.uint32), raw_offset, raw_shift


@numba.njit(**_NJIT)
def _start_group(payload, lane_start, g, left, table_log, state, pos):
    """Read each lane's initial state (lanes < ``left`` have symbols)."""
    group_byte = lane_start[g * LANES]
    for lane in range(LANES):
        start = (lane_start[g * LANES + lane] - group_byte) * 8
        if lane < left:
            state[lane] = (np.int64(_load_u64(payload, group_byte + (start >> 3)))
                           & ((1 << table_log) - 1))
            pos[lane] = start + table_log
        else:
            state[lane] = 0
            pos[lane] = start


@numba.njit(**_NJIT)
def _decode_scalar_steps(table, payload, group_byte, state, pos, raw, raw_byte, raw_offset,
                         raw_shift, out, first, step, full_steps, partial, raw_bits, width,
                         out_shift):
    """Decode steps ``step``..full_steps-1 of all lanes of the group whose
    first value is out[first], then step full_steps of lanes < ``partial``."""
    raw_mask = (1 << raw_bits) - 1
    sign_shift = width - 1
    step_raw_bytes = LANES * raw_bits // 8
    while step < full_steps + (1 if partial else 0):
        lanes = LANES if step < full_steps else partial
        step_byte = raw_byte + step * step_raw_bytes
        out_index = first + step * LANES
        for lane in range(lanes):
            # Unsigned indices spare numba's negative-index handling.
            e = np.int64(table[state[lane]])
            p = np.int64(pos[lane])
            # The arithmetic shift of the signed load only smears bits far
            # above the 12 + 7 kept.
            window = np.int64(_load_u64(payload, np.uint64(group_byte + (p >> 3)))) >> (p & 7)
            nbits = (e >> _E_NBITS_SHIFT) & 15
            state[lane] = (e & 0xFFF) + (window & ((1 << nbits) - 1))
            pos[lane] = p + nbits
            r = (np.int64(_load_u64(raw, np.uint64(step_byte + raw_offset[lane])))
                 >> raw_shift[lane]) & raw_mask
            out[np.uint64(out_index + lane)] = (((e >> _E_OUT_SHIFT) << out_shift)
                                                | (r >> 1) | ((r & 1) << sign_shift))
        step += 1


@numba.njit(**_NJIT)
def _check_group(payload, lane_start, g, pos, state, err):
    """Each lane of group ``g`` must have used exactly its bytes, the
    padding bits after its last field all zero, and end in state 0 (lanes
    without symbols start there). Returns 0, or 1 with ``err`` filled."""
    group_byte = lane_start[g * LANES]
    for lane in range(LANES):
        start = (lane_start[g * LANES + lane] - group_byte) * 8
        end = (lane_start[g * LANES + lane + 1] - group_byte) * 8
        p = np.int64(pos[lane])
        used = p - start
        kind = 0
        if (used + 7) // 8 * 8 != end - start:
            kind = _BAD_SIZE
        elif used & 7 and ((np.int64(_load_u64(payload, group_byte + (p >> 3))) >> (p & 7))
                           & ((1 << ((-used) & 7)) - 1)):
            kind = _BAD_PADDING
        elif state[lane] != 0:
            kind = _BAD_STATE
            used = state[lane]
        if kind:
            err[0] = g * LANES + lane
            err[1] = used
            err[2] = kind
            return 1
    return 0


@numba.njit(**_NJIT)
def _decode_groups(table, payload, lane_start, raw, out, count, lane_symbols, table_log,
                   raw_bits, width, out_shift, err):
    """Decode whole groups into ``out``; returns 0, or 1 on failure."""
    group = LANES * lane_symbols
    state, pos, raw_offset, raw_shift = _lane_scratch(raw_bits)
    for g in range((count + group - 1) // group):
        first = g * group
        left = count - first
        full_steps = min(lane_symbols, left // LANES)
        _start_group(payload, lane_start, g, left, table_log, state, pos)
        _decode_scalar_steps(table, payload, lane_start[g * LANES], state, pos, raw,
                             first * raw_bits // 8, raw_offset, raw_shift, out, first, 0,
                             full_steps, left - full_steps * LANES if left < group else 0,
                             raw_bits, width, out_shift)
        if _check_group(payload, lane_start, g, pos, state, err):
            return 1
    return 0


@numba.njit(**_NJIT)
def _decode_groups_simd(table, payload, lane_start, raw, out, count, lane_symbols, table_log,
                        raw_bits, width, out_shift, err):
    """_decode_groups with the full steps done by _decode_steps."""
    group = LANES * lane_symbols
    state, pos, raw_offset, raw_shift = _lane_scratch(raw_bits)
    for g in range((count + group - 1) // group):
        first = g * group
        left = count - first
        full_steps = min(lane_symbols, left // LANES)
        _start_group(payload, lane_start, g, left, table_log, state, pos)
        group_byte = lane_start[g * LANES]
        raw_byte = first * raw_bits // 8
        if full_steps:
            _decode_steps(table, payload, group_byte, state, pos, raw, raw_byte, raw_offset,
                          raw_shift, out, first, full_steps, raw_bits, width, out_shift)
        if left < group:
            _decode_scalar_steps(table, payload, group_byte, state, pos, raw, raw_byte,
                                 raw_offset, raw_shift, out, first, full_steps, full_steps,
                                 left - full_steps * LANES, raw_bits, width, out_shift)
        if _check_group(payload, lane_start, g, pos, state, err):
            return 1
    return 0


# Below this many values per thread, handing work to a thread costs more
# than it saves.
_MIN_VALUES_PER_JOB = 1 << 18

_pool: ThreadPoolExecutor | None = None    # shared by all calls, grown on demand
_pool_threads = 0
_pool_lock = threading.Lock()


@numba.njit(**_NJIT)
def _plan_decode(sizes, lane_start, payload_bytes, raw_bytes, count, lane_symbols, reach,
                 raw_bits):
    """Fill ``lane_start`` (int64[lanes+1]) with each lane's first byte and
    the payload's end; return the first group that must be decoded from
    padded copies because its loads could pass the end of the payload or
    raw section, or -1 if the lane sizes do not add up to the payload."""
    group = LANES * lane_symbols
    groups = sizes.size // LANES
    lane_start[0] = 0
    for lane in range(sizes.size):
        if sizes[lane] < 0:
            return -1
        lane_start[lane + 1] = lane_start[lane] + sizes[lane]
    if lane_start[sizes.size] != payload_bytes:
        return -1
    for g in range(groups):
        end = min((g + 1) * group, count)
        if (lane_start[g * LANES + LANES - 1] + reach > payload_bytes
                or (end * raw_bits + 7) // 8 + _RAW_SLACK > raw_bytes):
            return g
    return groups


_simd_failure: str | None = None    # why the vector kernels would not compile here


def _call(simd_kernel, scalar_kernel, *args):
    """simd_kernel(*args) where vector kernels are in use, else (or if it
    does not compile on this numba/LLVM) scalar_kernel(*args)."""
    global _simd_failure
    if simd_kernel is not None and use_simd and _simd_failure is None:
        try:
            return simd_kernel(*args)
        except (numba.core.errors.NumbaError, RuntimeError) as exc:
            # Only compilation raises: the kernels themselves never do.
            _simd_failure = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"floatzip: the numba SIMD kernels do not compile here, using the "
                          f"slower scalar ones ({_simd_failure.splitlines()[0]})",
                          RuntimeWarning, stacklevel=2)
    return scalar_kernel(*args)


def _split(groups: int, group: int, workers: int) -> list[tuple[int, int]]:
    """[0, groups) cut into contiguous, non-empty ranges of groups, one per
    worker, each worth handing to a thread."""
    parts = max(1, min(workers, groups, groups * group // _MIN_VALUES_PER_JOB))
    cuts = [groups * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _run(jobs, fn, workers: int):
    """[fn(job) for job in jobs], on up to ``workers`` threads (this one
    included). The kernels release the GIL, so the threads run in parallel."""
    if len(jobs) <= 1 or workers <= 1:
        return [fn(job) for job in jobs]
    global _pool, _pool_threads
    with _pool_lock:
        if _pool_threads < workers - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)      # its queued jobs still run
            _pool = ThreadPoolExecutor(max_workers=workers - 1,
                                       thread_name_prefix="floatzip-numba")
            _pool_threads = workers - 1
        pool = _pool
    futures = [pool.submit(fn, job) for job in jobs[1:]]
    first = fn(jobs[0])
    return [first] + [f.result() for f in futures]


# Bytes between two writes that fault in every page of a fresh buffer.
_PAGE_BYTES = 4096


def _empty_faulted(n: int, dtype) -> np.ndarray:
    """np.empty(n, dtype) with every page already faulted in, by this thread.

    A fresh output that several threads then fill concurrently makes them
    fault its pages in at the same time; with NumPy's transparent huge
    pages (it asks for them on large arrays) the kernel serialises those
    faults so badly that two threads decoding a 47 MB tensor ran at 0.6
    GB/s instead of 3.6 on one (2 cores, Linux 6.18). Touching one byte a
    page first costs one thread what one thread would have paid anyway."""
    out = np.empty(n, dtype=dtype)
    out.view(np.uint8)[::_PAGE_BYTES] = 0
    return out


def _padded(buf: np.ndarray, start: int, slack: int) -> np.ndarray:
    out = np.zeros(buf.size - start + slack, dtype=np.uint8)
    out[: buf.size - start] = buf[start:]
    return out


def decode(geometry: CodedGeometry, counts: np.ndarray, lane_sizes: np.ndarray,
           payload: np.ndarray, raw: np.ndarray, dtype, workers: int = 1,
           out: np.ndarray | None = None) -> np.ndarray:
    """Decode validated sections into the values' bits (``dtype``, flat).
    ``out``: a writable, contiguous array of ``count`` native values of that
    dtype to decode into (saves allocating and first-touching a new one).
    Raises CorruptDataError if a lane does not end exactly where it should."""
    n = geometry.count
    dtype = np.dtype(dtype)
    native = dtype.newbyteorder("=")
    if native.kind != "u" or native.itemsize * 8 != geometry.width:
        raise ValueError(f"dtype {dtype} does not hold {geometry.width}-bit values")
    if out is not None:
        check_out(out, n, native)
    if n == 0:
        return np.empty(0, dtype=dtype) if out is None else out.view(dtype)
    K = geometry.lane_symbols
    if not 1 <= K <= MAX_LANE_SYMBOLS:
        raise CorruptDataError(f"lane_symbols {K} is outside 1..{MAX_LANE_SYMBOLS}")
    top = min(geometry.width, tans.MAX_SYMBOL_BITS)
    if not 1 <= geometry.symbol_bits <= top or geometry.first_symbol < 0:
        raise CorruptDataError(
            f"symbol_bits {geometry.symbol_bits} (1..{top} allowed) or first_symbol "
            f"{geometry.first_symbol} is out of range")
    group = LANES * K
    groups = geometry.groups
    raw_bits = geometry.raw_bits
    table = decode_table(counts, geometry)

    payload = np.ascontiguousarray(payload, dtype=np.uint8).reshape(-1)
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size != geometry.raw_bytes:
        raise CorruptDataError(
            f"raw section holds {raw.size} bytes, expected {geometry.raw_bytes}")
    if raw_bits == 0:       # nothing to read; the kernels still load from it
        raw = np.zeros(_RAW_SLACK, dtype=np.uint8)
    sizes = np.asarray(lane_sizes).reshape(-1).astype(np.int64)
    if sizes.size != groups * LANES:
        raise CorruptDataError(f"expected {groups * LANES} lane sizes, found {sizes.size}")
    lane_start = np.empty(sizes.size + 1, dtype=np.int64)
    # How far past its first byte a lane's loads may reach, whatever its
    # content: a step advances at most 12 bits.
    reach = (geometry.table_log + tans.MAX_TABLE_LOG * K + 7) // 8 + _LOAD_BYTES
    direct = _plan_decode(sizes, lane_start, payload.size, raw.size, n, K, reach, raw_bits)
    if direct < 0:
        raise CorruptDataError(
            f"lane sizes add up to {int(sizes.sum())} bytes (min {int(sizes.min())}), the "
            f"payload holds {payload.size}")

    workers = resolve_workers(workers)
    # A job is a list of (first group, end group, payload, lane_start, raw).
    jobs = [[(g0, g1, payload, lane_start[g0 * LANES: g1 * LANES + 1],
              raw[g0 * group * raw_bits // 8:])]
            for g0, g1 in _split(direct, group, workers)]
    if direct < groups:
        pstart = int(lane_start[direct * LANES])
        rstart = direct * group * raw_bits // 8
        tail = (direct, groups, _padded(payload, pstart, reach),
                lane_start[direct * LANES:] - pstart, _padded(raw, rstart, _RAW_SLACK))
        if jobs:
            jobs[-1].append(tail)
        else:
            jobs.append([tail])
    if out is None:
        out = (_empty_faulted if len(jobs) > 1 else np.empty)(n, native)
    # The vector kernel's 4-byte gathers hold a raw field of up to 32 - 7 bits.
    simd = raw_bits <= 25
    out_shift = _out_shift(geometry.width)

    def run(job):
        err = np.zeros(3, dtype=np.int64)
        for g0, g1, data, starts, raw_part in job:
            block = out[g0 * group: min(g1 * group, n)]
            if _call(_decode_groups_simd if simd else None, _decode_groups,
                     table, data, starts, raw_part, block, block.size, K, geometry.table_log,
                     raw_bits, geometry.width, out_shift, err):
                return int(err[0]) + g0 * LANES, int(err[1]), int(err[2])
        return None

    failures = [f for f in _run(jobs, run, workers) if f is not None]
    if failures:
        lane, used, kind = min(failures)
        if kind == _BAD_SIZE:
            raise CorruptDataError(
                f"lane {lane}: decoding used {used} bits but the lane holds "
                f"{int(sizes[lane])} bytes")
        if kind == _BAD_STATE:
            raise CorruptDataError(f"lane {lane}: ends in state {used}, not 0")
        raise CorruptDataError(f"lane {lane}: non-zero padding bits after its {used} bits")
    return out.view(dtype) if native == dtype else out.astype(dtype)


def check_out(out: np.ndarray, count: int, dtype: np.dtype) -> None:
    """``out`` must be what decode writes: checked before a kernel touches it."""
    from ..errors import DecoderArgumentError
    if (not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != (count,)
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise DecoderArgumentError(
            f"out= must be a writable contiguous {dtype} array of shape ({count},), got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")


# -- encoder ---------------------------------------------------------------

@numba.njit(**_NJIT)
def _symbol_index(v, raw_bits, width, first_symbol):
    """Index into the counts of the symbol of value bits ``v`` (int64)."""
    return ((((v << 1) | (v >> (width - 1))) & ((1 << width) - 1)) >> raw_bits) - first_symbol


@numba.njit(**_NJIT)
def _first_bad_symbol(bits, first, end, params, raw_bits, width, first_symbol):
    """Index of the first value in [first, end) whose symbol has no count."""
    for i in range(first, end):
        s = _symbol_index(np.int64(bits[i]), raw_bits, width, first_symbol)
        if s < 0 or s >= params.size or params[s] == 0:
            return i
    return end


@numba.njit(**_NJIT)
def _encode_scalar_steps(bits, first, x, params, next_state, fields, top, steps, lanes,
                         table_log, raw_bits, width, first_symbol):
    """Encode steps top, top - 1, ..., top - steps + 1 of lanes 0..lanes-1
    of the group at value ``first``, as _encode_steps does. Returns 0, or 1
    at a symbol with no count."""
    size = 1 << table_log
    for step in range(top, top - steps, -1):
        base = first + step * LANES
        for lane in range(lanes):
            s = _symbol_index(np.int64(bits[base + lane]), raw_bits, width, first_symbol)
            if s < 0 or s >= params.size:
                return 1
            p = np.int64(params[s])
            if p == 0:
                return 1
            xl = np.int64(x[lane])
            nbits = ((p >> _P_NBITS_SHIFT) & 15) - (xl < (p & _P_THRESHOLD_MASK))
            fields[(step + 1) * LANES + lane] = (xl & ((1 << nbits) - 1)) | (nbits << 16)
            x[lane] = next_state[(p >> _P_DELTA_SHIFT) - size + (xl >> nbits)]
    return 0


# Arguments shared by the encoding kernels:
#   bits         uint8/16/32[count]  the values of these groups
#   params, next_state  from encode_table()
#   payload      uint8[]   receives the lanes back to back; room for the
#                          worst case plus 8 bytes
#   lane_sizes   uint16[32*groups] out
#   raw          uint8[ceil(count*raw_bits/8)] out: the packed raw fields
#   fields       uint32[(lane_symbols+1)*32] scratch: field k of lane l (in
#                          stream order) at k*32 + l, as value | nbits << 16
#   x            uint32[32]  each lane's encoder state, in [L, 2L)
# The kernels return the payload bytes written, or -1 - i when value i's
# symbol has no count.


@numba.njit(**_NJIT)
def _write_lanes(x, fields, full_steps, partial, table_log, payload, out_byte, lane_sizes):
    """Write the 32 lanes of a group (their fields in ``fields``, their
    final states in ``x``) from payload byte ``out_byte`` on; returns the
    byte after them."""
    size = 1 << table_log
    for lane in range(LANES):
        steps = full_steps + (1 if lane < partial else 0)
        start = out_byte
        if steps:
            fields[lane] = (np.int64(x[lane]) - size) | (table_log << 16)
            acc = 0
            nacc = 0
            for k in range(steps + 1):
                f = np.int64(fields[k * LANES + lane])
                acc |= (f & 0xFFFF) << nacc
                nacc += f >> 16
                _store_u64(payload, out_byte, acc)
                whole = nacc >> 3
                out_byte += whole
                acc >>= whole * 8
                nacc &= 7
            if nacc:        # the partial last byte is stored already, zero-padded
                out_byte += 1
        lane_sizes[lane] = out_byte - start
    return out_byte


@numba.njit(**_NJIT)
def _pack_raw(bits, first, end, raw_bits, width, raw, packer):
    """Append the raw fields of bits[first:end] to ``raw``; ``packer`` is
    int64[3]: next byte, bit accumulator, bits in it."""
    raw_mask = (1 << raw_bits) - 1
    raw_byte, acc, acc_bits = packer[0], packer[1], packer[2]
    for i in range(first, end):
        v = np.int64(bits[i])
        acc |= (((v << 1) | (v >> (width - 1))) & raw_mask) << acc_bits
        acc_bits += raw_bits
        if acc_bits >= 32:
            _store_u32(raw, raw_byte, acc)
            raw_byte += 4
            acc >>= 32
            acc_bits -= 32
    packer[0], packer[1], packer[2] = raw_byte, acc, acc_bits


@numba.njit(**_NJIT)
def _flush_raw(raw, packer):
    """Whole bytes at a group's end; a zero-padded one at the tensor's."""
    raw_byte, acc, acc_bits = packer[0], packer[1], packer[2]
    while acc_bits > 0:
        raw[raw_byte] = acc & 0xFF
        acc >>= 8
        raw_byte += 1
        acc_bits -= 8


@numba.njit(**_NJIT)
def _encode_groups(bits, count, lane_symbols, table_log, raw_bits, width, first_symbol,
                   params, next_state, payload, lane_sizes, raw, fields):
    """Encode whole groups (see above for the arguments)."""
    group = LANES * lane_symbols
    x = np.empty(LANES, np.uint32)
    packer = np.zeros(3, np.int64)
    out_byte = 0
    for g in range((count + group - 1) // group):
        first = g * group
        left = count - first
        full_steps = min(lane_symbols, left // LANES)
        partial = left - full_steps * LANES if left < group else 0
        x[:] = 1 << table_log
        # Backwards, as the decoder reads forwards: its partial last step first.
        if (_encode_scalar_steps(bits, first, x, params, next_state, fields, full_steps,
                                 1 if partial else 0, partial, table_log, raw_bits, width,
                                 first_symbol)
                or _encode_scalar_steps(bits, first, x, params, next_state, fields,
                                        full_steps - 1, full_steps, LANES, table_log,
                                        raw_bits, width, first_symbol)):
            return -1 - _first_bad_symbol(bits, first, first + min(left, group), params,
                                          raw_bits, width, first_symbol)
        out_byte = _write_lanes(x, fields, full_steps, partial, table_log, payload, out_byte,
                                lane_sizes[g * LANES: (g + 1) * LANES])
        if raw_bits:
            _pack_raw(bits, first, first + min(left, group), raw_bits, width, raw, packer)
    _flush_raw(raw, packer)
    return out_byte


@numba.njit(**_NJIT)
def _encode_groups_simd(bits, count, lane_symbols, table_log, raw_bits, width, first_symbol,
                        params, next_state, payload, lane_sizes, raw, fields):
    """_encode_groups with the full steps done by _encode_steps."""
    group = LANES * lane_symbols
    x = np.empty(LANES, np.uint32)
    packer = np.zeros(3, np.int64)
    out_byte = 0
    for g in range((count + group - 1) // group):
        first = g * group
        left = count - first
        full_steps = min(lane_symbols, left // LANES)
        partial = left - full_steps * LANES if left < group else 0
        x[:] = 1 << table_log
        if (_encode_scalar_steps(bits, first, x, params, next_state, fields, full_steps,
                                 1 if partial else 0, partial, table_log, raw_bits, width,
                                 first_symbol)
                or (full_steps and _encode_steps(bits, first, x, params, next_state, fields,
                                                 full_steps, table_log, raw_bits, width,
                                                 first_symbol))):
            return -1 - _first_bad_symbol(bits, first, first + min(left, group), params,
                                          raw_bits, width, first_symbol)
        out_byte = _write_lanes(x, fields, full_steps, partial, table_log, payload, out_byte,
                                lane_sizes[g * LANES: (g + 1) * LANES])
        if raw_bits:
            _pack_raw(bits, first, first + min(left, group), raw_bits, width, raw, packer)
    _flush_raw(raw, packer)
    return out_byte


def encode(bits: np.ndarray, geometry_args: dict, counts: np.ndarray, workers: int = 1):
    """Encode the values ``bits`` (unsigned ints of the value width) with the
    given parameters. Returns (lane_sizes u16, payload u8, raw u8)."""
    width = int(geometry_args["width"])
    symbol_bits = int(geometry_args["symbol_bits"])
    table_log = int(geometry_args["table_log"])
    first_symbol = int(geometry_args["first_symbol"])
    K = int(geometry_args["lane_symbols"])
    if width not in (8, 16, 32):
        raise ValueError(f"width {width} is not 8, 16 or 32")
    if not 1 <= symbol_bits <= min(width, tans.MAX_SYMBOL_BITS):
        raise ValueError(
            f"symbol_bits {symbol_bits} is outside 1..{min(width, tans.MAX_SYMBOL_BITS)}")
    if not tans.MIN_TABLE_LOG <= table_log <= tans.MAX_TABLE_LOG:
        raise ValueError(
            f"table_log {table_log} is outside {tans.MIN_TABLE_LOG}..{tans.MAX_TABLE_LOG}")
    if not 1 <= K <= MAX_LANE_SYMBOLS:
        raise ValueError(f"lane_symbols {K} is outside 1..{MAX_LANE_SYMBOLS}")
    if first_symbol < 0:
        raise ValueError(f"first_symbol {first_symbol} is negative")
    bits = np.ascontiguousarray(bits).reshape(-1)
    if bits.dtype.itemsize * 8 != width:
        raise ValueError(f"{bits.dtype} values are not {width} bits wide")
    storage = np.dtype(f"u{width // 8}")
    bits = bits.view(storage) if bits.dtype.isnative else bits.astype(storage)
    params, next_state = encode_table(counts, table_log)

    n = bits.size
    raw_bits = width - symbol_bits
    group = LANES * K
    groups = -(-n // group)
    lane_sizes = np.zeros(groups * LANES, dtype=np.uint16)
    raw = np.empty((n * raw_bits + 7) // 8, dtype=np.uint8)
    lane_bytes = (table_log * (K + 1) + 7) // 8      # the most a lane can take

    def run(job):
        g0, g1 = job
        block = bits[g0 * group: min(g1 * group, n)]
        payload = np.empty((g1 - g0) * LANES * lane_bytes + _LOAD_BYTES, dtype=np.uint8)
        fields = np.empty(LANES * (K + 1), dtype=np.uint32)
        written = _call(_encode_groups_simd, _encode_groups,
                        block, block.size, K, table_log, raw_bits, width, first_symbol, params,
                        next_state, payload, lane_sizes[g0 * LANES: g1 * LANES],
                        raw[g0 * group * raw_bits // 8:], fields)
        if written < 0:
            i = g0 * group - 1 - written
            raise ValueError(f"value {i} (bits {int(bits[i]):#x}) has a symbol outside the "
                             f"coded alphabet (first_symbol {first_symbol}, {len(counts)} counts)")
        return payload[:written]

    workers = resolve_workers(workers)
    parts = _run(_split(groups, group, workers), run, workers)
    payload = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    return lane_sizes, payload, raw


# -- histogram -------------------------------------------------------------------

@numba.njit(**_NJIT)
def _histogram(bits, width, top_bits, out):
    # Counts of the top ``top_bits`` of each sign-rotated value; four
    # interleaved sub-histograms so repeated symbols do not serialise on
    # one counter's store-to-load dependency.
    n = bits.size
    size = out.size // 4
    rot = width - 1
    shift = width - top_bits
    mask = (1 << width) - 1
    i = 0
    while i + 4 <= n:
        for k in range(4):
            v = np.int64(bits[i + k])
            out[k * size + ((((v << 1) | (v >> rot)) & mask) >> shift)] += 1
        i += 4
    while i < n:
        v = np.int64(bits[i])
        out[((((v << 1) | (v >> rot)) & mask) >> shift)] += 1
        i += 1


def histogram(bits: np.ndarray, width: int, top_bits: int, workers: int = 1) -> np.ndarray:
    """Counts (int64[2**top_bits]) of the top ``top_bits`` bits of each
    sign-rotated value, as numpy_ref.histogram."""
    bits = np.ascontiguousarray(bits).reshape(-1)
    if bits.dtype.itemsize * 8 != width or not 1 <= top_bits <= width:
        raise ValueError(f"{bits.dtype} values are not {width} bits wide, or top_bits "
                         f"{top_bits} is outside 1..{width}")
    bits = bits.view(np.dtype(f"u{width // 8}"))
    workers = resolve_workers(workers)
    chunk = max(_MIN_VALUES_PER_JOB, -(-bits.size // workers))
    jobs = [(a, min(a + chunk, bits.size)) for a in range(0, bits.size, chunk)]

    def run(job):
        out = np.zeros(4 << top_bits, dtype=np.int64)
        _histogram(bits[job[0]:job[1]], width, top_bits, out)
        return out.reshape(4, -1).sum(axis=0)

    parts = _run(jobs, run, workers)
    return np.sum(parts, axis=0) if parts else np.zeros(1 << top_bits, dtype=np.int64)
