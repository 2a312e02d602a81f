"""Layer slots: one call of a layer with an entry, and how its channels follow the widths.

A slot keeps the dense layer as a template (its configuration, never its weights) and the channel groups
cutting its input and output; from these it gives the channels at any widths (:func:`channels`), a fresh
module of that shape to time (:func:`build`) and what its time is taken to scale with (:func:`work`).
Which layers become slots is decided by :mod:`~nas_prune.latency.trace`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping

import torch.nn as nn

_ELEMENTWISE_MODULES = ("torch.nn.modules.activation", "torch.nn.modules.pooling", "torch.nn.modules.dropout")
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@dataclasses.dataclass(frozen=True)
class Slot:
    """One call of a layer with an entry: how its channels follow the widths, and what shape it sees."""

    label: str  # module class or function name
    template: nn.Module  # the dense layer (its configuration is copied, never its weights)
    kind: str  # "conv" | "linear" | "norm" | "elementwise"
    config: str  # width-independent part of the key
    size: tuple[int, ...]  # input shape besides batch and channels
    dense_in: int
    dense_out: int
    ins: tuple[tuple[str, int], ...]  # (group, channels of the group) cutting the input / output
    outs: tuple[tuple[str, int], ...]


def kind_of(module: nn.Module) -> str | None:
    """Which kind of entry a module gets, if any (see :mod:`~nas_prune.latency.trace`)."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if (type(module) in _BATCHNORMS and module.affine) or (
        isinstance(module, nn.PReLU) and module.num_parameters > 1
    ):
        return "norm"
    if isinstance(module, nn.PReLU) or (
        type(module).__module__ in _ELEMENTWISE_MODULES
        and not isinstance(module, nn.MultiheadAttention)
        and not any(True for _ in module.parameters())
    ):
        return "elementwise"
    return None


def config_of(module: nn.Module, kind: str) -> str:
    """The part of a layer's configuration that widths do not change."""
    if kind == "conv":
        m = module
        return (
            f"kernel={tuple(m.kernel_size)} stride={tuple(m.stride)} padding={m.padding} "
            f"dilation={tuple(m.dilation)} bias={m.bias is not None} mode={m.padding_mode}"
        )
    if kind == "linear":
        return f"bias={module.bias is not None}"
    if isinstance(module, nn.PReLU) and kind == "norm":
        return "per-channel"
    if kind == "norm":
        return f"eps={module.eps} track_running_stats={module.track_running_stats}"
    return module.extra_repr()


def build(slot: Slot, cin: int, cout: int, groups: int) -> nn.Module:
    """A fresh module shaped like ``slot``'s layer at the given channels (weights are not copied)."""
    m = slot.template
    if slot.kind == "conv":
        conv = _CONVS[len(m.kernel_size)]
        return conv(
            cin,
            cout,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            groups,
            m.bias is not None,
            m.padding_mode,
        )
    if slot.kind == "linear":
        return nn.Linear(cin, cout, bias=m.bias is not None)
    if isinstance(m, nn.PReLU) and slot.kind == "norm":
        return nn.PReLU(cout)
    if slot.kind == "norm":
        return type(m)(
            cout, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats
        )
    return copy.deepcopy(m)


def channels(slot: Slot, drop: Mapping[str, float]) -> tuple[int, int, int]:
    """``(in, out, groups)`` of ``slot`` when each group loses the fraction ``drop[group]`` of its channels."""
    cout = round(slot.dense_out - sum(n * drop[g] for g, n in slot.outs))
    cin = round(slot.dense_in - sum(n * drop[g] for g, n in slot.ins))
    groups = 1
    if slot.kind == "conv":
        groups = slot.template.groups
        if depthwise(slot):
            cin = groups = cout
    return cin, cout, groups


def depthwise(slot: Slot) -> bool:
    m = slot.template
    return slot.kind == "conv" and m.groups == m.in_channels == m.out_channels > 1


def work(slot: Slot, cin: int, cout: int, groups: int) -> float:
    """What an entry's time is taken to scale with: weights (conv, linear) or channels (the rest)."""
    if slot.kind in ("conv", "linear"):
        return max(cin, 1) * max(cout, 1) / max(groups, 1)
    return max(cout, 1)
