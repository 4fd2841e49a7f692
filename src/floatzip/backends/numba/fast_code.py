"""The fast in-memory code (codecs/fast_code.py, docs/FAST_CODE.md) with
numba: the encoder that transcodes at load and the decoder that runs before
every use of a weight.

The decoder's inner step turns 32 weights into 64 output bytes with a
handful of AVX2 operations (:func:`_step32`, written in LLVM IR: numba's
auto-vectorizer does not turn a 16-entry table lookup into ``vpshufb``):
load 32 bytes of each plane and shift them to the step's field, look the
codes up in the palette split in two byte tables (the output's low byte
takes the exponent's lowest bit, the high byte the other seven), OR in the
sign and mantissa byte, interleave. After each tile of 4096 weights (8 KB,
still in L1) its escapes are patched. A scalar kernel does the same work
where the CPU lacks AVX2, and decodes the last, partial group everywhere.

Arguments are checked in Python before a kernel sees them: the FastTensor
by its ``validate`` (which remembers success, as its arrays are read-only),
the output's size and type on every call. The kernels release the GIL; tiles
are split over threads (``threads.run_jobs``). numba's cache stamps a
kernel with this file only.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ...codecs import fast_code as spec
from ...errors import DecoderArgumentError
from . import dispatch
from .threads import run_jobs

_I8 = ir.IntType(8)
_I64 = ir.IntType(64)
_V8 = ir.VectorType(_I8, 32)
_V4x64 = ir.VectorType(_I64, 4)
# Interleave two <32 x i8> (low bytes, high bytes) into 32 little-endian uint16.
_INTERLEAVE = ir.Constant(ir.VectorType(ir.IntType(32), 64),
                          [i // 2 + (32 if i % 2 else 0) for i in range(64)])


def _pointer(context, builder, arrty, value):
    return context.make_array(arrty)(context, builder, value).data


def _splat8(builder, value):
    v = builder.insert_element(ir.Constant(_V8, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, ir.Constant(_V8, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), 32), [0] * 32))


def _table(builder, lo, hi):
    """A 16-byte table (two uint64) repeated in both 128-bit halves, as
    vpshufb looks up within each half."""
    v = ir.Constant(_V4x64, ir.Undefined)
    for i, part in enumerate((lo, hi, lo, hi)):
        v = builder.insert_element(v, part, ir.Constant(ir.IntType(32), i))
    return builder.bitcast(v, _V8)


@intrinsic
def _step32(typingctx, codes, a_at, a_shift, a_mask, b_at, b_shift, b_mask, sm, sm_at,
            lo0, lo1, hi0, hi1, out, out_at):
    """Decode 32 weights with AVX2 vector operations.

    codes   uint8[]  plane A's 32 bytes at a_at, plane B's at b_at
    a_*     field of plane A: (byte >> a_shift) & a_mask is the code's low bits
    b_*     field of plane B: ((byte >> b_shift) & b_mask) << 2 its bit 2
            (b_mask = 0 where the code has one plane)
    sm      uint8[]  the 32 sign-mantissa bytes at sm_at
    lo0,lo1 uint64: code -> (exponent & 1) << 7, a 16-byte table
    hi0,hi1 uint64: code -> exponent >> 1
    out     uint8[]  the 64 output bytes at out_at
    No bounds checks: the caller guarantees every access is inside."""
    def codegen(context, builder, sig, args):
        (codes_a, a_at_v, a_shift_v, a_mask_v, b_at_v, b_shift_v, b_mask_v, sm_a, sm_at_v,
         lo0_v, lo1_v, hi0_v, hi1_v, out_a, out_at_v) = args
        st = sig.args

        def load32(arr_i, at_i):
            base = _pointer(context, builder, st[arr_i], args[arr_i])
            idx = context.cast(builder, args[at_i], st[at_i], types.intp)
            ptr = builder.bitcast(builder.gep(base, [idx]), _V8.as_pointer())
            return builder.load(ptr, align=1)

        def byte(i):
            return builder.trunc(context.cast(builder, args[i], st[i], types.uint64), _I8)

        def u64(i):
            return context.cast(builder, args[i], st[i], types.uint64)

        a = builder.and_(builder.lshr(load32(0, 1), _splat8(builder, byte(2))),
                         _splat8(builder, byte(3)))
        b = builder.and_(builder.lshr(load32(0, 4), _splat8(builder, byte(5))),
                         _splat8(builder, byte(6)))
        code = builder.or_(a, builder.shl(b, ir.Constant(_V8, [2] * 32)))
        pshufb = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V8, [_V8, _V8]), "llvm.x86.avx2.pshuf.b")
        s = load32(7, 8)
        low = builder.or_(builder.call(pshufb, [_table(builder, u64(9), u64(10)), code]),
                          builder.and_(s, ir.Constant(_V8, [0x7F] * 32)))
        high = builder.or_(builder.call(pshufb, [_table(builder, u64(11), u64(12)), code]),
                           builder.and_(s, ir.Constant(_V8, [0x80] * 32)))
        both = builder.shuffle_vector(low, high, _INTERLEAVE)
        base = _pointer(context, builder, st[13], args[13])
        idx = context.cast(builder, args[14], st[14], types.intp)
        ptr = builder.bitcast(builder.gep(base, [idx]), ir.VectorType(_I8, 64).as_pointer())
        builder.store(both, ptr, align=1)
        return context.get_dummy_value()
    return types.none(codes, a_at, a_shift, a_mask, b_at, b_shift, b_mask, sm, sm_at,
                      lo0, lo1, hi0, hi1, out, out_at), codegen


# -- the decoder ---------------------------------------------------------------------

@njit(nogil=True, cache=True)
def _code_of(codes, bits, i):
    """Code of weight i (scalar): docs/FAST_CODE.md, section 2."""
    g, r = i // 256, i % 256
    base = g * 32 * bits
    if bits == 4:
        return (codes[base + r % 128] >> (4 * (r // 128))) & 15
    c = (codes[base + r % 64] >> (2 * (r // 64))) & 3
    if bits == 3:
        c |= ((codes[base + 64 + r % 32] >> (r // 32)) & 1) << 2
    return c


@njit(nogil=True, cache=True)
def _scalar_weights(codes, sm, palette, bits, out, i0, i1):
    """Weights i0..i1-1, one at a time, without escapes."""
    for i in range(i0, i1):
        e = palette[_code_of(codes, bits, i)]
        s = sm[i]
        out[2 * i] = ((e & 1) << 7) | (s & 0x7F)
        out[2 * i + 1] = (e >> 1) | (s & 0x80)


@njit(nogil=True, cache=True)
def _patch(esc_start, esc_pos, esc_exp, out, t):
    """Tile t's escapes: the exponent bits of each escaped weight replaced."""
    for k in range(esc_start[t], esc_start[t + 1]):
        i = t * 4096 + np.int64(esc_pos[k])
        e = esc_exp[k]
        out[2 * i] = (out[2 * i] & 0x7F) | ((e & 1) << 7)
        out[2 * i + 1] = (out[2 * i + 1] & 0x80) | (e >> 1)


