"""Pruning primitives of the literature's methods: magnitude masks and non-zero MACs (unstructured),
cutting or zeroing chosen channels (soft filter pruning), winning tickets, iterative FLOPs targets."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from ..batch import batch_size, call_model
from ..errors import NasPruneError
from ..graph import ChannelGraph
from ..prune import channel_importance

__all__ = [
    "iterative_targets",
    "magnitude_prune",
    "make_permanent",
    "nonzero_macs",
    "prune_channels",
    "sparsity",
    "structured_ticket",
    "unstructured_ticket",
    "weight_positions",
    "weighted_layers",
    "zero_filters",
]

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


# ---------------------------------------------------------------------------------------------------
# Unstructured magnitude pruning and non-zero MACs
# ---------------------------------------------------------------------------------------------------


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _WEIGHTED)}


def weight_positions(model: nn.Module, example_inputs: Any) -> dict[str, float]:
    """Per conv/linear layer: MACs per sample contributed by each of its weights.

    A conv weight is used once per output position (``H_out x W_out``), a linear weight once per
    sample (per leading position), so ``sum(weight.numel() * positions)`` is ``count_macs``'s total.
    """
    # No deep copy: a model under torch's pruning reparametrisation cannot be deep-copied. Eval mode
    # and no_grad leave BatchNorm statistics and gradients untouched; the mode is restored.
    positions: dict[str, float] = {}
    batch = batch_size(example_inputs)

    def hook(name: str, module: nn.Module):
        def record(_module, _inputs, output):
            channels = output.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else output.shape[-1]
            positions[name] = output.numel() / channels / batch

        return record

    was_training = model.training
    handles = [m.register_forward_hook(hook(n, m)) for n, m in weighted_layers(model).items()]
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return positions


def _weight(module: nn.Module) -> torch.Tensor:
    """The effective weight (``weight_orig * weight_mask`` while torch's pruning is attached)."""
    return module.weight.detach()


def nonzero_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs per sample of conv/linear layers, counting only non-zero weights:
    per layer, dense MACs x fraction of non-zero weights."""
    positions = weight_positions(model, example_inputs)
    layers = weighted_layers(model)
    return int(round(sum(int((_weight(layers[n]) != 0).sum()) * p for n, p in positions.items())))


def sparsity(model: nn.Module) -> float:
    weights = [_weight(m) for m in weighted_layers(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def magnitude_prune(
    model: nn.Module, example_inputs: Any, flops: float, per_layer: bool = False
) -> dict[str, Any]:
    """Attach L1-magnitude masks (``torch.nn.utils.prune``) to every conv/linear weight, in place, so
    that :func:`nonzero_macs` <= ``flops`` x dense MACs.

    Per layer, ``numel - floor(flops x numel)`` weights are removed (then the bound holds layer by
    layer). Globally, weights are ranked by magnitude across layers and the ``k`` smallest removed, with
    ``k`` the smallest count whose removed MACs (each weight costs its layer's positions) reach the
    required saving. The masks stay attached (call :func:`make_permanent` after fine-tuning).

    Returns:
        ``{"sparsity", "nonzero_macs", "macs", "pruned_weights"}``.
    """
    if not 0.0 < flops <= 1.0:
        raise NasPruneError(f"--budget-flops must be a fraction in (0, 1], got {flops}")
    positions = weight_positions(model, example_inputs)
    layers = weighted_layers(model)
    dense = sum(layers[n].weight.numel() * p for n, p in positions.items())
    if per_layer:
        for module in layers.values():
            numel = module.weight.numel()
            torch_prune.l1_unstructured(module, "weight", amount=numel - math.floor(flops * numel))
    else:
        names = list(layers)
        mags = torch.cat([layers[n].weight.detach().abs().flatten().cpu() for n in names])
        cost = torch.cat([torch.full((layers[n].weight.numel(),), positions[n]) for n in names]).double()
        saved = torch.cumsum(cost[torch.argsort(mags, stable=True)], 0)
        need = (1.0 - flops) * dense
        k = 0 if need <= 0 else min(len(saved), int(torch.searchsorted(saved, need - 1e-6)) + 1)
        state = copy.deepcopy(model.state_dict())
        while True:  # torch's top-k may break magnitude ties differently: add a few weights if needed
            torch_prune.global_unstructured(
                [(layers[n], "weight") for n in names], torch_prune.L1Unstructured, amount=k
            )
            if nonzero_macs(model, example_inputs) <= flops * dense + 1e-6 or k >= len(saved):
                break
            make_permanent(model)
            model.load_state_dict(state)
            k = min(len(saved), k + max(1, len(saved) // 1000))
    return {
        "sparsity": sparsity(model),
        "nonzero_macs": nonzero_macs(model, example_inputs),
        "macs": int(round(dense)),
        "pruned_weights": sum(int((_weight(m) == 0).sum()) for m in layers.values()),
    }


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove torch's pruning reparametrisation: masked weights become plain zeros."""
    for module in weighted_layers(model).values():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
    return model


# ---------------------------------------------------------------------------------------------------
# Structured helpers: pruning and zeroing chosen channels
# ---------------------------------------------------------------------------------------------------


def _drops(scores: Mapping[str, torch.Tensor], widths: Mapping[str, int]) -> dict[str, list[int]]:
    """Root channel indices to drop per group: the lowest-scored beyond each group's width (ties: the
    later channel goes, as in :func:`nas_prune.prune`)."""
    drops = {}
    for name, s in scores.items():
        keep = int(widths.get(name, len(s)))
        if keep < len(s):
            order = torch.argsort(s, descending=True, stable=True)
            drops[name] = sorted(order[keep:].tolist())
    return drops


def prune_channels(
    model: nn.Module, example_inputs: torch.Tensor, drops: Mapping[str, Sequence[int]]
) -> nn.Module:
    """A physically slimmer copy of ``model`` without the given root channels of each group.

    Like :func:`nas_prune.prune`, but the channels are given instead of ranked here, so they can be
    chosen on one set of weights (trained) and cut from another (the initialisation).
    """
    slim = copy.deepcopy(model)
    graph = ChannelGraph(slim, example_inputs)
    for name, drop in drops.items():
        if drop:
            graph.tp_group(name, list(drop)).prune(record_history=False)
    return slim


@torch.no_grad()
def zero_filters(
    model: nn.Module, example_inputs: torch.Tensor, widths: Mapping[str, int]
) -> dict[str, list[int]]:
    """Soft filter pruning's step: zero, in place, the conv/linear filters of the lowest-L2 channels of
    every group beyond ``widths``. BatchNorm is left alone, so the zeroed filters still get gradients.

    Returns:
        The dropped root channels per group (pass them to :func:`prune_channels`).
    """
    drops = _drops(channel_importance(model, example_inputs, "l2"), widths)
    probe = copy.deepcopy(model)
    graph = ChannelGraph(probe, example_inputs)
    names = {m: n for n, m in probe.named_modules()}
    live = dict(model.named_modules())
    for group, drop in drops.items():
        for item in graph.tp_group(group, drop):
            module = item.dep.target.module
            if not isinstance(module, _WEIGHTED) or not graph.dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            target = live[names[module]]
            if getattr(target, "transposed", False):
                target.weight[:, item.idxs] = 0
            else:
                target.weight[item.idxs] = 0
            if target.bias is not None:
                target.bias[item.idxs] = 0
    return drops


def structured_ticket(
    trained: nn.Module, initial: nn.Module, example_inputs: torch.Tensor, widths: Mapping[str, int]
) -> nn.Module:
    """The structured winning ticket: channels ranked by L2 on ``trained``, values from ``initial``."""
    return prune_channels(
        initial, example_inputs, _drops(channel_importance(trained, example_inputs), widths)
    )


def unstructured_ticket(
    trained: nn.Module,
    initial: nn.Module,
    example_inputs: torch.Tensor,
    flops: float,
    per_layer: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The unstructured winning ticket: a magnitude mask found on ``trained`` attached to a copy of
    ``initial`` (reparametrisation kept, so retraining keeps the mask)."""
    probe = copy.deepcopy(trained)
    info = magnitude_prune(probe, example_inputs, flops, per_layer)
    ticket = copy.deepcopy(initial)
    masks = {n: m.weight_mask for n, m in weighted_layers(probe).items()}
    for name, module in weighted_layers(ticket).items():
        torch_prune.custom_from_mask(module, "weight", masks[name].to(module.weight.device))
    return ticket, info


def iterative_targets(flops: float, step: float) -> list[float]:
    """FLOPs ratios of iterative pruning: ``r_{k+1} = max(flops, r_k (1 - step))`` from ``r_0 = 1``
    until ``flops`` is reached; its length is the smallest ``k`` with ``(1 - step)^k <= flops``."""
    if not 0.0 < step < 1.0:
        raise NasPruneError(f"--step must be in (0, 1), got {step}")
    targets, r = [], 1.0
    while r > flops:
        r = max(flops, r * (1.0 - step))
        targets.append(r)
    return targets
