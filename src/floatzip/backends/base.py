"""The contract every coding back end keeps.

A back end is a module (numpy_ref, numba, triton) with these attributes. The
NumPy reference defines what each function computes; every other back end
produces the same bytes (tests/test_conformance.py runs one suite over all
of them). Only ``floatzip.backends.select`` picks one.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..codecs.layout import CodedGeometry


@runtime_checkable
class Backend(Protocol):
    name: str                   # what ``backend=`` and $FLOATZIP_BACKEND call it
    can_encode: bool            # False: decode only (histogram and encode raise)

    def devices(self) -> frozenset[str]:
        """Device types it decodes on here ("cpu", "cuda")."""

    def histogram(self, bits: np.ndarray, width: int, top_bits: int,
                  workers: int = 1) -> np.ndarray:
        """Counts (int64[2**top_bits]) of the top ``top_bits`` bits of each
        sign-rotated value of ``bits`` (unsigned ints of ``width`` bits)."""

    def encode(self, bits: np.ndarray, geometry_args: dict, counts: np.ndarray,
               workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The lane sizes (uint16), payload (uint8) and packed raw fields
        (uint8) of ``bits`` coded with ``geometry_args`` (width, symbol_bits,
        table_log, first_symbol, lane_symbols) and the normalized ``counts``."""

    def decode(self, geometry: CodedGeometry, counts: np.ndarray, lane_sizes: np.ndarray,
               payload: np.ndarray, raw: np.ndarray, dtype, workers: int = 1,
               out: np.ndarray | None = None) -> np.ndarray:
        """Inverse of encode: the values' bits (``dtype``, flat), into
        ``out`` (``geometry.count`` native values of that dtype) when given.
        The container has validated every size and the counts; stream
        content may still be corrupt, and then the back end raises
        CorruptDataError, never reading or writing out of bounds."""