@njit(nogil=True, cache=True)
def _decode_scalar(codes, sm, palette, bits, esc_start, esc_pos, esc_exp, out, n, t0, t1):
    for t in range(t0, t1):
        _scalar_weights(codes, sm, palette, bits, out, t * 4096, min(n, (t + 1) * 4096))
        _patch(esc_start, esc_pos, esc_exp, out, t)


@njit(nogil=True, cache=True)
def _decode_simd(codes, sm, palette, bits, tables, esc_start, esc_pos, esc_exp, out, n, t0, t1):
    lo0, lo1, hi0, hi1 = tables[0], tables[1], tables[2], tables[3]
    full = n // 256                                 # whole groups
    wa = 4 if bits == 4 else 2                      # plane A's field width
    a_mask = 15 if bits == 4 else 3
    b_mask = 1 if bits == 3 else 0
    for t in range(t0, t1):
        for g in range(t * 16, min(full, (t + 1) * 16)):
            cb = g * 32 * bits
            b_at = cb + 64 if bits == 3 else cb
            for q in range(8):                      # step q: weights 32q .. 32q + 31
                i = g * 256 + 32 * q
                _step32(codes, cb + 32 * (q % wa), wa * (q // wa), a_mask,
                        b_at, q, b_mask, sm, i, lo0, lo1, hi0, hi1, out, 2 * i)
        end = min(n, (t + 1) * 4096)
        if full * 256 < end:                        # the last, partial group
            _scalar_weights(codes, sm, palette, bits, out, full * 256, end)
        _patch(esc_start, esc_pos, esc_exp, out, t)


def lookup_tables(palette: np.ndarray) -> np.ndarray:
    """uint64[4]: the palette as _step32's two 16-byte tables."""
    lo = np.zeros(16, dtype=np.uint8)
    hi = np.zeros(16, dtype=np.uint8)
    lo[:palette.size] = (palette & 1) << 7
    hi[:palette.size] = palette >> 1
    return np.concatenate([lo, hi]).view("<u8").astype(np.uint64)


# Tiles per thread below which handing work to a thread costs more than it saves.
MIN_TILES_PER_JOB = 64


def decode(ft: spec.FastTensor, out: np.ndarray | None = None, workers: int = 1) -> np.ndarray:
    """The BF16 bit patterns of a validated FastTensor (uint16[count]), into
    ``out`` (uint16, or uint8 of twice the count) when given; the same bytes
    as codecs.fast_code.decode. Validates ``ft`` first (once: see
    FastTensor.validate)."""
    spec.check_tensor(ft)
    out16 = spec.check_out(ft, out)
    n = ft.count
    if n == 0:
        return out16 if out is None else out
    out8 = out16.view(np.uint8)
    ntiles = spec.tiles(n)
    parts = max(1, min(workers, ntiles // MIN_TILES_PER_JOB))
    cuts = [ntiles * i // parts for i in range(parts + 1)]
    jobs = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    common = (ft.codes, ft.sm, ft.palette, ft.bits)
    escapes = (ft.esc_start, ft.esc_pos, ft.esc_exp, out8, n)
    if dispatch.use_simd:
        tables = lookup_tables(ft.palette)

        def run(job):
            dispatch.call_kernel(_decode_simd, _decode_scalar_with_tables,
                                 *common, tables, *escapes, *job)
    else:
        def run(job):
            _decode_scalar(*common, *escapes, *job)
    run_jobs(jobs, run, workers)
    return out16 if out is None else out


def _decode_scalar_with_tables(codes, sm, palette, bits, tables, *rest):
    """The scalar kernel with the SIMD one's arguments (dispatch's fallback)."""
    _decode_scalar(codes, sm, palette, bits, *rest)


# -- the encoder ---------------------------------------------------------------------

@njit(nogil=True, cache=True)
def _histogram(values, counts):
    """counts[e] += weights of exponent e (NumPy's bincount would first
    widen the exponents to int64: 8 bytes a weight, at load)."""
    for i in range(values.size):
        counts[(values[i] >> 7) & 0xFF] += 1


@njit(nogil=True, cache=True)
def _split(values, table, sm, per_tile):
    """Sign-mantissa bytes of every weight, and the escape count of each tile."""
    for i in range(values.size):
        v = values[i]
        sm[i] = ((v >> 8) & 0x80) | (v & 0x7F)
        if table[(v >> 7) & 0xFF] == 0xFF:
            per_tile[i // 4096] += 1


@njit(nogil=True, cache=True)
def _pack(table, values, bits, n, codes, esc_pos, esc_exp):
    """The code planes of each group and the escapes of each tile."""
    per_group = 32 * bits
    k = 0
    for g in range(codes.size // per_group):
        base = g * per_group
        for r in range(256):
            i = g * 256 + r
            c = 0
            if i < n:
                c = table[(values[i] >> 7) & 0xFF]
                if c == 0xFF:
                    esc_pos[k] = i % 4096
                    esc_exp[k] = (values[i] >> 7) & 0xFF
                    k += 1
                    c = 0
            if bits == 4:
                codes[base + r % 128] |= c << (4 * (r // 128))
            else:
                codes[base + r % 64] |= (c & 3) << (2 * (r // 64))
                if bits == 3:
                    codes[base + 64 + r % 32] |= (c >> 2) << (r // 32)


def encode(values: np.ndarray, bits: int | None = None,
           palette: np.ndarray | None = None) -> spec.FastTensor:
    """codecs.fast_code.encode, compiled: the same FastTensor, byte for byte."""
    values = spec.check_values(values)
    n = values.size
    if bits is None or palette is None:
        counts = np.zeros(256, dtype=np.int64)
        _histogram(values, counts)
        bits, palette = spec.choose(counts, n)
    palette = np.asarray(palette, dtype=np.uint8)
    spec.plane_widths(bits)
    if palette.shape != (1 << bits,) or np.unique(palette).size != palette.size:
        raise DecoderArgumentError(f"fast code: a {bits}-bit palette needs {1 << bits} distinct "
                                   f"exponents, got {palette.tolist()}")
    ntiles = spec.tiles(n)
    table = spec.code_table(palette)
    sm = np.empty(n, dtype=np.uint8)
    per_tile = np.zeros(ntiles, dtype=np.int64)
    _split(values, table, sm, per_tile)
    esc_start = np.zeros(ntiles + 1, dtype=np.uint32)
    np.cumsum(per_tile, out=esc_start[1:])
    escapes = int(esc_start[-1])
    codes = np.zeros(spec.groups(n) * spec.group_code_bytes(bits), dtype=np.uint8)
    esc_pos = np.empty(escapes, dtype=np.uint16)
    esc_exp = np.empty(escapes, dtype=np.uint8)
    _pack(table, values, bits, n, codes, esc_pos, esc_exp)
    ft = spec.FastTensor(n, bits, palette.copy(), codes, sm, esc_start, esc_pos, esc_exp)
    for a in (ft.palette, ft.codes, ft.sm, ft.esc_start, ft.esc_pos, ft.esc_exp):
        a.flags.writeable = False
    return ft
