"""Coupled channel groups of a CNN, found with Torch-Pruning's ``DependencyGraph``.

A *channel group* is a set of output channels that must be kept or removed together: a residual add ties
the outputs of every conv feeding it, a depthwise conv ties its input to its output channels, a concat
shifts channel indices into the next layer. Torch-Pruning traces these couplings through autograd; this
module names the groups stably, finds the network's outputs automatically (whatever the classifier's
type; every tensor of a tuple or dict of outputs, e.g. a detector's heads), and decides how each group
may be cut:

* a group read or produced by a grouped layer (grouped convolution, GroupNorm) keeps the number of groups
  and loses the same positions from every block: its width is a multiple of ``ChannelGroup.multiple``
  (the least common multiple of those layers' group counts). Depthwise convolutions are handled exactly.
* a group through an equal chunk or a channel shuffle (``view``/``transpose``/``view``) is cut alike in
  every piece and shuffle group (:mod:`nas_prune.ties`); its root channels tied that way are whole
  positions of ``multiple`` blocks, and the group is named and measured after its earliest layer.

Groups that cannot be cut safely are frozen at full width, reported with ``prunable=False`` and a reason:

* channels that flow through any other permutation of the channel dimension (transpose/permute, e.g.
  ``nn.ChannelShuffle``) or through a reshape other than the flatten before a linear classifier;
* channels that chunks and channel shuffles tie all together (e.g. the stages of 116 and 232 channels of
  pytorchcv's ``shufflenetv2_w1``) or in classes of different sizes, or a shuffle whose group count is
  ambiguous;
* a grouped layer reached through a concat or split (its blocks would not line up with the group's);
* any part of the model on which Torch-Pruning itself fails (the error is the reason);
* groups the user freezes by name (``frozen=``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from .batch import call_model, tensors
from .errors import NasPruneError
from .ties import ShuffleTie, TiedGraph, tie_layout

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
_ROOTS = (nn.modules.conv._ConvNd, nn.Linear)
# Layers whose outputs are other channels than their inputs: a group read by one does not reach its output.
_TRANSFORMS = {_OPS.CONV, _OPS.DEPTHWISE_CONV, _OPS.LINEAR, _OPS.EMBED, _OPS.MHA, _OPS.LSTM}


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
        multiple: kept widths are multiples of this: the group count of the grouped convolutions
            (or GroupNorms) it feeds or comes from, 1 when there are none.
    """

    name: str
    channels: int
    prunable: bool
    modules: tuple[str, ...]
    reason: str = ""
    multiple: int = 1


