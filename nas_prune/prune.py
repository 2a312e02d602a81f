"""Turn a choice of widths into a physically smaller copy of a model that keeps the best filters.

Torch-Pruning cuts each group's layers; on top of it this module keeps grouped layers' blocks equal (the
same positions leave every block), slices a pruned layer's extra parameters and buffers (a ``mask`` of the
weight's shape, a per-channel scale) with the same indices, and checks that the slim model still runs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
import torch_pruning as tp

from .batch import call_model, resize_batch
from .errors import NasPruneError
from .graph import ChannelGraph, ChannelGroup
from .importance import Importance, get_importance

__all__ = ["channel_importance", "channel_order", "mask", "prune", "resolve_widths", "round_width"]

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

    Dict values are rounded to ``round_to`` too (capped at the group's width), and to a multiple of the
    group's ``multiple`` (its grouped convolutions' group count); groups missing from the dict and frozen
    groups keep their full width.

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
                else round_width(group.channels, want / group.channels, _step(group, round_to))
            )
        return keep
    fraction = float(widths)
    if not 0.0 < fraction <= 1.0:
        raise NasPruneError(f"a uniform width must be a fraction in (0, 1], got {fraction}")
    return {
        g.name: round_width(g.channels, fraction, _step(g, round_to)) if g.prunable else g.channels
        for g in groups
    }


def _step(group: ChannelGroup, round_to: int) -> int:
    """Kept widths of ``group`` are multiples of this: ``round_to`` and the group's block count."""
    return math.lcm(max(1, int(round_to)), group.multiple)


