"""The six methods (module docstring of :mod:`nas_prune.baselines`), each ``fn(Context) -> Outcome``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ..checkpoint import load_checkpoint, save_checkpoint
from ..cost import count_macs
from ..models import MODELS
from ..prune import prune
from ..retrain.weights import reinitialize
from ..train import seed_everything
from .context import FINETUNE_LR, SCRATCH_LR, Context, Outcome, group_widths
from .primitives import (
    iterative_targets,
    magnitude_prune,
    make_permanent,
    nonzero_macs,
    prune_channels,
    sparsity,
    structured_ticket,
    unstructured_ticket,
    zero_filters,
)

__all__ = ["RUNNERS", "UNSTRUCTURED"]


def _l1_unstructured(ctx: Context) -> Outcome:
    model = copy.deepcopy(ctx.dense)
    info = magnitude_prune(model, ctx.example, ctx.s.budget_flops, ctx.s.per_layer)
    ctx.say(
        f"{'per-layer' if ctx.s.per_layer else 'global'} magnitude pruning: sparsity {info['sparsity']:.3f}, "
        f"non-zero MACs {info['nonzero_macs'] / info['macs']:.3f} of dense. Dense kernels do not get "
        "faster with zeros: the latency below is measured anyway and stays that of the dense model."
    )
    history = ctx.fit(model, ctx.s.epochs, FINETUNE_LR, "finetune")  # the mask stays attached
    make_permanent(model)
    extra = {"sparsity": sparsity(model), "nonzero_macs": nonzero_macs(model, ctx.example)}
    return Outcome(model, group_widths(model, ctx.example), "inherit", ctx.s.epochs, history, extra)


def _l2_structured(ctx: Context) -> Outcome:
    widths = ctx.widths_for(ctx.dense, ctx.s.budget_flops, uniform=ctx.s.uniform)
    slim = ctx.adapt_bn(prune(ctx.dense, ctx.example, widths, "l2"))
    history = ctx.fit(slim, ctx.s.epochs, FINETUNE_LR, "finetune")
    return Outcome(
        slim, widths, "inherit", ctx.s.epochs, history, {"allocation": "uniform" if ctx.s.uniform else "l2"}
    )


def _iterative_l2(ctx: Context) -> Outcome:
    dense_macs = count_macs(ctx.dense, ctx.example)[0]
    model, history, targets = ctx.dense, [], iterative_targets(ctx.s.budget_flops, ctx.s.step)
    for k, target in enumerate(targets, start=1):
        current = count_macs(model, ctx.example)[0]
        fraction = target * dense_macs / current
        if fraction < 1.0:
            model = ctx.adapt_bn(prune(model, ctx.example, ctx.widths_for(model, fraction), "l2"))
        ratio = count_macs(model, ctx.example)[0] / dense_macs
        ctx.say(f"step {k}/{len(targets)}: target {target:.4f}, FLOPs ratio {ratio:.4f}")
        if k < len(targets):  # a rerun replays the pruning from each finished step's weights
            history += ctx.fit(model, ctx.s.epochs_between, FINETUNE_LR, f"step{k}", seed=k)
    history += ctx.fit(model, ctx.s.epochs, FINETUNE_LR, "finetune")
    extra = {"steps": len(targets), "step": ctx.s.step, "epochs_between": ctx.s.epochs_between,
             "epochs_total": ctx.s.epochs + ctx.s.epochs_between * (len(targets) - 1)}  # fmt: skip
    return Outcome(model, group_widths(model, ctx.example), "inherit", ctx.s.epochs, history, extra)


def _soft_filter(ctx: Context) -> Outcome:
    s = ctx.s
    widths = ctx.widths_for(ctx.dense, s.budget_flops)
    finetune = s.epochs * s.finetune_share
    soft = s.epochs - finetune
    model = copy.deepcopy(ctx.dense)

    def zero(_epoch: int, row: dict[str, Any]) -> None:
        if row["epoch"] < soft - 1e-6:  # the last zeroing comes after the phase (also after a resume)
            zero_filters(model, ctx.example, widths)

    ctx.say(f"Soft phase: {soft:g} epochs, the lowest-L2 filters zeroed after each ...")
    history = ctx.fit(model, soft, FINETUNE_LR, "soft", before_checkpoint=zero)
    drops = zero_filters(model, ctx.example, widths)
    masked = ctx.val_accuracy(ctx.adapt_bn(copy.deepcopy(model)))
    slim = ctx.adapt_bn(prune_channels(model, ctx.example, drops))
    cut = ctx.val_accuracy(slim)
    ctx.say(
        f"Hard cut of the zeroed filters (BatchNorm re-estimated): val acc {masked:.4f} masked -> "
        f"{cut:.4f} cut; fine-tuning the slim network for {finetune:g} epochs ..."
    )
    history += ctx.fit(slim, finetune, FINETUNE_LR, "finetune", seed=1)
    extra = {"soft_epochs": soft, "finetune_epochs": finetune, "val_accuracy_masked": masked,
             "val_accuracy_cut": cut}  # fmt: skip
    return Outcome(slim, widths, "inherit", s.epochs, history, extra)


def _lottery_ticket(ctx: Context) -> Outcome:
    s = ctx.s
    seed_everything(s.seed)
    initial = ctx.fresh_model().to(ctx.device)  # theta0: the same for the same seed on a rerun
    rewind = copy.deepcopy(initial)
    dense = copy.deepcopy(initial)
    rewind_path = ctx.phases / "rewind.pt"

    def remember(_epoch: int, metrics: dict[str, Any]) -> None:
        if s.rewind_epoch and abs(metrics["epoch"] - s.rewind_epoch) < 1e-6:
            save_checkpoint(rewind_path, dense, ctx.spec, epochs=metrics["epoch"])

    ctx.say(f"Training the dense {s.model} from theta0 for {s.epochs:g} epochs ...")
    history = ctx.fit(dense, s.epochs, SCRATCH_LR, "dense", before_checkpoint=remember)
    if s.rewind_epoch:
        rewind.load_state_dict(load_checkpoint(rewind_path)["state_dict"])
    ctx.dense, ctx.dense_epochs = dense.eval(), s.epochs
    if s.unstructured:
        ticket, info = unstructured_ticket(dense, rewind, ctx.example, s.budget_flops, s.per_layer)
    else:
        ticket = structured_ticket(dense, rewind, ctx.example, ctx.widths_for(dense, s.budget_flops))
    history += ctx.fit(ticket, s.epochs, SCRATCH_LR, "ticket", seed=1)
    make_permanent(ticket)
    extra: dict[str, Any] = {
        "rewind_epoch": s.rewind_epoch,
        "ticket": "unstructured" if s.unstructured else "structured",
    }
    if s.unstructured:
        extra.update(sparsity=sparsity(ticket), nonzero_macs=nonzero_macs(ticket, ctx.example))
    init = "rewind" if s.rewind_epoch else "theta0"
    return Outcome(ticket, group_widths(ticket, ctx.example), init, s.epochs, history, extra)


def _uniform_scratch(ctx: Context) -> Outcome:
    widths = ctx.widths_for(ctx.dense, ctx.s.budget_flops, uniform=True)
    zoo = ctx.model_object is None and ctx.s.model in MODELS
    slim = reinitialize(prune(ctx.dense, ctx.example, widths, "l2"), ctx.s.seed, zoo)
    history = ctx.fit(slim, ctx.s.epochs, SCRATCH_LR, "scratch")
    return Outcome(slim, widths, "scratch", ctx.s.epochs, history)


RUNNERS: dict[str, Callable[[Context], Outcome]] = {
    "l1-unstructured": _l1_unstructured,
    "l2-structured": _l2_structured,
    "iterative-l2": _iterative_l2,
    "soft-filter": _soft_filter,
    "lottery-ticket": _lottery_ticket,
    "uniform-scratch": _uniform_scratch,
}
UNSTRUCTURED = ("l1-unstructured",)
