"""Turn a choice of widths into a physically smaller copy of a model that keeps the best filters."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch_pruning as tp

from .cli import NasPruneError
from .graph import ChannelGraph, ChannelGroup
from .importance import Importance, get_importance

__all__ = ["channel_importance", "mask", "prune", "resolve_widths", "round_width"]

_OPS = tp.ops.OPTYPE
# Layers with one weight (and bias) entry per output channel, zeroed by ``mask``.
_PARAMETRISED = {_OPS.CONV, _OPS.DEPTHWISE_CONV, _OPS.LINEAR, _OPS.BN, _OPS.GN, _OPS.IN, _OPS.LN}


def round_width(channels: int, fraction: float, round_to: int = 1) -> int:
    """``fraction`` of ``channels`` rounded half up to a multiple of ``round_to``.

    Never below ``round_to`` (or 1), never above ``channels``.
    """
    step = max(1, int(round_to))
    keep = math.floor(channels * fraction / step + 0.5) * step
    return int(min(channels, max(step, keep)))


def resolve_widths(
    groups: list[ChannelGroup], widths: Mapping[str, int] | float, round_to: int = 1
) -> dict[str, int]:
    """Channels to keep for every group, from a ``{group: channels}`` dict or a uniform fraction.

    Dict values are rounded to ``round_to`` too (capped at the group's width); groups missing from the
    dict and frozen groups keep their full width.

    Raises:
        NasPruneError: unknown group name, a width outside ``1..channels``, a fraction outside (0, 1],
            or a frozen group asked to shrink.
    """
    by_name = {g.name: g for g in groups}
    if isinstance(widths, Mapping):
        unknown = sorted(set(widths) - set(by_name))
        if unknown:
            raise NasPruneError(f"unknown channel group(s) {unknown}; groups are {sorted(by_name)}")
        keep = {}
        for group in groups:
            want = int(widths.get(group.name, group.channels))
            if not 1 <= want <= group.channels:
                raise NasPruneError(f"width {want} for group {group.name!r} is outside 1..{group.channels}")
            if want < group.channels and not group.prunable:
                raise NasPruneError(f"group {group.name!r} cannot be pruned: {group.reason}")
            keep[group.name] = (
                group.channels
                if want == group.channels
                else round_width(group.channels, want / group.channels, round_to)
            )
        return keep
    fraction = float(widths)
    if not 0.0 < fraction <= 1.0:
        raise NasPruneError(f"a uniform width must be a fraction in (0, 1], got {fraction}")
    return {g.name: round_width(g.channels, fraction, round_to) if g.prunable else g.channels for g in groups}


def _copy(model: nn.Module) -> nn.Module:
    """Deep copy that keeps parameter gradients (``deepcopy`` drops them; Taylor importance needs them)."""
    clone = copy.deepcopy(model)
    for mine, theirs in zip(clone.parameters(), model.parameters(), strict=True):
        if theirs.grad is not None:
            mine.grad = theirs.grad.detach().clone()
    return clone


def _group_scores(graph: ChannelGraph, scorer: Importance, group: ChannelGroup) -> torch.Tensor:
    """One score per channel of ``group``; a group no weighted layer scores keeps its first channels."""
    scores = scorer(graph.tp_group(group.name))
    if scores is None:
        return -torch.arange(group.channels, dtype=torch.float32)
    return scores.float().cpu()


def channel_importance(
    model: nn.Module, example_inputs, importance: str | Importance = "l2"
) -> dict[str, torch.Tensor]:
    """Per prunable group, one importance score per channel (higher = keep), on a copy of ``model``."""
    graph = ChannelGraph(_copy(model), example_inputs)
    scorer = get_importance(importance)
    return {g.name: _group_scores(graph, scorer, g) for g in graph.groups if g.prunable}


def _select(graph: ChannelGraph, widths, importance, round_to) -> dict[str, list[int]]:
    """Root channel indices to drop per group: the least important beyond each group's kept width.

    Every group is scored on the unpruned weights before anything is cut, so root indices stay valid.
    """
    keep = resolve_widths(graph.groups, widths, round_to)
    scorer = get_importance(importance)
    drops = {}
    for group in graph.groups:
        if keep[group.name] < group.channels:
            order = torch.argsort(_group_scores(graph, scorer, group), descending=True, stable=True)
            drops[group.name] = sorted(order[keep[group.name] :].tolist())
    return drops


def prune(
    model: nn.Module,
    example_inputs,
    widths: Mapping[str, int] | float,
    importance: str | Importance = "l2",
    round_to: int = 1,
) -> nn.Module:
    """A new, physically smaller copy of ``model`` keeping the most important channels of each group.

    Args:
        model: the dense model; left unchanged.
        example_inputs: a batch the model accepts (used to trace couplings).
        widths: ``{group name: channels to keep}`` or a fraction in (0, 1] of every prunable group.
        importance: a registered criterion name (``l1``, ``l2``, ``bn_scale``, ``taylor``) or a callable.
        round_to: kept channels are rounded half up to a multiple of this.

    Returns:
        The slim copy; kept filters carry the original weights, output shape is unchanged.
    """
    slim = _copy(model)
    graph = ChannelGraph(slim, example_inputs)
    for name, drop in _select(graph, widths, importance, round_to).items():
        graph.tp_group(name, drop).prune(record_history=False)
    return slim


@torch.no_grad()
def mask(
    model: nn.Module,
    example_inputs,
    widths: Mapping[str, int] | float,
    importance: str | Importance = "l2",
    round_to: int = 1,
) -> nn.Module:
    """A dense copy of ``model`` with exactly the channels :func:`prune` would drop set to zero.

    Every layer producing a dropped channel gets that channel's weights, bias and BatchNorm
    gamma/beta zeroed, so the channel's activation is 0 everywhere. Useful as the reference that
    pruning must equal, and for methods that zero filters without removing them (soft filter pruning).
    """
    masked = _copy(model)
    graph = ChannelGraph(masked, example_inputs)
    for name, drop in _select(graph, widths, importance, round_to).items():
        for item in graph.tp_group(name, drop):
            layer, idxs = item.dep.target.module, item.idxs
            if item.dep.target.type not in _PARAMETRISED or not graph.dg.is_out_channel_pruning_fn(
                item.dep.handler
            ):
                continue
            if getattr(layer, "transposed", False):  # ConvTranspose: weight is (in, out / groups, ...)
                layer.weight[:, idxs] = 0
            else:
                layer.weight[idxs] = 0
            if getattr(layer, "bias", None) is not None:
                layer.bias[idxs] = 0
    return masked