def channel_order(scores: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Channel indices from most to least important, whole positions at a time for grouped layers.

    With ``multiple`` blocks (a grouped conv's groups), a position's score is the mean over the blocks
    and its channels in every block come together, so keeping any multiple of ``multiple`` channels keeps
    the same positions in every block.
    """
    per_block = scores.numel() // multiple
    positions = torch.argsort(scores.view(multiple, per_block).mean(0), descending=True, stable=True)
    return (positions[:, None] + per_block * torch.arange(multiple)[None, :]).flatten()


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
    fixed = importance if isinstance(importance, Mapping) else None
    scorer = None if fixed is not None else get_importance(importance)
    drops = {}
    for group in graph.groups:
        if keep[group.name] < group.channels:
            scores = fixed[group.name] if fixed is not None else _group_scores(graph, scorer, group)
            order = channel_order(scores, group.multiple)
            drops[group.name] = sorted(order[keep[group.name] :].tolist())
    return drops


def prune(
    model: nn.Module,
    example_inputs,
    widths: Mapping[str, int] | float,
    importance: str | Importance | Mapping[str, torch.Tensor] = "l2",
    round_to: int = 1,
    frozen: Iterable[str] = (),
) -> nn.Module:
    """A new, physically smaller copy of ``model`` keeping the most important channels of each group.

    Args:
        model: the dense model; left unchanged.
        example_inputs: a batch the model accepts (used to trace couplings): a tensor, a tuple of them
            (positional inputs) or a dict (keyword inputs).
        widths: ``{group name: channels to keep}`` or a fraction in (0, 1] of every prunable group.
        importance: a registered criterion name (``l1``, ``l2``, ``bn_scale``, ``taylor``), a callable, or
            fixed scores ``{group name: one score per channel}`` (a supernet's ranking, see
            :mod:`nas_prune.supernet`: keep exactly the channels a width was trained with).
        round_to: kept channels are rounded half up to a multiple of this.
        frozen: group names kept at full width (a uniform fraction skips them; a dict may not shrink them).

    Returns:
        The slim copy; kept filters carry the original weights, output shape is unchanged.

    Raises:
        NasPruneError: bad widths, or a cut the slim model could not run with (naming the layer).
    """
    slim = _copy(model)
    graph = ChannelGraph(slim, example_inputs, frozen)
    for name, drop in _select(graph, widths, importance, round_to).items():
        try:
            _prune_group(graph.tp_group(name, drop))
        except Exception as err:  # noqa: BLE001 - Torch-Pruning's errors become one clear message
            raise NasPruneError(f"cannot prune group {name!r}: {type(err).__name__}: {err}") from err
    _check_forward(slim, example_inputs)
    return slim


_STANDARD = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def _prune_group(tp_group) -> None:
    """Prune a Torch-Pruning group, then slice each pruned layer's extra tensors the same way.

    An extra tensor is a parameter or buffer of the layer other than those its Torch-Pruning pruner cuts
    (weight, bias, BatchNorm statistics): one with the weight's number of dims and its size along the cut
    dim (a ``mask``), or a 1-D one of the output size (a per-channel scale) when outputs are cut.
    """
    plans, seen = [], set()
    for item in tp_group:
        module = item.dep.target.module
        key = (id(module), item.dep.handler)
        if isinstance(module, nn.Module) and isinstance(getattr(module, "weight", None), torch.Tensor):
            extras = {n: t for n, t in _own_tensors(module) if n not in _STANDARD}
            if extras and key not in seen:
                seen.add(key)
                plans.append((item, _stand_in(module), extras))
    tp_group.prune(record_history=False)
    for item, stand_in, extras in plans:
        _slice_extras(item, stand_in, extras)


def _own_tensors(module: nn.Module):
    yield from module.named_parameters(recurse=False)
    yield from module.named_buffers(recurse=False)


def _stand_in(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` with its own attribute dicts: pruning it leaves ``module`` alone."""
    clone = copy.copy(module)
    clone.__dict__ = dict(module.__dict__)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


def _slice_extras(item, stand_in: nn.Module, extras: dict[str, torch.Tensor]) -> None:
    """Cut ``extras`` by running the item's own pruning function on ``stand_in`` with each of them put in
    the weight's (or bias's) place, so they get exactly the indices the weight got."""
    module, handler, idxs = item.dep.target.module, item.dep.handler, item.idxs
    before, after = stand_in.weight.shape, module.weight.shape
    dims = [d for d in range(len(before)) if before[d] != after[d]]
    if not dims:
        return
    cut = dims[0]
    out_side = cut == (1 if getattr(module, "transposed", False) else 0)  # ConvTranspose: (in, out, ...)
    for name, tensor in extras.items():
        if tensor.dim() == len(before) and tensor.shape[cut] == before[cut]:
            slot = "weight"
        elif out_side and tensor.dim() == 1 and len(before) > 1 and tensor.shape[0] == before[cut]:
            slot = "bias"
        else:
            continue
        probe = _stand_in(stand_in)
        as_float = tensor.detach() if tensor.is_floating_point() else tensor.detach().double()
        setattr(probe, slot, nn.Parameter(as_float.clone(), requires_grad=False))
        handler(probe, idxs)
        sliced = getattr(probe, slot).detach().to(tensor.dtype)
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
        else:
            setattr(module, name, sliced)


def _check_forward(model: nn.Module, example_inputs) -> None:
    """Run the slim model once on the first example (eval mode, no grad); a failure becomes a
    ``NasPruneError`` naming the innermost module that was running."""
    inputs = resize_batch(example_inputs, 1)  # one sample is enough to see a shape error, and cheaper
    names = {module: name for name, module in model.named_modules()}
    running: list[str] = []

    def enter(module, args):
        running.append(names[module])

    def leave(module, args, output):
        running.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names]
    handles += [m.register_forward_hook(leave) for m in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, inputs)
    except Exception as err:  # noqa: BLE001 - whatever broke, say where
        where = running[-1] if running and running[-1] else "the model's forward"
        raise NasPruneError(f"the pruned model fails in {where}: {type(err).__name__}: {err}") from err
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


@torch.no_grad()
def mask(
    model: nn.Module,
    example_inputs,
    widths: Mapping[str, int] | float,
    importance: str | Importance = "l2",
    round_to: int = 1,
    frozen: Iterable[str] = (),
) -> nn.Module:
    """A dense copy of ``model`` with exactly the channels :func:`prune` would drop set to zero.

    Every layer producing a dropped channel gets that channel's weights, bias and BatchNorm
    gamma/beta zeroed, so the channel's activation is 0 everywhere. Useful as the reference that
    pruning must equal, and for methods that zero filters without removing them (soft filter pruning).
    """
    masked = _copy(model)
    graph = ChannelGraph(masked, example_inputs, frozen)
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
