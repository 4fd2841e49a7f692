"""Codec ``tans``: the top bits of each sign-rotated value tANS-coded in
independent lanes, the rest stored as bit fields (docs/FORMAT.md sections
3 to 5). Its blob: counts, lane sizes, payload, raw fields, each section
8-byte aligned. Groups of 32 lanes are independent, so a range of groups
decodes on its own: the unit of streamed and partial decoding."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..dtypes import FLOAT_LAYOUTS
from ..errors import FormatError
from . import tans
from .base import Codec, Opened
from .layout import LANES, MAX_LANE_SYMBOLS, CodedGeometry, pad8, unpack_lane_sizes
from .registry import register

FIELDS = ("symbol_bits", "table_log", "first_symbol", "table_symbols", "lane_symbols",
          "payload_bytes")
# Format 2's fields, each optional (absent: 0, format 1's mapping; a writer
# leaves a 0 out), and the width of a stored lane size (absent: 16). Format 1
# files MUST NOT hold them.
MAPPING_FIELDS = ("sign_in_symbol", "dropped_bits", "dropped_value")
FORMAT_2_FIELDS = MAPPING_FIELDS + ("lane_size_bits",)


@dataclasses.dataclass(frozen=True)
class TansParts:
    counts: np.ndarray          # <u2[table_symbols]
    lane_sizes: np.ndarray      # uint16[lanes], unpacked (2 bytes a lane: the one part kept whole)


class TansCodec(Codec):
    codec_id = "tans"

    def format_version(self, fields: dict) -> int:
        return 2 if any(key in fields for key in FORMAT_2_FIELDS) else 1

    def parse(self, fields, dtype, shape, nbytes, blob_bytes, bad) -> CodedGeometry:
        if not set(FIELDS) <= set(fields) <= set(FIELDS + FORMAT_2_FIELDS):
            names = ["codec", *FIELDS, "xxh3"]
            raise bad(f"codec tans needs exactly the fields {names} (and, in format 2, any "
                      f"of {list(FORMAT_2_FIELDS)}), found {sorted([*fields, 'codec', 'xxh3'])}")
        for key in fields:
            if type(fields[key]) is not int:
                raise bad(f"'{key}' must be an integer, found {fields[key]!r}")
        layout = FLOAT_LAYOUTS.get(dtype)
        if layout is None:
            raise bad(f"codec tans is not defined for dtype {dtype}")
        mapping = {key: fields.get(key, 0) for key in MAPPING_FIELDS}
        dropped = mapping["dropped_bits"]
        if not 0 <= dropped <= layout.mantissa_bits:
            raise bad(f"'dropped_bits' = {dropped} is outside [0, {layout.mantissa_bits}]")
        if not 0 <= mapping["dropped_value"] < 1 << dropped:
            raise bad(f"'dropped_value' = {mapping['dropped_value']} does not fit in its "
                      f"{dropped} dropped bits")
        coded = layout.width - dropped
        if not 1 <= fields["symbol_bits"] <= tans.MAX_SYMBOL_BITS:     # before 1 << symbol_bits
            raise bad(f"'symbol_bits' = {fields['symbol_bits']} is outside "
                      f"[1, {min(coded - mapping['sign_in_symbol'], tans.MAX_SYMBOL_BITS)}]")
        limits = {
            "sign_in_symbol": (0, 1),
            "symbol_bits": (1, min(coded - mapping["sign_in_symbol"], tans.MAX_SYMBOL_BITS)),
            "table_log": (tans.MIN_TABLE_LOG, tans.MAX_TABLE_LOG),
            "lane_symbols": (1, MAX_LANE_SYMBOLS),
            "table_symbols": (1, 1 << fields["symbol_bits"]),
            "first_symbol": (0, (1 << tans.MAX_SYMBOL_BITS) - 1),
            "payload_bytes": (0, 1 << 62),
        }
        for key, (lo, hi) in limits.items():
            value = fields.get(key, 0)
            if not lo <= value <= hi:
                raise bad(f"'{key}' = {value} is outside [{lo}, {hi}]")
        first, table_symbols = fields["first_symbol"], fields["table_symbols"]
        if first + table_symbols > 1 << fields["symbol_bits"]:
            raise bad(f"symbols {first}..{first + table_symbols - 1} do not fit in "
                      f"{fields['symbol_bits']} bits")
        count = int(np.prod(shape, dtype=object)) if shape else 1
        g = CodedGeometry(count=count, width=layout.width,
                          **{key: fields[key] for key in FIELDS}, **mapping,
                          lane_size_bits=fields.get("lane_size_bits", 16))
        least = g.longest_lane.bit_length()
        if not least <= g.lane_size_bits <= 16:
            raise bad(f"'lane_size_bits' = {g.lane_size_bits} is outside [{least}, 16] (a lane "
                      f"of {g.lane_symbols} symbols takes up to {g.longest_lane} bytes)")
        longest = g.lanes * g.longest_lane
        if g.payload_bytes > longest:
            raise bad(f"payload_bytes {g.payload_bytes} exceeds the most {longest} that "
                      f"{g.lanes} lanes can hold")
        if blob_bytes != g.blob_bytes:
            raise bad(f"blob is {blob_bytes} bytes but its parameters need {g.blob_bytes}")
        return g

    def params(self, g: CodedGeometry) -> dict:
        params = {key: getattr(g, key) for key in FIELDS}
        params.update((key, value) for key, value in g.mapping().items() if value)
        if g.lane_size_bits != 16:
            params["lane_size_bits"] = g.lane_size_bits
        return params

    def open(self, g: CodedGeometry, read, where: str) -> Opened:
        sec = g.sections()
        gaps = [read(off + length, pad8(off + length) - off - length)
                for off, length in (sec[k] for k in ("counts", "lane_sizes", "payload", "raw"))]
        if any(gap.any() for gap in gaps):
            raise FormatError(f"{where}: non-zero padding between blob sections")
        counts = read(*sec["counts"]).view("<u2")
        total = int(counts.sum(dtype=np.int64))
        if total != 1 << g.table_log:
            raise FormatError(f"{where}: symbol counts add up to {total}, expected "
                              f"2^{g.table_log} = {1 << g.table_log}")
        # 32 lanes a group: the packed sizes always end on a byte boundary.
        lane_sizes = unpack_lane_sizes(read(*sec["lane_sizes"]), g.lanes, g.lane_size_bits)
        total = int(lane_sizes.sum(dtype=np.int64))
        if total != g.payload_bytes:
            raise FormatError(f"{where}: lane sizes add up to {total} bytes but payload_bytes "
                              f"is {g.payload_bytes}")
        longest = g.longest_lane
        if lane_sizes.size and int(lane_sizes.max()) > longest:
            lane = int(np.argmax(lane_sizes))
            raise FormatError(f"{where}: lane {lane} claims {int(lane_sizes[lane])} bytes; a "
                              f"lane of {g.lane_symbols} symbols holds at most {longest}")
        spare = (-g.count * g.raw_bits) % 8
        if spare and sec["raw"][1]:
            last = read(sec["raw"][0] + sec["raw"][1] - 1, 1)
            if int(last[0]) >> (8 - spare):
                raise FormatError(f"{where}: non-zero unused bits at the end of the raw section")
        return Opened(g, TansParts(counts, lane_sizes))

    def decode_steps(self, opened, dtype, read, buffer, *, backend, workers, step_bytes):
        g, parts = opened.layout, opened.parts
        yield from self.decode_groups(g, parts, dtype, read, buffer, 0, g.groups,
                                      backend=backend, workers=workers, step_bytes=step_bytes)

    def decode_groups(self, g: CodedGeometry, parts: TansParts, dtype: str, read, buffer,
                      g0: int, g1: int, *, backend, workers: int, step_bytes: int):
        """Values ``[g0·32K, min(g1·32K, n))``' original bytes, a step at a
        time. Groups are independent: their lanes are contiguous in the
        payload and their raw fields in the raw section, which start on a
        byte boundary since a group holds a multiple of 8 values; so a range
        of groups is a smaller coded tensor of the same parameters, which the
        back end decodes with its usual checks."""
        storage = FLOAT_LAYOUTS[dtype].storage
        sec = g.sections()
        group = LANES * g.lane_symbols
        step = max(1, -(-step_bytes // (group * storage.itemsize)))     # groups a step
        p1 = int(parts.lane_sizes[:LANES * g0].sum(dtype=np.int64))     # lane g0's first byte
        for a in range(g0, g1, step):
            b = min(a + step, g1)
            v0, v1 = a * group, min(b * group, g.count)
            p0, p1 = p1, p1 + int(parts.lane_sizes[LANES * a:LANES * b].sum(dtype=np.int64))
            r0, r1 = v0 * g.raw_bits // 8, (v1 * g.raw_bits + 7) // 8
            payload = read(sec["payload"][0] + p0, p1 - p0, out=buffer(p1 - p0, "payload"))
            raw = read(sec["raw"][0] + r0, r1 - r0, out=buffer(r1 - r0, "raw"))
            out = buffer((v1 - v0) * storage.itemsize).view(storage.newbyteorder("="))
            part = dataclasses.replace(g, count=v1 - v0, payload_bytes=p1 - p0)
            backend.decode(part, parts.counts, parts.lane_sizes[LANES * a:LANES * b], payload, raw,
                        storage, workers=workers, out=out)
            yield out.view(np.uint8)


TANS = register(TansCodec())
