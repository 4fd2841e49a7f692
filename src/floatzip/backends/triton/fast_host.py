"""The fast in-memory code (docs/FAST_CODE.md) on the device: a FastTensor
checked, its arrays uploaded as torch tensors in the kernel's types, and
decoded there by fast_kernel's kernel into a BF16 tensor.

``DeviceFastTensor(ft, device, name=None)``
    One validated FastTensor on ``device`` (a CUDA device, or the CPU under
    TRITON_INTERPRET=1): the palette as ``exponent << 7`` per code (int16),
    the code planes and sm bytes (uint8), esc_start (int32), esc_pos (int16,
    a uint16's bits) and esc_exp (uint8). ``.decode(out=None)`` runs one
    launch (one program a tile) into ``out`` (a contiguous bfloat16 tensor
    of ``count`` elements on the device, any shape, 16-byte aligned) or a
    new flat one, and returns it; it does not wait for the device.
``decode_fast(ft, out=None, device=None)``
    The same, once: upload, launch, the output tensor.

An invalid FastTensor is refused (CorruptDataError naming the field) and a
wrong ``out`` (DecoderArgumentError) before anything is uploaded or launched.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ...codecs import fast_code
from ...errors import DecoderArgumentError, UnsupportedError
from .builds import interpreting
from .fast_kernel import MAX_COUNT, NUM_WARPS, kernel_constants, launchable
from .host import check_output, resolve_device


def _upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A device copy of a (read-only) array; never a view of its memory.
    At least one element, so an empty list still has an address."""
    if array.size == 0:
        array = np.zeros(1, dtype=array.dtype)
    with warnings.catch_warnings():
        # from_numpy warns on read-only arrays; the copy below never writes them.
        warnings.simplefilter("ignore", UserWarning)
        host = torch.from_numpy(array)
    return host.to(device, copy=True)


class DeviceFastTensor:
    """A FastTensor in device memory, still in the fast code; see the module
    docstring."""

    def __init__(self, ft: fast_code.FastTensor, device, name: str | None = None):
        where = f"fast code of {name!r}" if name else "fast code"
        if not isinstance(ft, fast_code.FastTensor):
            raise DecoderArgumentError(f"{where}: expected a FastTensor, not {type(ft).__name__}")
        ft.validate(where)
        if ft.count > MAX_COUNT:
            raise UnsupportedError(f"{where}: {ft.count} weights; the GPU decoder handles at "
                                   f"most {MAX_COUNT} per tensor, split the tensor")
        self.device = resolve_device(device)
        self.name = name
        self.count = int(ft.count)
        self.bits = ft.bits
        self.table = _upload(ft.palette.astype(np.int16) << 7, self.device)
        self.codes = _upload(ft.codes, self.device)
        self.sm = _upload(ft.sm, self.device)
        self.esc_start = _upload(ft.esc_start.view(np.int32), self.device)
        self.esc_pos = _upload(ft.esc_pos.view(np.int16), self.device)
        self.esc_exp = _upload(ft.esc_exp, self.device)

    @property
    def tiles(self) -> int:
        return fast_code.tiles(self.count)

    @property
    def nbytes(self) -> int:
        """Device memory the code holds."""
        bufs = (self.table, self.codes, self.sm, self.esc_start, self.esc_pos, self.esc_exp)
        return sum(t.numel() * t.element_size() for t in bufs)

    def new_output(self) -> torch.Tensor:
        return torch.empty(self.count, dtype=torch.bfloat16, device=self.device)

    def check_out(self, out) -> None:
        check_output(out, self.device, torch.bfloat16, self.count, self.name)
        # The kernel stores 8 bytes at a time (4 weights) from the tensor's start.
        if out.data_ptr() % 16:
            raise DecoderArgumentError("output must start on a 16-byte boundary; allocate it "
                                       "with new_output() or torch.empty")

    def decode(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The BF16 weights (flat), decoded by one launch; see the module docstring."""
        if out is None:
            out = self.new_output()
        else:
            self.check_out(out)
        if self.count == 0:
            return out
        if self.device.type == "cpu" and not interpreting():
            # TRITON_INTERPRET is read at launch: the device was accepted under it.
            raise UnsupportedError("the Triton decoder runs on the CPU only under "
                                   "TRITON_INTERPRET=1")
        kernel = launchable(interpreting())
        kernel[(self.tiles,)](self.table, self.codes, self.sm, self.esc_start, self.esc_pos,
                              self.esc_exp, out.view(-1).view(torch.int16), self.count,
                              **kernel_constants(self.bits), num_warps=NUM_WARPS)
        return out


def default_device(out=None) -> torch.device:
    """Where a decode runs when its caller does not say: ``out``'s device,
    else the current CUDA device, else the CPU under TRITON_INTERPRET=1."""
    if isinstance(out, torch.Tensor):
        return out.device
    if torch.cuda.is_available() or not interpreting():
        return torch.device("cuda")
    return torch.device("cpu")


def decode_fast(ft: fast_code.FastTensor, out: torch.Tensor | None = None,
                device=None) -> torch.Tensor:
    """The BF16 weights (a flat bfloat16 tensor of ``ft.count``) of a fast
    code, decoded on ``device`` (default: ``out``'s, else CUDA, else the CPU
    under TRITON_INTERPRET=1), into ``out`` when given. Validates ``ft`` and
    ``out`` before it uploads or launches anything; does not wait for the
    device."""
    fast_code.check_tensor(ft)
    device = resolve_device(default_device(out) if device is None else device)
    if out is not None:
        check_output(out, device, torch.bfloat16, ft.count, None)
        if out.data_ptr() % 16:
            raise DecoderArgumentError("output must start on a 16-byte boundary; allocate it "
                                       "with torch.empty")
    return DeviceFastTensor(ft, device).decode(out)