class ChannelGraph:
    """A traced model with its channel groups; the object that :func:`nas_prune.prune` cuts.

    Tracing runs in eval mode so BatchNorm statistics are untouched; the model's mode is restored.
    The model is traced *in place*: pass a copy if it must stay unchanged (``channel_groups`` does).
    A model Torch-Pruning cannot trace at all gets one frozen group per conv/linear layer but the last.

    Args:
        model: the model to trace.
        example_inputs: a batch the model accepts: a tensor, a tuple of them (positional inputs) or a
            dict (keyword inputs), see :mod:`nas_prune.batch`.
        frozen: names of groups to freeze at full width (as :func:`channel_groups` names them).

    Raises:
        NasPruneError: a name in ``frozen`` is not a group of the model.
    """

    def __init__(self, model: nn.Module, example_inputs, frozen: Iterable[str] = ()):
        self.model = model
        self._names = {module: name for name, module in model.named_modules()}
        self._modules = dict(model.named_modules())
        self._order = {name: i for i, name in enumerate(self._names.values())}
        self.groups: list[ChannelGroup] = []
        self._roots: dict[str, tuple[nn.Module, object]] = {}
        self._outputs: set = set()  # grad_fns of the network's final output tensors
        self._orders: dict[str, list[int]] = {}  # group -> its root channels class by class (see tie_layout)
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():  # Torch-Pruning traces through autograd
                self.dg = TiedGraph().build_dependency(
                    model,
                    example_inputs=example_inputs,
                    forward_fn=call_model,  # a tensor is one argument, never unpacked along its batch
                    output_transform=self._final_outputs,
                    verbose=False,
                )
        except Exception as err:  # noqa: BLE001 - any tracing failure freezes the model, never crashes
            self.dg = None
            self._freeze_all(f"Torch-Pruning cannot trace the model ({type(err).__name__}: {str(err)[:200]})")
        else:
            self._collect()
        finally:
            model.train(was_training)
        self._freeze(set(frozen))
        self.groups.sort(key=lambda g: self._order[g.name])

    def _final_outputs(self, outputs) -> list[torch.Tensor]:
        """Every tensor of the model's outputs (a tensor, tuple or dict: several heads), remembered so that
        no group holds an output's channels, even one the network also reads on (a returned feature map)."""
        found = tensors(outputs)
        self._outputs = {t.grad_fn for t in found if t.grad_fn is not None}
        return found

    def traced(self, name: str) -> bool:
        """True when Torch-Pruning could build group ``name`` (false for a group frozen by its failure)."""
        return name in self._roots

    def tp_group(self, name: str, idxs=None):
        """The Torch-Pruning group of ``name`` over root channel indices ``idxs`` (default: all).

        Built afresh on each call so concat/split index mappings reflect earlier cuts. A group whose tied
        root channels are not blocks of the root's own order is seen class by class: ``idxs`` and the
        items' ``root_idxs`` are positions in that order.
        """
        module, handler = self._roots[name]
        order = self._orders.get(name)
        if idxs is None:
            idxs = list(range(self.dg.get_out_channels(module)))
        if order is None:
            return self.dg.get_pruning_group(module, handler, idxs)
        tp_group = self.dg.get_pruning_group(module, handler, [order[i] for i in idxs])
        position = {root: i for i, root in enumerate(order)}
        for item in tp_group:
            item.root_idxs = [position[r] for r in item.root_idxs]
        return tp_group

    def _collect(self) -> None:
        """One group per conv/linear root not already covered (Torch-Pruning's ``get_all_groups``), with a
        failure on one root freezing that root's channels instead of aborting."""
        visited: set[nn.Module] = set()
        for module in list(self.dg.module2node):
            if not isinstance(module, _ROOTS) or module in visited or module not in self._names:
                continue
            pruner = self.dg.get_pruner_of_module(module)
            channels = int(pruner.get_out_channels(module))
            handler = pruner.prune_out_channels
            try:
                tp_group = self.dg.get_pruning_group(module, handler, list(range(channels)))
                group = self._describe(tp_group)
                if group is not None and any(item.dep.target in self.dg.ties for item in tp_group):
                    module, handler, tp_group, group = self._tied(module, handler, tp_group, group)
            except Exception as err:  # noqa: BLE001 - Torch-Pruning's index mapping can fail on odd ops
                visited.add(module)
                reason = f"Torch-Pruning cannot map its channels ({type(err).__name__}: {str(err)[:200]})"
                self._add_frozen(self._names[module], channels, reason)
                continue
            visited.update(
                item.dep.target.module
                for item in tp_group
                if self.dg.is_out_channel_pruning_fn(item.dep.handler)
            )
            if group is not None and all(g.name != group.name for g in self.groups):
                self.groups.append(group)
                self._roots[group.name] = (module, handler)

    def _tied(self, module, handler, tp_group, group: ChannelGroup):
        """A group through a chunk or channel shuffle, rooted at its named layer (so its width is that
        layer's), with its tied root channels as whole positions of ``multiple`` blocks, or frozen."""
        named = self._modules[group.name]
        if named is not module and isinstance(named, _ROOTS):
            module, handler = named, self.dg.get_pruner_of_module(named).prune_out_channels
            tp_group = self.dg.get_pruning_group(
                module, handler, list(range(self.dg.get_out_channels(module)))
            )
            group = self._describe(tp_group)
        classes = self.dg.root_classes(module, tp_group[0].dep.handler, group.channels)
        ties = [self.dg.ties[item.dep.target] for item in tp_group if item.dep.target in self.dg.ties]
        shuffles = list(dict.fromkeys(t.where for t in ties if isinstance(t, ShuffleTie)))
        multiple, order, reason = tie_layout(shuffles, classes, group.channels)
        if order is not None:
            self._orders[group.name] = order
        if multiple > 1 and group.multiple > 1:
            reason = "grouped layers and equal chunks or channel shuffles both split its channels"
        reasons = [r for r in (group.reason, reason) if r]
        tied = ChannelGroup(
            group.name,
            group.channels,
            not reasons,
            group.modules,
            "; ".join(reasons),
            max(multiple, group.multiple),
        )
        return module, handler, tp_group, tied

    def _add_frozen(self, name: str, channels: int, reason: str) -> None:
        if all(g.name != name for g in self.groups):
            self.groups.append(ChannelGroup(name, channels, False, (name,), reason))

    def _freeze_all(self, reason: str) -> None:
        """One frozen group per conv/linear layer but the last (taken as the classifier, never a group)."""
        layers = [(name, module) for module, name in self._names.items() if isinstance(module, _ROOTS)]
        for name, module in layers[:-1]:
            channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            self._add_frozen(name, channels, reason)

    def _freeze(self, names: set[str]) -> None:
        unknown = names - {g.name for g in self.groups}
        if unknown:
            raise NasPruneError(
                f"frozen group(s) {sorted(unknown)} are not channel groups of this model; "
                f"groups are {sorted(g.name for g in self.groups)}"
            )
        self.groups = [
            ChannelGroup(g.name, g.channels, False, g.modules, "frozen by the user", g.multiple)
            if g.name in names and g.prunable
            else g
            for g in self.groups
        ]

    def _describe(self, tp_group) -> ChannelGroup | None:
        members, reasons, multiple = [], [], 1
        root = tp_group[0].dep.target.module
        channels = int(self.dg.get_out_channels(root))
        for item in tp_group:
            node, handler = item.dep.target, item.dep.handler
            out_side = self.dg.is_out_channel_pruning_fn(handler)
            if self._is_output(node, out_side):
                return None  # the network's final outputs are never a group
            module = node.module
            if node.type in _CHANNEL_MODULES and out_side and module in self._names:
                members.append(self._names[module])
            blocks, reason = self._blocks(item, channels)
            multiple = math.lcm(multiple, blocks)
            if reason:
                reasons.append(reason)
            elif node in self.dg.ties or node in self.dg.shuffle_nodes:  # mapped exactly by a tie
                if getattr(self.dg.ties.get(node), "error", ""):
                    reasons.append(self.dg.ties[node].error)
            elif node.type == _OPS.ELEMENTWISE and _reorders_channels(node):
                reasons.append(f"channel reordering op {_op_name(node)}")
            elif node.type == _OPS.RESHAPE and not (_is_flatten_to_linear(node) or _views_a_vector(node)):
                reasons.append(f"reshape {_op_name(node)} not followed by a linear layer")
        if not members:
            return None
        members = sorted(set(members), key=self._order.__getitem__)
        return ChannelGroup(
            name=members[0],
            channels=channels,
            prunable=not reasons,
            modules=tuple(members),
            reason="; ".join(dict.fromkeys(reasons)),
            multiple=multiple,
        )

    def _is_output(self, node, out_side: bool) -> bool:
        """Whether the group's channels leave the network at ``node``: one of the final output tensors
        (unless ``node`` only reads the group, as a conv does), or a layer nothing reads."""
        carries = out_side or node.type not in _TRANSFORMS
        return (
            node.type == _OPS.OUTPUT
            or (carries and node.grad_fn in self._outputs)
            or (out_side and not node.outputs)
        )

    def _blocks(self, item, channels: int) -> tuple[int, str]:
        """Group count of a grouped layer (grouped conv, GroupNorm) on ``item``'s side (1 otherwise), and a
        reason to freeze when its blocks do not line up with the group's root channels."""
        node, module = item.dep.target, item.dep.target.module
        if node.type == _OPS.DEPTHWISE_CONV:
            if module.in_channels != module.out_channels:
                return 1, f"depthwise convolution {self._names.get(module, '?')} with a channel multiplier"
            return 1, ""
        pruner = self.dg.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
        if pruner is None:
            return 1, ""
        out_side = self.dg.is_out_channel_pruning_fn(item.dep.handler)
        count = pruner.get_out_channel_groups(module) if out_side else pruner.get_in_channel_groups(module)
        width = pruner.get_out_channels(module) if out_side else pruner.get_in_channels(module)
        if count is None or count <= 1:
            return 1, ""
        aligned = width == channels and list(item.idxs) == list(item.root_idxs)
        if not aligned:
            return 1, f"grouped layer {self._names.get(module, '?')} behind a concat or split"
        return int(count), ""


