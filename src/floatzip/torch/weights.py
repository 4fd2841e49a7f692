"""What a weight decoded on the fly is between uses, and how it is swapped.

Between uses a deferred parameter is a :class:`CompressedWeight` placeholder
(on the meta device, no data) that raises if anything computes with it
outside its module's forward. While its unit runs, the runtime swaps the
decoded tensor in as ``torch.utils.swap_tensors`` swaps (see
:func:`swap_contents`), which keeps each Parameter object: tied weights (the
same Parameter in two modules) stay tied, and any other reference to a
parameter sees the decoded tensor while its unit runs.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from ..errors import FloatzipError


class CompressedWeight(nn.Parameter):
    """What a deferred parameter is between uses: shape, dtype and device
    metadata (so ``model.dtype``, ``num_parameters()`` and friends work), no
    data, and an error for any computation. A plain meta tensor would not
    do: torch computes ``F.linear(cpu_input, meta_weight)`` into an
    uninitialised CPU tensor without a word."""

    _allowed = None

    @classmethod
    def _allowed_functions(cls):
        if cls._allowed is None:
            T = torch.Tensor
            cls._allowed = {
                T.shape.__get__, T.dtype.__get__, T.device.__get__, T.ndim.__get__,
                T.layout.__get__, T.is_meta.__get__, T.is_cuda.__get__, T.nbytes.__get__,
                T.itemsize.__get__, T.requires_grad.__get__, T.requires_grad.__set__,
                T.requires_grad_, T.is_floating_point, T.is_complex, T.numel, T.dim, T.size,
                T.element_size, T.__repr__, T.__format__, T.detach, T.data.__get__,
            }
        return cls._allowed

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls._allowed_functions():
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        weight = next((a for a in args if isinstance(a, CompressedWeight)), None)
        name = weight.__dict__.get("_floatzip_name", "a weight") if weight is not None else "a weight"
        raise FloatzipError(
            f"floatzip: {name} is kept compressed and decoded only while its module runs, but "
            f"{getattr(func, '__name__', func)} used it outside that module's forward; load the "
            "model with decode='at_load' to use its weights freely")


def placeholder(param: nn.Parameter, name: str) -> CompressedWeight:
    """A :class:`CompressedWeight` with ``param``'s shape and dtype, which
    names itself ``name`` in its error."""
    ph = torch.Tensor._make_subclass(
        CompressedWeight, torch.empty(param.shape, dtype=param.dtype, device="meta"), False)
    ph.__dict__["_floatzip_name"] = name
    return ph


_swap_tensor_impl = getattr(torch._C, "_swap_tensor_impl", None)


def swap_contents(a: torch.Tensor, b: torch.Tensor) -> None:
    """What ``torch.utils.swap_tensors(a, b)`` does (class, ``__dict__`` and
    tensor swapped, each Python object kept), without its Python-level checks
    when they would pass: every unit's forward swaps each of its parameters
    twice, and torch's function costs ~2 us a swap (a Llama block's hooks
    took 45 us with it, 16 without: benchmarks/results/hooks_cpu.md). The
    checks guard against other C++ references to either tensor (autograd's
    saved tensors) and against weak references: when there are any, torch's
    own function runs and raises or poisons as it does. Our two classes share
    their (empty) slots."""
    if (_swap_tensor_impl is None or a._use_count() != 1 or b._use_count() != 1
            or weakref.getweakrefs(a) or weakref.getweakrefs(b)):
        torch.utils.swap_tensors(a, b)
        return
    a.__class__, b.__class__ = b.__class__, a.__class__
    a.__dict__, b.__dict__ = b.__dict__, a.__dict__
    _swap_tensor_impl(a, b)
