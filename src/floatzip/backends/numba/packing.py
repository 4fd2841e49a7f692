"""Bit layouts and limits that the tables, the kernels and the LLVM
intrinsics of the numba back end share.

They live apart so that each of those modules reads them from one place.
numba compiles them into the kernels as constants, and its on-disk cache
stamps a kernel with its own file only: after editing this file, delete
this package's ``__pycache__`` (or the cached kernels keep the old values).
"""
from __future__ import annotations

# Options of every kernel: compiled once per machine and kept on disk, and
# run without the GIL so that threads decode in parallel.
NJIT = {"cache": True, "nogil": True}

# A bit read is one unaligned 8-byte load (4 in the SIMD kernels) from the
# field's first byte: enough for a stream field (<= 12 bits at a bit offset
# <= 7) and for a raw field (<= 31 bits; <= 25 where the SIMD decoder is used).
LOAD_BYTES = 8
RAW_SLACK = 2 * LOAD_BYTES

# Packed decoding-table entry (our own layout, not the tans module's):
#   bits  0..11  base      next state = base + (nbits bits from the stream)
#   bits 12..15  nbits
#   bits 16..31  the symbol's part of the output word, >> out_shift
E_NBITS_SHIFT = 12
E_OUT_SHIFT = 16

# Packed encoding parameters of one symbol, uint32 (0: a symbol with count 0):
#   bits  0..13  threshold  states below it emit nbits0 - 1 bits, the rest nbits0
#   bits 14..17  nbits0
#   bits 18..31  cumulative - count + 2**table_log  (kept non-negative)
# so that encoding s from state x emits nbits = nbits0 - (x < threshold) low
# bits of x and goes to next_state[delta - 2**table_log + (x >> nbits)].
P_THRESHOLD_MASK = 0x3FFF
P_NBITS_SHIFT = 14
P_DELTA_SHIFT = 18
