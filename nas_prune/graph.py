"""Coupled channel groups of a CNN, found with Torch-Pruning's ``DependencyGraph``.

A *channel group* is a set of output channels that must be kept or removed together: a residual add ties
the outputs of every conv feeding it, a depthwise conv ties its input to its output channels, a concat
shifts channel indices into the next layer. Torch-Pruning traces these couplings through autograd; this
module names the groups stably, finds the network's outputs automatically (whatever the classifier's
type), and freezes groups that Torch-Pruning cannot prune safely:

* channels that flow through a permutation of the channel dimension (transpose/permute, e.g. a channel
  shuffle) or through a reshape other than the flatten before a linear classifier;
* channels read or produced by a grouped convolution with ``1 < groups < channels`` (Torch-Pruning would
  remove input channels unevenly across the conv's groups). Depthwise convolutions are handled exactly.

Frozen groups stay at full width and are reported with ``prunable=False`` and the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

__all__ = ["ChannelGroup", "ChannelGraph", "channel_groups"]

_OPS = tp.ops.OPTYPE
# Module kinds whose *output* channels can belong to a group (the producers and their normalisers).
_CHANNEL_MODULES = {
    _OPS.CONV,
    _OPS.DEPTHWISE_CONV,
    _OPS.LINEAR,
    _OPS.BN,
    _OPS.PRELU,
    _OPS.GN,
    _OPS.IN,
    _OPS.LN,
}
# Autograd ops that reorder channels: Torch-Pruning would treat them as element-wise and get indices wrong.
_REORDERING_OPS = ("transpose", "permute", "shuffle", "roll", "flip", "gather", "index", "unknown")


@dataclass(frozen=True)
class ChannelGroup:
    """One set of coupled output channels.

    Attributes:
        name: qualified name of the earliest module in ``model.named_modules()`` whose output channels
            belong to the group (stable across runs).
        channels: current width of the group.
        prunable: False when the group is frozen at full width.
        modules: qualified names of every module whose output channels belong to the group.
        reason: why the group is frozen ("" when prunable).
    """

    name: str
    channels: int
    prunable: bool
    modules: tuple[str, ...]
    reason: str = ""


class ChannelGraph:
    """A traced model with its channel groups; the object that :func:`nas_prune.prune` cuts.

    Tracing runs in eval mode so BatchNorm statistics are untouched; the model's mode is restored.
    The model is traced *in place*: pass a copy if it must stay unchanged (``channel_groups`` does).
    """

    def __init__(self, model: nn.Module, example_inputs):
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():  # Torch-Pruning traces through autograd
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, verbose=False
                )
        finally:
            model.train(was_training)
        self.model = model
        self._names = {module: name for name, module in model.named_modules()}
        self._order = {name: i for i, name in enumerate(self._names.values())}
        self.groups: list[ChannelGroup] = []
        self._roots: dict[str, tuple[nn.Module, object]] = {}
        for tp_group in self.dg.get_all_groups():
            group = self._describe(tp_group)
            if group is not None:
                self.groups.append(group)
                root = tp_group[0].dep
                self._roots[group.name] = (root.target.module, root.handler)
        self.groups.sort(key=lambda g: self._order[g.name])

    def tp_group(self, name: str, idxs=None):
        """The Torch-Pruning group of ``name`` over root channel indices ``idxs`` (default: all).

        Built afresh on each call so concat/split index mappings reflect earlier cuts.
        """
        module, handler = self._roots[name]
        if idxs is None:
            idxs = list(range(self.dg.get_out_channels(module)))
        return self.dg.get_pruning_group(module, handler, idxs)

    def _describe(self, tp_group) -> ChannelGroup | None:
        members, reasons = [], []
        for item in tp_group:
            node, handler = item.dep.target, item.dep.handler
            if node.type == _OPS.OUTPUT or (not node.outputs and self.dg.is_out_channel_pruning_fn(handler)):
                return None  # the network's final outputs are never a group
            module = node.module
            if node.type in _CHANNEL_MODULES and self.dg.is_out_channel_pruning_fn(handler):
                if module in self._names:
                    members.append(self._names[module])
            if node.type == _OPS.CONV and 1 < module.groups < module.out_channels:
                reasons.append(f"grouped convolution {self._names.get(module, '?')} (groups={module.groups})")
            elif node.type == _OPS.ELEMENTWISE and _reorders_channels(node):
                reasons.append(f"channel reordering op {_op_name(node)}")
            elif node.type == _OPS.RESHAPE and not _is_flatten_to_linear(node):
                reasons.append(f"reshape {_op_name(node)} not followed by a linear layer")
        if not members:
            return None
        members = sorted(set(members), key=self._order.__getitem__)
        root = tp_group[0].dep.target.module
        return ChannelGroup(
            name=members[0],
            channels=int(self.dg.get_out_channels(root)),
            prunable=not reasons,
            modules=tuple(members),
            reason="; ".join(dict.fromkeys(reasons)),
        )


def _op_name(node) -> str:
    grad_fn = node.grad_fn
    return grad_fn.name() if grad_fn is not None and hasattr(grad_fn, "name") else "unknown"


def _reorders_channels(node) -> bool:
    name = _op_name(node).lower()
    return any(op in name for op in _REORDERING_OPS)


def _is_flatten_to_linear(node) -> bool:
    """True for the ``flatten`` between a (pooled) feature map and a linear classifier."""
    return bool(node.outputs) and all(out.type == _OPS.LINEAR for out in node.outputs)


def channel_groups(model: nn.Module, example_inputs) -> list[ChannelGroup]:
    """The coupled channel groups of ``model``, in ``named_modules()`` order.

    Works on a deep copy: the user's model keeps no hooks and its BatchNorm statistics are untouched.
    The network's input channels and final outputs are never groups; frozen groups have
    ``prunable=False`` and a ``reason``.
    """
    return ChannelGraph(copy.deepcopy(model), example_inputs).groups
