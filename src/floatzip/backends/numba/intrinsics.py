"""The numba back end's pieces written in LLVM IR (numba ``@intrinsic``).

Two kinds:

* unaligned 4- and 8-byte loads and stores into uint8 arrays
  (:func:`load_u64`, :func:`store_u64`, :func:`store_u32`): one instruction
  where numba would read or write byte by byte;
* the vector steps of the SIMD kernels (:func:`decode_steps`,
  :func:`encode_steps`): one step of all 32 lanes as a handful of vector
  operations around gathers. They are written here because numba's
  auto-vectorizer cannot prove the gathers safe.

None of them checks bounds: their callers (decoder.py, encoder.py) size the
buffers so that every access is inside them. Kernels in other modules
compile this code into themselves, and numba's on-disk cache stamps a
kernel with its own file only: after editing this file, delete this
package's ``__pycache__`` (or the cached kernels keep the old code).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ...codecs.layout import LANES
from .packing import (
    E_NBITS_SHIFT,
    E_OUT_SHIFT,
    P_DELTA_SHIFT,
    P_NBITS_SHIFT,
    P_THRESHOLD_MASK,
)

_I8P = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V = ir.VectorType(_I32, LANES)          # one i32 per lane


def _array_pointer(context, builder, arrty, value):
    return context.make_array(arrty)(context, builder, value).data


@intrinsic
def load_u64(typingctx, buf, index):
    """8 bytes of a uint8 array from ``index`` on, as a little-endian uint64.
    No bounds check: the caller guarantees index + 8 <= buf.size."""
    def codegen(context, builder, signature, args):
        data = _array_pointer(context, builder, signature.args[0], args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(data, [idx]), _I64.as_pointer())
        return builder.load(ptr, align=1)
    return types.uint64(buf, index), codegen


@intrinsic
def store_u64(typingctx, buf, index, value):
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
def store_u32(typingctx, buf, index, value):
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
def decode_steps(typingctx, table, payload, group_byte, state, pos, raw, raw_byte, raw_offset,
                 raw_shift, out, out_index, steps, raw_bits, width, out_shift, sign_in_raw,
                 dropped_bits, dropped_value):
    """Decode ``steps`` steps of all 32 lanes of a group with vector ops.

    table        uint32[]  packed entries; every next state indexes inside it
    payload      uint8[]   the group's lanes start at byte ``group_byte``
    state, pos   uint32[32] in/out: each lane's state and bit position
                           (counted from ``group_byte``)
    raw          uint8[]   the group's raw fields start at byte ``raw_byte``
    raw_offset, raw_shift  uint32[32]: lane l's raw field in a step is at
                           byte raw_offset[l], bit raw_shift[l] of the step
    out          uint8/16/32[]  step k of lane l goes to out_index + 32 k + l
    sign_in_raw, dropped_bits, dropped_value  how a value is put together,
                           as decoder._decode_scalar_steps does
    No bounds checks: every read must be in bounds (see decoder.decode()).
    """
    def codegen(context, builder, sig, args):
        (table_a, payload_a, group_byte_v, state_a, pos_a, raw_a, raw_byte_v, raw_offset_a,
         raw_shift_a, out_a, out_index_v, steps_v, raw_bits_v, width_v, out_shift_v,
         sign_in_raw_v, dropped_bits_v, dropped_value_v) = args

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
        sign_in_raw = _splat(builder, builder.trunc(i64(15, sign_in_raw_v), _I32))
        dropped_bits = _splat(builder, builder.trunc(i64(16, dropped_bits_v), _I32))
        dropped_value = _splat(builder, builder.trunc(i64(17, dropped_value_v), _I32))
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
            nbits = builder.and_(builder.lshr(entry, c(E_NBITS_SHIFT)), c(15))
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
                builder.or_(builder.shl(builder.lshr(entry, c(E_OUT_SHIFT)), out_shift),
                            dropped_value),
                builder.or_(builder.shl(builder.lshr(raw_field, sign_in_raw), dropped_bits),
                            builder.shl(builder.and_(raw_field, sign_in_raw), sign_shift)))
            if out_vec.element.width < 32:
                value = builder.trunc(value, out_vec)
            dst = builder.gep(out_p, [builder.mul(k, ir.Constant(_I64, LANES))])
            builder.store(value, builder.bitcast(dst, out_vec.as_pointer()), align=1)
        builder.store(builder.load(state_slot), vec_pointer(3, state_a), align=4)
        builder.store(builder.load(pos_slot), vec_pointer(4, pos_a), align=4)
        return context.get_dummy_value()

    return types.none(table, payload, group_byte, state, pos, raw, raw_byte, raw_offset,
                      raw_shift, out, out_index, steps, raw_bits, width, out_shift, sign_in_raw,
                      dropped_bits, dropped_value), codegen


@intrinsic
def encode_steps(typingctx, bits, first, x, params, next_state, fields, steps, table_log,
                 raw_bits, width, first_symbol):
    """Encode steps steps-1, ..., 1, 0 of all 32 lanes of the group whose
    first value is bits[first], with vector ops; as
    encoder._encode_scalar_steps does.

    x            uint32[32] in/out: each lane's encoder state, in [L, 2L)
    params       uint32[symbols]  see packing.P_*
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
            nbits = builder.sub(builder.and_(builder.lshr(p, c(P_NBITS_SHIFT)), c(15)),
                                builder.zext(builder.icmp_unsigned(
                                    "<", x, builder.and_(p, c(P_THRESHOLD_MASK))), _V))
            field = builder.or_(builder.and_(x, builder.sub(builder.shl(c(1), nbits), c(1))),
                                builder.shl(nbits, c(16)))
            dst = builder.gep(fields_p, [builder.mul(builder.add(step, ir.Constant(_I64, 1)),
                                                     ir.Constant(_I64, LANES))])
            builder.store(field, builder.bitcast(dst, _V.as_pointer()), align=4)
            index = builder.add(builder.add(builder.lshr(p, c(P_DELTA_SHIFT)), minus_size),
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
