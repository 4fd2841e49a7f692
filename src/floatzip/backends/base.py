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
    can_encode: bool            # False: decode only (statistics and encode raise)

    def devices(self) -> frozenset[str]:
        """Device types it decodes on here ("cpu", "cuda")."""

    def statistics(self, bits: np.ndarray, width: int, top_bits: int,
                   workers: int = 1) -> tuple[np.ndarray, int]:
        """(counts, varying) of ``bits`` (unsigned ints of ``width`` bits):
        counts (int64[2**(top_bits+1)]) of each value's top ``top_bits``
        bits below the sign, with the sign, at ``top << 1 | sign``; varying,
        the OR of every value XOR the first (numpy_ref.statistics)."""

    def encode(self, bits: np.ndarray, geometry_args: dict, counts: np.ndarray,
               workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The lane sizes (uint16), payload (uint8) and packed raw fields
        (uint8) of ``bits`` coded with ``geometry_args``
        (CodedGeometry.encode_args) and the normalized ``counts``."""

    def decode(self, geometry: CodedGeometry, counts: np.ndarray, lane_sizes: np.ndarray,
               payload: np.ndarray, raw: np.ndarray, dtype, workers: int = 1,
               out: np.ndarray | None = None) -> np.ndarray:
        """Inverse of encode: the values' bits (``dtype``, flat), into
        ``out`` (``geometry.count`` native values of that dtype) when given.
        The container has validated every size and the counts; stream
        content may still be corrupt, and then the back end raises
        CorruptDataError, never reading or writing out of bounds."""


@runtime_checkable
class FastCodeBackend(Protocol):
    """What a back end that also runs the fast in-memory code
    (codecs/fast_code.py, docs/FAST_CODE.md) has besides :class:`Backend`.
    Optional: :func:`floatzip.backends.select_fast_code` falls back to the
    NumPy reference for a CPU back end without it. Both produce the bytes of
    the reference, ``codecs.fast_code.encode`` and ``decode``."""

    def fast_encode(self, values: np.ndarray, bits: int | None = None,
                    palette: np.ndarray | None = None):
        """The FastTensor of BF16 ``values`` (uint16 bit patterns)."""

    def fast_decode(self, ft, out: np.ndarray | None = None, workers: int = 1) -> np.ndarray:
        """The BF16 bit patterns of a validated FastTensor, into ``out``
        (uint16[count], or uint8 of twice that) when given."""
