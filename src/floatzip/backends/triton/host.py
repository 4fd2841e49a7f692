"""Coded tensors made ready for the device on the host: the checks the
kernel relies on, each tensor's decode table in the kernel's layout, its
payload and raw fields as int32 words with zero slack after them, and the
torch side of its output (device, dtype, views).

Nothing here launches a kernel; ``block.py`` uploads these buffers and
decodes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...codecs import tans
from ...codecs.words import symbol_part
from ...codecs.encoded import CODEC_RAW, CODEC_TANS, EncodedTensor
from ...codecs.layout import MAX_LANE_SYMBOLS, CodedGeometry
from ...dtypes import FLOAT_LAYOUTS, ITEMSIZE, torch_dtypes
from ...errors import DecoderArgumentError, FormatError, UnsupportedError
from .builds import interpreting
from .kernel import FIFO_AHEAD, PAYLOAD_PREFETCH_WORDS

TORCH_DTYPES = torch_dtypes()       # safetensors dtype -> torch.dtype
# Zero words after a tensor's raw fields: the second word of the two-word
# read of the last field. Rows past a lane's last symbol are not loaded.
RAW_SLACK_WORDS = 1
# Largest tensor the kernel indexes with 32-bit value offsets.
MAX_COUNT = 2**31 - 2**20


def resolve_device(device) -> torch.device:
    """The torch device a decoder runs on: a CUDA device (with its index),
    or the CPU under TRITON_INTERPRET=1; UnsupportedError for anything else."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedError(
                "the Triton decoder needs a CUDA GPU and torch sees none; decode on the CPU "
                "with backend='numba' or 'numpy' instead")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev
    if dev.type == "cpu" and interpreting():
        return dev
    raise UnsupportedError(
        f"the Triton decoder runs on CUDA devices, not on {dev}"
        + ("" if dev.type != "cpu" else
           " (device='cpu' works only under TRITON_INTERPRET=1, for tests)"))


def output_dtype(dtype: str) -> torch.dtype:
    """The torch dtype a decoded tensor of safetensors ``dtype`` comes out
    as: uint8 bytes when torch has none."""
    return TORCH_DTYPES.get(dtype, torch.uint8)


def typed_view(data: torch.Tensor, dtype: str, shape) -> torch.Tensor:
    """Bytes as the tensor they hold; flat bytes for dtypes torch lacks."""
    if dtype not in TORCH_DTYPES:
        return data
    return data.view(TORCH_DTYPES[dtype]).view(shape)


def check_output(out, device, dtype, numel, label) -> None:
    """``out`` must be a contiguous tensor of ``numel`` elements of ``dtype``
    on ``device``: what a decode into it writes."""
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


def words(data: np.ndarray, slack_words: int) -> np.ndarray:
    """Bytes -> int32 words (little-endian), zero-padded to whole words plus
    ``slack_words`` zero words, so that two-word reads never leave the buffer."""
    nbytes = data.size
    out = np.zeros((nbytes + 3) // 4 + slack_words, dtype=np.int32)
    out.view(np.uint8)[:nbytes] = data
    return out


def check_encoded(enc: EncodedTensor, label: str) -> None:
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
    need(g.sign_in_symbol in (0, 1), "geometry.sign_in_symbol", "0 or 1", g.sign_in_symbol)
    need(0 <= g.dropped_bits <= layout.mantissa_bits, "geometry.dropped_bits",
         f"0..{layout.mantissa_bits}", g.dropped_bits)
    need(0 <= g.dropped_value < 1 << g.dropped_bits, "geometry.dropped_value",
         f"0..{(1 << g.dropped_bits) - 1}", g.dropped_value)
    top = min(g.coded_bits - g.sign_in_symbol, tans.MAX_SYMBOL_BITS)
    need(layout.exponent_bits <= g.symbol_bits <= top, "geometry.symbol_bits",
         f"{layout.exponent_bits}..{top}", g.symbol_bits)
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
class CodedParts:
    """A tans tensor's device-ready buffers (torch tensors, same device)."""
    table: torch.Tensor         # int32[2**table_log]
    lane_bits: torch.Tensor     # int64[lanes + 1], bit offsets from the payload's first word
    payload: torch.Tensor       # int32 words, zero slack after
    raw: torch.Tensor           # int32 words, zero slack after


def decode_table(enc: EncodedTensor, label: str) -> np.ndarray:
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


def device_table(table: np.ndarray, g: CodedGeometry) -> np.ndarray:
    """The decode table in the kernel's layout (int32 per slot): bits 28-31
    nbits, bits 12-27 the bits the symbol puts in its value
    (codecs.words.symbol_part; FP32: its top 16 bits; the low 16 are 0
    because an FP32 symbol of at most 12 bits lies above bit 19), bits
    0-11 the next state's base. The kernel ORs in the rotated raw field, so
    a step spends no instructions placing the symbol; nbits on top is one
    shift, and for 8- and 16-bit values ``entry >> 12`` is the value part
    (the store's truncation drops nbits)."""
    t = table.astype(np.int64)
    base = t & tans.ENTRY_BASE_MASK
    nbits = (t >> tans.ENTRY_NBITS_SHIFT) & 0xF
    value = symbol_part(t >> tans.ENTRY_SYMBOL_SHIFT, g)
    if g.width == 32:
        assert not np.any(value & 0xFFFF), "FP32 symbols lie in the top 16 bits"
        value >>= 16
    assert g.table_log <= 12 and not np.any(value >> 16)
    return ((nbits << 28) | (value << 12) | base).astype(np.uint32).view(np.int32)


def payload_slack_words(g: CodedGeometry) -> int:
    """Zero words after a tensor's payload: as far as a lane may read past
    the payload's end, corrupt or not."""
    # A corrupt lane can read table_log + 12 * lane_symbols bits past its start
    # (12 bits per step at most) before the end-of-lane check rejects it, and
    # holds the two words after the one its position is in (hi and the
    # look-ahead word): from a start at the payload's end that reaches word
    # (12 * (lane_symbols + 1)) // 32 + 2 of the slack, its last word.
    # test_worst_lane_stays_inside_the_buffers runs that lane.
    # A staged build copies words up to FIFO_AHEAD past the look-ahead
    # word; a prefetching build prefetches PAYLOAD_PREFETCH_WORDS past it
    # (a prefetch never faults, but it stays inside too).
    return (tans.MAX_TABLE_LOG * (g.lane_symbols + 1)) // 32 + 3 \
        + max(FIFO_AHEAD.value, PAYLOAD_PREFETCH_WORDS.value)


def host_parts(enc: EncodedTensor, label: str) -> CodedParts:
    """The buffers of a checked tans tensor, ready to upload."""
    g = enc.geometry
    table = device_table(decode_table(enc, label), g)
    sizes = np.asarray(enc.lane_sizes).astype(np.int64)
    lane_bits = np.concatenate(([0], np.cumsum(sizes))) * 8
    payload = words(np.asarray(enc.payload, dtype=np.uint8), payload_slack_words(g))
    raw = words(np.asarray(enc.raw, dtype=np.uint8), RAW_SLACK_WORDS)
    return CodedParts(torch.from_numpy(table.copy()), torch.from_numpy(lane_bits),
                      torch.from_numpy(payload), torch.from_numpy(raw))