def _op_name(node) -> str:
    grad_fn = node.grad_fn
    return grad_fn.name() if grad_fn is not None and hasattr(grad_fn, "name") else "unknown"


def _reorders_channels(node) -> bool:
    name = _op_name(node).lower()
    return any(op in name for op in _REORDERING_OPS)


def _is_flatten_to_linear(node) -> bool:
    """True for the ``flatten`` between a (pooled) feature map and a linear classifier."""
    return bool(node.outputs) and all(out.type == _OPS.LINEAR for out in node.outputs)


def _views_a_vector(node) -> bool:
    """True for a view of a per-channel parameter (one non-singleton dim), e.g. ``scale.view(1, -1, 1, 1)``:
    it cannot reorder channels."""
    return bool(node.inputs) and all(
        n.type == _OPS.PARAMETER and sum(size > 1 for size in n.module.shape) == 1 for n in node.inputs
    )


def channel_groups(model: nn.Module, example_inputs, frozen: Iterable[str] = ()) -> list[ChannelGroup]:
    """The coupled channel groups of ``model``, in ``named_modules()`` order.

    Works on a deep copy: the user's model keeps no hooks and its BatchNorm statistics are untouched.
    The network's input channels and final outputs are never groups; frozen groups (those that cannot be
    cut safely, and those named in ``frozen``) have ``prunable=False`` and a ``reason``.
    """
    return ChannelGraph(copy.deepcopy(model), example_inputs, frozen).groups
