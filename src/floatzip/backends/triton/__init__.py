"""The Triton back end: coded tensors stay compressed in device memory and
are decoded there, all tensors of a transformer block in one launch.

It keeps the contract of :class:`floatzip.backends.base.Backend` as a
decode-only back end (``can_encode`` False: ``statistics`` and ``encode``
raise UnsupportedError naming 'numba' and 'numpy'), on CUDA devices, and on
the CPU under TRITON_INTERPRET=1 (Triton's interpreter: for tests, not
speed). :func:`decode` takes numpy and gives numpy, and synchronises: it is
for tests and tools. The torch integration decodes on the device with
:class:`DeviceCodedTensor` and :class:`DeviceBlockDecoder`, which it reaches
as attributes of the module ``floatzip.backends.select("triton", ...)``
returns.

Modules, each importing only those above it:

``kernel``        the @triton.jit decode kernel and the constants its code reads
``builds``        which build of the kernel runs (KernelBuild, resolve_build), its
                  launch arguments, and the same builds compiled without a GPU
``host``          the host side of a coded tensor: checks, decode tables in the
                  kernel's layout, word buffers with slack, devices and dtypes
``graph_launch``  a launch replayed as a CUDA graph
``block``         DeviceCodedTensor and DeviceBlockDecoder (see its docstring)
"""
from __future__ import annotations

import numpy as np
import torch

from ...codecs.encoded import CODEC_TANS, EncodedTensor
from ...codecs.layout import CodedGeometry
from ...dtypes import FLOAT_LAYOUTS
from ...errors import CorruptDataError, DecoderArgumentError, UnsupportedError
from .block import LAUNCHES, DeviceBlockDecoder, DeviceCodedTensor, default_launch
from .builds import (
    AUTO_PREFETCH,
    CUDA_BUILD,
    INTERPRETER_BUILD,
    PREFETCHES,
    RAW_AHEAD,
    STAGINGS,
    TABLE_MEMORIES,
    KernelBuild,
    interpreting,
    resolve_build,
)
from .host import TORCH_DTYPES

__all__ = [
    "AUTO_PREFETCH", "CUDA_BUILD", "INTERPRETER_BUILD", "LAUNCHES", "PREFETCHES", "RAW_AHEAD",
    "STAGINGS", "TABLE_MEMORIES", "TORCH_DTYPES", "DeviceBlockDecoder", "DeviceCodedTensor",
    "KernelBuild", "can_encode", "decode", "default_launch", "devices", "encode", "statistics",
    "interpreting", "name", "resolve_build",
]

name = "triton"
can_encode = False


def devices() -> frozenset[str]:
    """CUDA; and the CPU under TRITON_INTERPRET=1 (Triton's interpreter: for
    tests, not speed)."""
    return frozenset({"cuda", "cpu"}) if interpreting() else frozenset({"cuda"})


def encode(bits, geometry_args, counts, workers: int = 1):
    raise UnsupportedError("the triton back end only decodes; encode with 'numba' or 'numpy'")


def statistics(bits, width, top_bits, workers: int = 1):
    raise UnsupportedError("the triton back end only decodes; encode with 'numba' or 'numpy'")


def decode(geometry: CodedGeometry, counts: np.ndarray, lane_sizes: np.ndarray,
           payload: np.ndarray, raw: np.ndarray, dtype, workers: int = 1,
           out: np.ndarray | None = None) -> np.ndarray:
    """Same contract as numpy_ref.decode, computed on the default CUDA
    device (or, under TRITON_INTERPRET=1 without one, on the CPU), into
    ``out`` when given (``geometry.count`` native values of ``dtype``).
    One launch, then a wait for the device; ``workers`` is not used."""
    if out is not None:
        _check_host_out(out, geometry.count, np.dtype(dtype).newbyteorder("="))
    layouts = [lay for lay in FLOAT_LAYOUTS.values() if lay.width == geometry.width]
    # Decoding depends on the width alone; the narrowest exponent accepts
    # every symbol_bits an encoder of that width can choose.
    layout = min(layouts, key=lambda lay: lay.exponent_bits) if layouts else None
    if layout is None:
        raise UnsupportedError(f"no float layout of width {geometry.width}")
    device = "cpu" if interpreting() and not torch.cuda.is_available() else "cuda"
    enc = EncodedTensor(layout.name, (geometry.count,), CODEC_TANS, 0, geometry,
                        np.asarray(counts), np.asarray(lane_sizes), np.asarray(payload),
                        np.asarray(raw))
    coded = DeviceCodedTensor(enc, device)
    decoded = coded.decode().view(torch.uint8)         # one direct launch
    try:
        coded.check()
    except CorruptDataError:
        # The kernel only counts the lanes that went wrong; the reference
        # names the first and what is wrong with it (same error, a precise
        # message). Only damaged input pays for this.
        from .. import numpy_ref
        numpy_ref.decode(geometry, counts, lane_sizes, payload, raw, dtype)
        raise
    if out is None:
        return decoded.cpu().numpy().view(np.dtype(dtype))
    torch.from_numpy(out.view(np.uint8)).copy_(decoded)
    return out


def _check_host_out(out, count: int, dtype: np.dtype) -> None:
    """``out=`` must be what decode writes, as every back end requires."""
    if (not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != (count,)
            or not out.flags.c_contiguous or not out.flags.writeable):
        raise DecoderArgumentError(
            f"out= must be a writable contiguous {dtype} array of shape ({count},), got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")

# The fast in-memory code's GPU decoder (docs/FAST_CODE.md, "The GPU decoder").
from .fast_host import DeviceFastTensor, decode_fast  # noqa: E402

__all__ += ["DeviceFastTensor", "decode_fast"]
