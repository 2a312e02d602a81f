"""Model inputs and batches of any structure: a tensor, a tuple or list of them, or a dict (keyword inputs).

Everything in nas_prune that runs a model (channel groups, pruning, costs, latency, training, scoring,
export) takes its inputs in the form ``torch.export`` and ModelOpt's ``dummy_input`` take them:

* a tensor ``x`` -> ``model(x)``;
* a tuple or list ``(x, y)`` -> ``model(x, y)``;
* a dict ``{"image": x, "mask": m}`` -> ``model(image=x, mask=m)``.

A *batch* (what a data loader yields) may nest the same containers deeper; these helpers walk it.

Example:
    >>> inputs = {"image": torch.zeros(2, 3, 8, 8), "scale": torch.ones(2)}
    >>> batch_size(inputs), call_model(model, to_device(inputs, "cpu"))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "as_call_args",
    "batch_size",
    "call_model",
    "channels_last",
    "detach_cpu",
    "map_tensors",
    "randomized",
    "resize_batch",
    "tensors",
    "to_device",
    "zeros_batch",
]


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (tuples, lists and dicts walked, others kept)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple keeps its type
        return type(obj)(*(map_tensors(fn, v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    return obj


def tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj``, in order."""
    found: list[torch.Tensor] = []
    map_tensors(found.append, obj)
    return found


def to_device(obj: Any, device: str | torch.device, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor on ``device``."""
    device = torch.device(device)
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), obj)


def detach_cpu(obj: Any) -> Any:
    """``obj`` with every tensor detached and on the CPU (to save or compare)."""
    return map_tensors(lambda t: t.detach().cpu(), obj)


def channels_last(obj: Any) -> Any:
    """``obj`` with every 4-D tensor in channels-last layout (what a channels-last conv net reads fastest)."""
    return map_tensors(lambda t: t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t, obj)


def batch_size(obj: Any) -> int:
    """The batch size of ``obj``: the first dimension of its first tensor (0 when it has none)."""
    for tensor in tensors(obj):
        return int(tensor.shape[0]) if tensor.ndim else 1
    return 0


def resize_batch(inputs: Any, size: int) -> Any:
    """``inputs`` with every tensor's first dimension made ``size``: the first rows repeated or cut.

    Only shapes matter where this is used (latency, tracing), so repeating rows is enough.
    """

    def resize(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0 or t.shape[0] == size:
            return t
        reps = -(-size // max(1, t.shape[0]))
        return t.repeat(reps, *([1] * (t.ndim - 1)))[:size].contiguous()

    return map_tensors(resize, inputs)


def zeros_batch(inputs: Any, size: int, float_dtype: torch.dtype | None = None) -> Any:
    """``inputs`` as zeros on the CPU with batch ``size``, dtypes kept (floating ones made ``float_dtype``
    if given): where only structure and shapes matter (tracing, a file to rebuild a model from)."""

    def zeros(t: torch.Tensor) -> torch.Tensor:
        dtype = float_dtype if float_dtype is not None and t.is_floating_point() else t.dtype
        return torch.zeros((size, *t.shape[1:]) if t.ndim else (), dtype=dtype)

    return map_tensors(zeros, inputs)


def randomized(inputs: Any, generator: torch.Generator | None = None) -> Any:
    """``inputs`` with every floating tensor drawn afresh from a standard normal (others kept): values to
    check an export on, when only shapes (and integer contents) of the example matter. A ``generator``
    must be on the tensors' device."""

    def draw(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        return torch.randn(t.shape, generator=generator, dtype=t.dtype, device=t.device)

    return map_tensors(draw, inputs)


def as_call_args(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of ``model(*args, **kwargs)`` for ``inputs`` (see the module docstring)."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)) and not hasattr(inputs, "_fields"):
        return tuple(inputs), {}
    return (inputs,), {}


def call_model(model: nn.Module | Callable[..., Any], inputs: Any) -> Any:
    """``model`` run on ``inputs``: a tensor as one argument, a tuple or list as several, a dict as keywords."""
    args, kwargs = as_call_args(inputs)
    return model(*args, **kwargs)
