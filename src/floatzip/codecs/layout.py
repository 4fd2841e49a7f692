"""Geometry of a coded tensor: symbols, raw bits, lanes and groups.

A tensor of ``n`` values becomes (codecs/words.py maps a value to its two
parts, docs/FORMAT.md section 4)
  * ``n`` symbols of ``symbol_bits``: exponent, top mantissa bits and, in
    format 2 where ``sign_in_symbol``, the sign; tANS-coded;
  * ``n`` raw fields: the remaining ``width - dropped_bits - symbol_bits``
    bits, bit-packed (format 2 leaves out ``dropped_bits`` low mantissa bits
    that hold the same value, ``dropped_value``, in every value).

The symbols are cut into groups of ``LANES * lane_symbols``. Inside a group,
symbol ``i`` belongs to lane ``i % LANES`` as that lane's ``i // LANES``-th
symbol, and each lane is an independent tANS stream. A GPU warp decodes one
group with one lane per thread, and consecutive threads then write
consecutive outputs (coalesced); a CPU core decodes the 32 lanes of a group
interleaved, which hides the latency of each lane's serial dependency.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LANES = 32
MAX_LANE_SYMBOLS = 4096     # keeps every lane below 2**16 bytes (u16 sizes)


def pad8(nbytes: int) -> int:
    return (nbytes + 7) & ~7


@dataclass(frozen=True)
class CodedGeometry:
    """Everything about a tans-coded tensor that the header determines."""
    count: int              # number of values
    width: int              # bits per value
    symbol_bits: int
    table_log: int
    first_symbol: int
    table_symbols: int      # length of the counts array
    lane_symbols: int
    payload_bytes: int
    # Format 2 (all 0: format 1's mapping).
    sign_in_symbol: int = 0     # 1: the sign is the symbol's lowest bit, not the raw field's
    dropped_bits: int = 0       # low mantissa bits not stored ...
    dropped_value: int = 0      # ... because every value holds these in them
    lane_size_bits: int = 16    # bits of each stored lane size (format 1: u16)

    @property
    def longest_lane(self) -> int:
        return longest_lane(self.table_log, self.lane_symbols)

    @property
    def lane_sizes_bytes(self) -> int:
        return (self.lanes * self.lane_size_bits + 7) // 8

    @property
    def coded_bits(self) -> int:
        """Bits of a value that are stored: symbol and raw field."""
        return self.width - self.dropped_bits

    @property
    def raw_bits(self) -> int:
        return self.coded_bits - self.symbol_bits

    @property
    def groups(self) -> int:
        return -(-self.count // (LANES * self.lane_symbols))

    @property
    def lanes(self) -> int:
        return self.groups * LANES

    @property
    def raw_bytes(self) -> int:
        return (self.count * self.raw_bits + 7) // 8

    def sections(self) -> dict[str, tuple[int, int]]:
        """Section name -> (offset, length) inside the tensor's blob. Each
        section starts on an 8-byte boundary; the gaps are zero bytes."""
        out = {}
        offset = 0
        for name, length in (
            ("counts", 2 * self.table_symbols),
            ("lane_sizes", self.lane_sizes_bytes),
            ("payload", self.payload_bytes),
            ("raw", self.raw_bytes),
        ):
            out[name] = (offset, length)
            offset = pad8(offset + length)
        out["end"] = (offset, 0)
        return out

    @property
    def blob_bytes(self) -> int:
        return self.sections()["end"][0]

    def encode_args(self) -> dict:
        """What a back end's encode takes of the geometry (backends/base.py)."""
        return dict(width=self.width, symbol_bits=self.symbol_bits, table_log=self.table_log,
                    first_symbol=self.first_symbol, lane_symbols=self.lane_symbols,
                    **self.mapping())

    def mapping(self) -> dict:
        """The fields of the value -> (symbol, raw) mapping format 2 adds."""
        return dict(sign_in_symbol=self.sign_in_symbol, dropped_bits=self.dropped_bits,
                    dropped_value=self.dropped_value)


def longest_lane(table_log: int, lane_symbols: int) -> int:
    """The most bytes a lane of ``lane_symbols`` symbols can take: its
    initial state and at most ``table_log`` bits a symbol."""
    return (table_log * (lane_symbols + 1) + 7) // 8


def lane_size_bits_for(table_log: int, lane_symbols: int) -> int:
    """The fewest bits that hold any lane's size: what format 2 writers
    store each lane size in (11 for 1024 symbols and a 4096-entry table)."""
    return longest_lane(table_log, lane_symbols).bit_length()


def pack_lane_sizes(sizes: np.ndarray, bits: int) -> np.ndarray:
    """Lane sizes as ``bits``-bit fields, lane 0 first, LSB-first (uint8).
    A size that does not fit is a bug of the caller's, never masked."""
    sizes = np.asarray(sizes, dtype=np.uint16)
    if sizes.size and int(sizes.max()) >> bits:
        raise ValueError(f"a lane size of {int(sizes.max())} bytes does not fit in {bits} bits")
    if bits == 16:
        return sizes.astype("<u2").view(np.uint8)
    planes = ((sizes[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_lane_sizes(data: np.ndarray, lanes: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_lane_sizes` (uint16[lanes])."""
    data = np.asarray(data, dtype=np.uint8)
    if bits == 16:
        return data.view("<u2").astype(np.uint16)
    # A field of <= 15 bits at bit offset <= 7 lies in the 3 bytes from its first.
    padded = np.concatenate((data, np.zeros(3, np.uint8))).astype(np.uint32)
    position = np.arange(lanes, dtype=np.int64) * bits
    byte = position >> 3
    window = padded[byte] | (padded[byte + 1] << 8) | (padded[byte + 2] << 16)
    return ((window >> (position & 7).astype(np.uint32)) & ((1 << bits) - 1)).astype(np.uint16)


def lane_symbol_counts(count: int, lane_symbols: int) -> np.ndarray:
    """Number of symbols in each lane (int64[lanes]); only the last group
    can hold lanes with fewer than ``lane_symbols`` (possibly 0)."""
    group = LANES * lane_symbols
    groups = -(-count // group)
    counts = np.full(groups * LANES, lane_symbols, dtype=np.int64)
    if groups:
        left = count - (groups - 1) * group
        lane = np.arange(LANES)
        counts[-LANES:] = np.maximum(0, (left - lane + LANES - 1) // LANES)
    return counts


def lane_order(count: int, lane_symbols: int) -> np.ndarray:
    """Index of the value behind (lane, step), as int64[lanes, lane_symbols];
    positions past the end of the tensor hold ``count`` (one past the end)."""
    group = LANES * lane_symbols
    groups = -(-count // group)
    idx = np.arange(groups * group, dtype=np.int64).reshape(groups, lane_symbols, LANES)
    idx = idx.transpose(0, 2, 1).reshape(groups * LANES, lane_symbols)
    return np.minimum(idx, count)
