"""Tracing a model: which of its calls get a latency entry, and which channel groups cut them.

Which layers have entries, and why:

* every convolution, linear, BatchNorm and per-channel PReLU layer. :class:`~nas_prune.cost.CostModel`'s
  trace says exactly which channel groups cut their inputs and outputs, and they do nearly all the work;
* activation, pooling and dropout modules, and functional ops (seen by a ``TorchFunctionMode`` outside
  the leaf modules) that keep batch and channels and whose tensor arguments share one shape
  (``torch.relu``, ``x + y``, ``F.adaptive_avg_pool2d``, ``x.mean((2, 3))``...), whose input is the
  output of such a layer or op, found by tensor identity in one traced forward pass. At batch 1 they are
  mostly per-call overhead, but at large batches they are memory-bound and shrink with the channels they
  carry (a ResNet's residual adds and ReLUs, MobileNetV2's ReLU6s). An op only gets an entry if it still
  works on one channel fewer (``x.view(2, 16, 8, 8)`` does not).

Other ops (``flatten`` to a vector, ``cat``, channel reshapes, broadcasting products), everything fed by
them and modules of other kinds have no entry (:attr:`LatencyLUT.unmodelled` lists such modules): their
cost goes into the constant, which assumes it does not change with width.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..batch import call_model, to_device
from ..cost import CostModel
from .slots import Slot, config_of, kind_of


class _Call(nn.Module):
    """A traced functional op as a module, to time it alone: every tensor argument becomes the input."""

    def __init__(self, func: Callable, args: tuple, kwargs: dict):
        super().__init__()
        self.func, self.kwargs = func, kwargs
        self.tensors = frozenset(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        self.args = tuple(None if i in self.tensors else a for i, a in enumerate(args))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.func(*(x if i in self.tensors else a for i, a in enumerate(self.args)), **self.kwargs)

    def extra_repr(self) -> str:
        args = ["T" if i in self.tensors else repr(a) for i, a in enumerate(self.args)]
        return ", ".join(args + [f"{k}={v!r}" for k, v in sorted(self.kwargs.items())])


def _follows_channels(call: _Call, x: torch.Tensor) -> bool:
    """Whether a traced op still works, keeping batch and channels, on one sample with one channel fewer.

    Rules out ops whose arguments fix the shape (``x.view(2, 16, 8, 8)`` is element-wise in shape only).
    """
    if x.shape[1] < 2:
        return True  # a single channel is never cut
    probe = torch.zeros(1, x.shape[1] - 1, *x.shape[2:], dtype=x.dtype)
    try:
        out = call(probe)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return False
    return isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[:2] == probe.shape[:2]


def _elementwise(label: str, template: nn.Module, x: torch.Tensor) -> Slot:
    c = x.shape[1]
    config = config_of(template, "elementwise")
    return Slot(label, template, "elementwise", config, tuple(x.shape[2:]), c, c, (), ())


class _Tracer:
    """What one forward pass finds: the slots in call order, and the called modules without an entry."""

    def __init__(self, cost: CostModel):
        self.cuts = {layer.name: layer for layer in cost.layers}
        self.slots: list[Slot] = []
        self.unmodelled: list[str] = []
        self.known: dict[int, tuple] = {}  # id(tensor) -> groups cutting its channels (dim 1)
        self.alive: list[torch.Tensor] = []  # keep traced tensors alive so their ids are not reused
        self.depth = 0  # > 0 inside a leaf module, whose functional calls are its own entry's business

    def pass_through(self, x, out, entry: Slot | None) -> bool:
        """Give ``out`` the channel groups of ``x``, and record ``entry``, if both are traced."""
        source = self.known.get(id(x))
        if source is None or out.shape[1] != x.shape[1]:
            return False
        self.alive.append(out)
        self.known[id(out)] = source
        if entry is not None:
            self.slots.append(dataclasses.replace(entry, ins=source, outs=source))
        return True

    def enter(self, module, args) -> None:
        self.depth += 1

    def leave(self, module, args, out, name: str) -> None:
        """A leaf module's call: a slot of its own, a pass-through of channels, or unmodelled."""
        self.depth -= 1
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or not isinstance(out, torch.Tensor) or min(x.dim(), out.dim()) < 2:
            self.unmodelled.append(name)
            return
        kind = kind_of(module)
        if kind in ("conv", "norm") or (kind == "linear" and out.dim() == 2):
            self.layer(module, kind, x, out, name)
        elif kind == "elementwise":
            if not self.pass_through(x, out, _elementwise(type(module).__name__, module, x)):
                self.unmodelled.append(name)
        elif any(True for _ in module.parameters()) or not self.pass_through(x, out, None):
            self.unmodelled.append(name)

    def layer(self, module: nn.Module, kind: str, x: torch.Tensor, out: torch.Tensor, name: str) -> None:
        """A conv, linear or norm layer: its channels are cut as the cost model's trace says."""
        layer = self.cuts[name]
        outs = tuple(layer.outs)
        ins = outs if kind == "norm" else tuple(layer.ins)
        if kind == "linear":  # features last; other dims besides batch are the "input size"
            size, dense_in, dense_out = tuple(x.shape[1:-1]), x.shape[-1], out.shape[-1]
        else:
            size, dense_in, dense_out = tuple(x.shape[2:]), x.shape[1], out.shape[1]
        label, config = type(module).__name__, config_of(module, kind)
        self.slots.append(Slot(label, module, kind, config, size, dense_in, dense_out, ins, outs))
        self.alive.append(out)
        self.known[id(out)] = outs

    def functional(self, func, args: tuple, kwargs: dict, out) -> None:
        """A functional op outside leaf modules: a slot if it keeps batch and channels of one shape."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if self.depth or not tensors or not isinstance(out, torch.Tensor) or out.dim() < 2:
            return
        x = tensors[0]
        same = all(t.shape == x.shape for t in tensors) and not any(
            isinstance(v, torch.Tensor) for v in kwargs.values()
        )
        if same and out.shape[:2] == x.shape[:2]:  # element-wise, pooling, reductions...
            call = _Call(func, args, kwargs)
            if _follows_channels(call, x):
                label = getattr(func, "__name__", type(func).__name__)
                self.pass_through(x, out, _elementwise(label, call, x))


class _Functional(TorchFunctionMode):
    def __init__(self, tracer: _Tracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.tracer.functional(func, args, kwargs, out)
        return out


def trace(model: nn.Module, cost: CostModel, inputs) -> tuple[list[Slot], list[str]]:
    """One forward pass of a copy with hooks on ``inputs`` (a tensor, a tuple of them or a dict of keyword
    inputs): the slots called, in order, and the unmodelled modules."""
    probe, inputs = copy.deepcopy(model), to_device(inputs, "cpu")
    tracer = _Tracer(cost)
    leaves = [(name, module) for name, module in probe.named_modules() if not any(module.children())]
    hooks = [module.register_forward_pre_hook(tracer.enter) for _, module in leaves]
    hooks += [
        module.register_forward_hook(lambda m, a, o, name=name: tracer.leave(m, a, o, name))
        for name, module in leaves
    ]
    try:
        with torch.no_grad(), _Functional(tracer):
            call_model(probe, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return tracer.slots, list(dict.fromkeys(tracer.unmodelled))
