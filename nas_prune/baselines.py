"""The pruning methods of the literature, run to a FLOPs budget as baselines for the width search.

``python -m nas_prune.baselines METHOD --budget-flops F`` with METHOD one of:

* ``l1-unstructured``: magnitude pruning of every conv/linear weight (global ranking, or
  ``--per-layer``) with ``torch.nn.utils.prune``. The sparsity is chosen so that the *non-zero* MACs
  (per layer: dense MACs x fraction of non-zero weights) are at most ``F`` x dense MACs. The mask is
  kept during fine-tuning (torch's ``weight = weight_orig * weight_mask`` reparametrisation) and made
  permanent afterwards. Dense kernels do not get faster: latency is measured anyway and shows it.
* ``l2-structured``: one shot to the budget with the global L2 allocation (``nas_prune.seeds.l2_seed``;
  ``--uniform``: one equal fraction per layer), adaptive BN, fine-tune.
* ``iterative-l2``: FLOPs targets ``r_{k+1} = max(F, r_k (1 - step))`` from ``r_0 = 1``; each step
  allocates widths by L2 on the *current* (already pruned) model, prunes, adapts BN and fine-tunes
  ``--epochs-between``; the last step is followed by the final ``--epochs``. The number of steps is the
  smallest ``k`` with ``(1 - step)^k <= F`` (:func:`iterative_targets`).
* ``soft-filter`` (He et al. 2018): a soft phase of ``(1 - --finetune-share) x --epochs`` trains the
  dense network, zeroing after each epoch the conv/linear filters of the lowest-L2 channels of every
  group (widths: L2 allocation). BatchNorm is left alone, so zeroed filters keep receiving gradients and
  may recover. Then the channels zeroed last are cut, BatchNorm statistics re-estimated and the slim
  network fine-tuned for ``--finetune-share x --epochs`` (SFP's fine-tuned variant): as many epochs in
  all as the other methods. No folding: a zeroed filter still emits the constant ``ReLU(BN(0))``, and
  folding it into the next layer's bias is not exact at zero-padded borders or through a residual add;
  re-estimating the next BatchNorm's mean absorbs it in the interior (``val_accuracy_masked`` and
  ``val_accuracy_cut`` in metrics.json show what the cut costs). Default share 0.5: with few epochs the
  zeroed filters regrow within each epoch and the soft phase barely prepares the network for the cut
  (convnet, Fashion-MNIST subset 20,000, 3 epochs, 30% of the FLOPs: validation accuracy 0.76 with a
  third, 0.80 with half, l2-structured 0.84; 0.34 test accuracy without any fine-tuning).
* ``lottery-ticket`` (Frankle & Carbin 2019): save ``theta0``, train dense ``--epochs`` (optionally
  rewinding to ``--rewind-epoch``), find the structured (L2 widths to the budget) or ``--unstructured``
  (magnitude mask) ticket on the trained weights, reset the survivors to ``theta0``, retrain. The dense
  model must start from the ticket's ``theta0``, so ``--checkpoint`` is ignored, with a warning and a
  line in metrics.json's ``notes``.
* ``uniform-scratch``: the uniform widths that meet the budget, random init, trained from scratch.

Resuming: every training phase (dense pre-training, fine-tuning, each iterative step, the soft phase,
the ticket) checkpoints after every (partial) epoch in ``OUTPUT/phases/<phase>/`` with retrain's
resumable loop, so rerunning an interrupted command continues from the last finished epoch (finished
phases only reload their weights; the cheap pruning steps between them are replayed). A finished run
(``metrics.json`` with the same settings) is not recomputed; ``--force`` starts over.

Output (``--output``, default ``results/baselines/<method>-<model>-<dataset>-flops<F>-seed<S>/``):
``metrics.json`` shaped like retrain's (plus ``method, steps, sparsity, nonzero_macs, widths``) and
``model.pt`` (:func:`nas_prune.retrain.save_pruned`; for unstructured methods the dense architecture
with zeroed weights). The test split is read once, at the end.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from .atomic import atomic_write_text
from .checkpoint import load_checkpoint, save_checkpoint, save_pruned, settings_mismatch
from .cli import ArgumentParser, ensure_output_dir, run_cli
from .cost import CostModel, count_macs, measure_latency
from .data import DataSplits, check_dataset_name, load_dataset
from .errors import NasPruneError
from .graph import ChannelGraph, channel_groups
from .models import MODELS, build_from_spec, default_model, load_search_space, model_spec
from .objective import adapt_batchnorm
from .prune import channel_importance, prune
from .retrain import METRICS_SCHEMA_VERSION, final_accuracy, final_costs, reinitialize
from .seeds import SeedContext, l2_seed, uniform_seed
from .space import Budget, WidthSpace
from .train import (
    Checkpointing,
    epoch_reporter,
    evaluate,
    fit,
    resolve_device,
    resumed_epochs,
    seed_everything,
)

__all__ = [
    "FINETUNE_SHARE",
    "METHODS",
    "BaselineSettings",
    "iterative_targets",
    "magnitude_prune",
    "main",
    "make_permanent",
    "nonzero_macs",
    "prune_channels",
    "run_baseline",
    "structured_ticket",
    "unstructured_ticket",
    "weight_positions",
    "zero_filters",
]

METHODS = (
    "l1-unstructured",
    "l2-structured",
    "iterative-l2",
    "soft-filter",
    "lottery-ticket",
    "uniform-scratch",
)
FINETUNE_LR, SCRATCH_LR = 0.01, 0.1
FINETUNE_SHARE = 0.5  # soft-filter: share of --epochs spent fine-tuning the slim network after the cut
BN_BATCHES = 20
CHECKPOINT = "checkpoint.pt"
PHASES = "phases"  # OUTPUT/phases/<phase>/checkpoint.pt: per-epoch checkpoints of an unfinished run
_REMEDY = "pass --force to start over or --output DIR"
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


# ---------------------------------------------------------------------------------------------------
# Unstructured magnitude pruning and non-zero MACs
# ---------------------------------------------------------------------------------------------------


def _weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _WEIGHTED)}


def weight_positions(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, float]:
    """Per conv/linear layer: MACs per sample contributed by each of its weights.

    A conv weight is used once per output position (``H_out x W_out``), a linear weight once per
    sample (per leading position), so ``sum(weight.numel() * positions)`` is ``count_macs``'s total.
    """
    # No deep copy: a model under torch's pruning reparametrisation cannot be deep-copied. Eval mode
    # and no_grad leave BatchNorm statistics and gradients untouched; the mode is restored.
    positions: dict[str, float] = {}
    batch = example_inputs.shape[0]

    def hook(name: str, module: nn.Module):
        def record(_module, _inputs, output):
            channels = output.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else output.shape[-1]
            positions[name] = output.numel() / channels / batch

        return record

    was_training = model.training
    handles = [m.register_forward_hook(hook(n, m)) for n, m in _weighted_layers(model).items()]
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return positions


def _weight(module: nn.Module) -> torch.Tensor:
    """The effective weight (``weight_orig * weight_mask`` while torch's pruning is attached)."""
    return module.weight.detach()


def nonzero_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """MACs per sample of conv/linear layers, counting only non-zero weights:
    per layer, dense MACs x fraction of non-zero weights."""
    positions = weight_positions(model, example_inputs)
    layers = _weighted_layers(model)
    return int(round(sum(int((_weight(layers[n]) != 0).sum()) * p for n, p in positions.items())))


def _sparsity(model: nn.Module) -> float:
    weights = [_weight(m) for m in _weighted_layers(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def magnitude_prune(
    model: nn.Module, example_inputs: torch.Tensor, flops: float, per_layer: bool = False
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
    layers = _weighted_layers(model)
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
        "sparsity": _sparsity(model),
        "nonzero_macs": nonzero_macs(model, example_inputs),
        "macs": int(round(dense)),
        "pruned_weights": sum(int((_weight(m) == 0).sum()) for m in layers.values()),
    }


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove torch's pruning reparametrisation: masked weights become plain zeros."""
    for module in _weighted_layers(model).values():
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
    masks = {n: m.weight_mask for n, m in _weighted_layers(probe).items()}
    for name, module in _weighted_layers(ticket).items():
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


# ---------------------------------------------------------------------------------------------------
# Settings and shared context
# ---------------------------------------------------------------------------------------------------


@dataclass
class BaselineSettings:
    """Every setting of a baseline run (the CLI flags); written to ``metrics.json`` as ``settings``."""

    method: str
    budget_flops: float
    model: str | None = None
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None
    checkpoint: str | None = None
    pretrain_epochs: float = 1.0
    epochs: float = 1.0
    epochs_between: float = 0.1
    step: float = 0.05
    finetune_share: float = FINETUNE_SHARE
    per_layer: bool = False
    uniform: bool = False
    unstructured: bool = False
    rewind_epoch: int = 0
    seed: int = 0
    device: str = "auto"
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = 5e-4
    latency_batch: int = 1
    latency_batch_large: int = 256
    output: str | None = None
    progress: bool = True

    def validate(self) -> BaselineSettings:
        """Check everything cheap before heavy work; fill the default model. Raises NasPruneError."""
        if self.method not in METHODS:
            raise NasPruneError(f"unknown method {self.method!r}; choose {', '.join(METHODS)}")
        Budget(flops=self.budget_flops)  # (0, 1] or a NasPruneError
        dataset = check_dataset_name(self.dataset)
        model = self.model or default_model(dataset)
        if ":" not in model and model not in MODELS:
            raise NasPruneError(f"unknown model {model!r}; choose {', '.join(MODELS)} or pkg.module:factory")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise NasPruneError(f"checkpoint {self.checkpoint} does not exist")
        for name in ("epochs", "epochs_between"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise NasPruneError(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
        if not 0.0 <= self.finetune_share <= 1.0:
            raise NasPruneError(f"--finetune-share must be in [0, 1], got {self.finetune_share}")
        if not (math.isfinite(self.pretrain_epochs) and self.pretrain_epochs > 0):
            raise NasPruneError(f"--pretrain-epochs must be positive, got {self.pretrain_epochs}")
        if self.method == "iterative-l2":
            iterative_targets(self.budget_flops, self.step)
        if self.method == "lottery-ticket" and not (
            0 <= self.rewind_epoch and (self.rewind_epoch == 0 or self.rewind_epoch < self.epochs)
        ):
            raise NasPruneError(f"--rewind-epoch must be in [0, --epochs), got {self.rewind_epoch}")
        if self.method == "lottery-ticket" and self.epochs <= 0:
            raise NasPruneError("lottery-ticket needs --epochs > 0 (the dense training)")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise NasPruneError(f"--lr must be positive, got {self.lr}")
        resolve_device(self.device)
        self.model, self.dataset = model, dataset
        return self

    def output_dir(self) -> Path:
        if self.output:
            return Path(self.output)
        model = str(self.model).replace(":", "-").replace(".", "-")
        name = f"{self.method}-{model}-{self.dataset}-flops{self.budget_flops:g}-seed{self.seed}"
        return Path("results") / "baselines" / name


@dataclass
class _Context:
    s: BaselineSettings
    data: DataSplits
    spec: dict[str, Any]
    example: torch.Tensor
    device: torch.device
    say: Callable[[str], None]
    quiet: bool
    dense: nn.Module | None = None
    dense_epochs: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def phases(self) -> Path:
        return self.s.output_dir() / PHASES

    def fit(
        self,
        model: nn.Module,
        epochs: float,
        lr: float,
        phase: str,
        seed: int = 0,
        before_checkpoint: Callable[[int, dict[str, Any]], Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Train ``model`` for ``epochs`` (nothing for 0) as the resumable phase ``phase``.

        Retrain's loop: a checkpoint after every (partial) epoch in ``OUTPUT/phases/<phase>/``; a rerun
        continues it, and a finished phase only reloads its weights. ``before_checkpoint(epoch, row)``
        may change the model after each epoch; the change is checkpointed.
        """
        if epochs <= 0:
            return []
        settings = {
            "phase": phase, "epochs": float(epochs), "lr": float(self.s.lr or lr),
            "batch_size": int(self.s.batch_size), "weight_decay": float(self.s.weight_decay),
            "seed": int(self.s.seed + seed),
        }  # fmt: skip
        path = self.phases / phase / CHECKPOINT
        if resumed_epochs(path) and not self.quiet:
            print(
                f"Resuming {phase} after {resumed_epochs(path):g} of {epochs:g} epochs (from {path})",
                flush=True,
            )
        return fit(
            model, self.data, epochs=epochs, batch_size=settings["batch_size"], lr=settings["lr"],
            weight_decay=settings["weight_decay"], device=self.device, seed=settings["seed"],
            progress=self.s.progress, on_epoch_end=epoch_reporter(None if self.quiet else self.say, epochs),
            checkpoint=Checkpointing(path, settings, self.spec, before_checkpoint),
        )  # fmt: skip

    def val_accuracy(self, model: nn.Module) -> float:
        loader = self.data.loader("val", 512, train=False, device=self.device)
        return evaluate(model.to(self.device), loader, device=self.device)["accuracy"]

    def adapt_bn(self, model: nn.Module) -> nn.Module:
        loader = self.data.loader(
            "train", self.s.batch_size, train=True, seed=self.s.seed, device=self.device
        )
        adapt_batchnorm(model.to(self.device), loader, BN_BATCHES, self.device)
        return model

    def widths_for(self, model: nn.Module, flops: float, uniform: bool = False) -> dict[str, int]:
        """Widths of ``model``'s groups with at most ``flops`` x its MACs (L2 allocation or uniform)."""
        yaml_space = load_search_space(self.s.model) or {}
        space = WidthSpace.build(
            channel_groups(model, self.example),
            round_to=yaml_space.get("round_to", 1),
            min_fraction=yaml_space.get("min_fraction", 0.1),
            grid=yaml_space.get("grid"),
            frozen=yaml_space.get("frozen", ()),
        )
        ctx = SeedContext(model, self.example, space, CostModel(model, self.example), Budget(flops=flops))
        widths = (uniform_seed if uniform else l2_seed)(ctx)
        if widths is None:
            raise NasPruneError(
                f"no width choice of {self.s.model} meets {flops:.3f} of the FLOPs "
                f"(min_fraction {space.smallest()})"
            )
        return widths


@dataclass
class _Outcome:
    model: nn.Module
    widths: dict[str, int]
    init: str
    epochs: float
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _load_dense(ctx: _Context) -> None:
    """The dense model: ``--checkpoint`` or trained for ``--pretrain-epochs`` (saved as dense.pt)."""
    s, model = ctx.s, build_from_spec(ctx.spec)
    if s.checkpoint:
        ckpt = load_checkpoint(s.checkpoint)
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1].strip()
            raise NasPruneError(
                f"checkpoint {s.checkpoint} does not fit model {s.model!r}: {first}"
            ) from None
        epochs = ckpt.get("epochs")
        ctx.dense_epochs = float(epochs) if isinstance(epochs, (int, float)) else None
    else:
        ctx.say(f"Training the dense {s.model} for {s.pretrain_epochs:g} epochs ...")
        seed_everything(s.seed)
        model = build_from_spec(ctx.spec)
        ctx.fit(model, s.pretrain_epochs, SCRATCH_LR, "dense")
        save_checkpoint(s.output_dir() / "dense.pt", model.cpu(), ctx.spec, epochs=s.pretrain_epochs)
        ctx.dense_epochs = s.pretrain_epochs
    ctx.dense = model.to(ctx.device).eval()


def _group_widths(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    return {g.name: g.channels for g in channel_groups(model, example)}


# ---------------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------------


def _l1_unstructured(ctx: _Context) -> _Outcome:
    model = copy.deepcopy(ctx.dense)
    info = magnitude_prune(model, ctx.example, ctx.s.budget_flops, ctx.s.per_layer)
    ctx.say(
        f"{'per-layer' if ctx.s.per_layer else 'global'} magnitude pruning: sparsity {info['sparsity']:.3f}, "
        f"non-zero MACs {info['nonzero_macs'] / info['macs']:.3f} of dense. Dense kernels do not get "
        "faster with zeros: the latency below is measured anyway and stays that of the dense model."
    )
    history = ctx.fit(model, ctx.s.epochs, FINETUNE_LR, "finetune")  # the mask stays attached
    make_permanent(model)
    extra = {"sparsity": _sparsity(model), "nonzero_macs": nonzero_macs(model, ctx.example)}
    return _Outcome(model, _group_widths(model, ctx.example), "inherit", ctx.s.epochs, history, extra)


def _l2_structured(ctx: _Context) -> _Outcome:
    widths = ctx.widths_for(ctx.dense, ctx.s.budget_flops, uniform=ctx.s.uniform)
    slim = ctx.adapt_bn(prune(ctx.dense, ctx.example, widths, "l2"))
    history = ctx.fit(slim, ctx.s.epochs, FINETUNE_LR, "finetune")
    return _Outcome(
        slim, widths, "inherit", ctx.s.epochs, history, {"allocation": "uniform" if ctx.s.uniform else "l2"}
    )


def _iterative_l2(ctx: _Context) -> _Outcome:
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
    return _Outcome(model, _group_widths(model, ctx.example), "inherit", ctx.s.epochs, history, extra)


def _soft_filter(ctx: _Context) -> _Outcome:
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
    return _Outcome(slim, widths, "inherit", s.epochs, history, extra)


def _lottery_ticket(ctx: _Context) -> _Outcome:
    s = ctx.s
    seed_everything(s.seed)
    initial = build_from_spec(ctx.spec).to(ctx.device)  # theta0: the same for the same seed on a rerun
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
        extra.update(sparsity=_sparsity(ticket), nonzero_macs=nonzero_macs(ticket, ctx.example))
    init = "rewind" if s.rewind_epoch else "theta0"
    return _Outcome(ticket, _group_widths(ticket, ctx.example), init, s.epochs, history, extra)


def _uniform_scratch(ctx: _Context) -> _Outcome:
    widths = ctx.widths_for(ctx.dense, ctx.s.budget_flops, uniform=True)
    slim = reinitialize(prune(ctx.dense, ctx.example, widths, "l2"), ctx.s.seed, ctx.s.model in MODELS)
    history = ctx.fit(slim, ctx.s.epochs, SCRATCH_LR, "scratch")
    return _Outcome(slim, widths, "scratch", ctx.s.epochs, history)


_RUNNERS: dict[str, Callable[[_Context], _Outcome]] = {
    "l1-unstructured": _l1_unstructured,
    "l2-structured": _l2_structured,
    "iterative-l2": _iterative_l2,
    "soft-filter": _soft_filter,
    "lottery-ticket": _lottery_ticket,
    "uniform-scratch": _uniform_scratch,
}
UNSTRUCTURED = ("l1-unstructured",)


# ---------------------------------------------------------------------------------------------------
# run_baseline: the Python API
# ---------------------------------------------------------------------------------------------------


def _resume_key(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that must match for a rerun to reuse a run's results (not its display or folder)."""
    return {k: v for k, v in settings.items() if k not in ("progress", "output")}


def _claim(out: Path, key: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The finished run's metrics if ``out`` holds one with these settings; else prepare ``out``.

    Without ``force``, a finished or interrupted run with other settings is an error (nothing is
    overwritten); with it, the old results and checkpoints are deleted.
    """
    metrics_path, state = out / "metrics.json", out / PHASES / "settings.json"
    if force:
        metrics_path.unlink(missing_ok=True)
        shutil.rmtree(out / PHASES, ignore_errors=True)
    if metrics_path.is_file():
        try:
            done = json.loads(metrics_path.read_text())
            old = _resume_key(done["settings"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise NasPruneError(f"{metrics_path} is unreadable; pass --force to redo the run") from None
        if old != key:
            raise NasPruneError(settings_mismatch(out, "a finished run", old, key, _REMEDY))
        return done
    if state.is_file() and any((out / PHASES).glob("*/checkpoint.pt")):  # work that must not be mixed
        try:
            old = json.loads(state.read_text())
        except (OSError, ValueError):
            old = {}
        if old != key:
            raise NasPruneError(settings_mismatch(out, "an interrupted run", old, key, _REMEDY))
    atomic_write_text(state, json.dumps(key, indent=2) + "\n")
    return None


def run_baseline(
    settings: BaselineSettings,
    *,
    latency_fn: Callable[..., float] | None = None,
    quiet: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Run one baseline method to its FLOPs budget and write ``metrics.json`` and ``model.pt``.

    A run interrupted in a training phase continues from its last finished epoch when called again with
    the same settings; a finished one is not recomputed (its metrics are returned).

    Args:
        settings: the method and its settings (validated here, before any heavy work).
        latency_fn: ``fn(model, example, device=, batch=, **kw) -> ms`` (default
            :func:`nas_prune.measure_latency`); tests inject a fake.
        quiet: print nothing.
        force: delete the output folder's results and checkpoints and start over.

    Returns:
        The content of ``metrics.json`` plus ``output`` (the folder).
    """
    s = settings.validate()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    latency_fn = latency_fn or measure_latency
    device = resolve_device(s.device)
    out = ensure_output_dir(s.output_dir())
    done = _claim(out, _resume_key(asdict(s)), force)
    if done is not None:
        say(f"{out} already holds this run (metrics.json); not recomputing it (--force to redo).")
        return {**done, "output": str(out)}
    data = load_dataset(s.dataset, s.data_dir, seed=0, subset=s.subset)
    spec = model_spec(s.model, data.in_channels, data.num_classes, data.input_shape)
    example = torch.zeros(2, *data.input_shape, device=device)
    ctx = _Context(s, data, spec, example, device, say, quiet)
    if s.method == "lottery-ticket" and s.checkpoint:
        note = (
            f"--checkpoint {s.checkpoint} is ignored: lottery-ticket trains its own dense model from the "
            "initialisation theta0 its ticket is reset to"
        )
        warnings.warn(note, stacklevel=2)
        ctx.notes.append(note)
    try:
        if s.method != "lottery-ticket":
            _load_dense(ctx)
        start = time.perf_counter()
        seed_everything(s.seed)
        outcome = _RUNNERS[s.method](ctx)
    except KeyboardInterrupt:
        if not quiet:
            print(
                f"Interrupted: rerun the same command to continue from the last finished epoch "
                f"({ctx.phases}).",
                file=sys.stderr,
            )
        raise
    wall = time.perf_counter() - start
    slim = outcome.model.to(device).eval()

    # Final figures: the only use of the test split.
    say("Measuring test accuracy and latency of the dense and the pruned model ...")
    dense_counts, slim_counts = count_macs(ctx.dense, example), count_macs(slim, example)
    large = int(s.latency_batch_large)
    dense_costs, slim_costs, speed = final_costs(
        ctx.dense, slim, (dense_counts, slim_counts), example, device, latency_fn, s.latency_batch, large
    )
    dense_fig = {**final_accuracy(ctx.dense, data, device, s.batch_size), **dense_costs}
    slim_fig = {**final_accuracy(slim, data, device, s.batch_size), **slim_costs}
    flops_ratio = slim_fig["flops"] / dense_fig["flops"]
    if s.method not in UNSTRUCTURED and not (s.method == "lottery-ticket" and s.unstructured):
        if flops_ratio > s.budget_flops + 1e-9:
            raise RuntimeError(
                f"{s.method} left {flops_ratio:.4f} of the FLOPs, over the budget {s.budget_flops}"
            )
    save_pruned(out / "model.pt", slim.cpu(), outcome.widths, spec, "l2")
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "name": out.name,
        "method": s.method,
        **slim_fig,
        "epochs": outcome.epochs,
        "init": outcome.init,
        "seed": s.seed,
        "widths": outcome.widths,
        "steps": outcome.extra.pop("steps", 1),
        "sparsity": outcome.extra.pop("sparsity", None),
        "nonzero_macs": outcome.extra.pop("nonzero_macs", None),
        "budget_flops": s.budget_flops,
        "flops_ratio": flops_ratio,
        "params_ratio": slim_fig["params"] / dense_fig["params"],
        **speed,
        "model": s.model,
        "dataset": s.dataset,
        **outcome.extra,
        "notes": ctx.notes,
        "model_file": "model.pt",
        "wall_s": wall,
        "history": outcome.history,
        "dense": {**dense_fig, "epochs": ctx.dense_epochs, "init": "dense", "seed": s.seed},
        "settings": asdict(s),
    }
    if metrics["nonzero_macs"] is not None:
        metrics["nonzero_flops_ratio"] = metrics["nonzero_macs"] / dense_fig["macs"]
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(ctx.phases, ignore_errors=True)
    ratio = metrics.get("nonzero_flops_ratio", flops_ratio)
    say(
        f"{s.method}: test acc {slim_fig['test_accuracy']:.4f} (dense {dense_fig['test_accuracy']:.4f}), "
        f"{'non-zero ' if 'nonzero_flops_ratio' in metrics else ''}FLOPs ratio {ratio:.3f}, "
        f"speed-up {metrics['speedup']:.2f}x -> {out}/"
    )
    return {**metrics, "output": str(out)}


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m nas_prune.baselines",
        description="Prune with a method of the literature to a FLOPs budget, fine-tune and report "
        "(metrics.json, model.pt) in results/baselines/<method>-<model>-<dataset>-flops<F>-seed<S>/.",
    )
    d = BaselineSettings(method="", budget_flops=1.0)
    p.add_argument("method", choices=METHODS, metavar="METHOD", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--budget-flops", type=float, required=True, help="fraction of the dense FLOPs, in (0, 1]")
    p.add_argument("--model", help="zoo name or pkg.module:factory (default: convnet / resnet20)")
    p.add_argument("--dataset", default=d.dataset, help=f"dataset (default: {d.dataset})")
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--subset", type=int, help="a fixed random subset of N training images")
    p.add_argument("--checkpoint", help="dense nas_prune checkpoint (default: train it first)")
    p.add_argument(
        "--pretrain-epochs", type=float, default=d.pretrain_epochs, help="dense training without --checkpoint"
    )
    p.add_argument("--epochs", type=float, default=d.epochs, help="(fine-)tuning epochs, fractions allowed")
    p.add_argument(
        "--epochs-between", type=float, default=d.epochs_between, help="iterative-l2: epochs between steps"
    )
    p.add_argument(
        "--step", type=float, default=d.step, help="iterative-l2: share of the remaining FLOPs per step"
    )
    p.add_argument(
        "--finetune-share",
        type=float,
        default=d.finetune_share,
        help="soft-filter: share of --epochs spent fine-tuning the slim network after the cut "
        f"(default: {d.finetune_share:.3g}; 0 = the soft phase only)",
    )
    p.add_argument("--per-layer", action="store_true", help="unstructured: the same sparsity in every layer")
    p.add_argument("--uniform", action="store_true", help="l2-structured: one equal fraction per layer")
    p.add_argument(
        "--unstructured", action="store_true", help="lottery-ticket: a magnitude mask instead of widths"
    )
    p.add_argument(
        "--rewind-epoch", type=int, default=d.rewind_epoch, help="lottery-ticket: rewind to this epoch"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, help="peak learning rate (default: 0.01 fine-tuning, 0.1 from init)")
    p.add_argument("--latency-batch", type=int, default=d.latency_batch)
    p.add_argument("--latency-batch-large", type=int, default=d.latency_batch_large)
    p.add_argument("--output", help="output folder")
    p.add_argument(
        "--force", action="store_true", help="start over: delete the output folder's results and checkpoints"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def _warn_line(message, *_args, **_kwargs) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nas_prune.baselines METHOD --budget-flops F``; rerun it to continue an interrupted run."""
    args = vars(_parser().parse_args(argv))
    args["progress"] = not args.pop("no_progress")
    force = args.pop("force")
    with warnings.catch_warnings():
        warnings.showwarning = _warn_line  # one line per warning, no source line
        run_baseline(BaselineSettings(**args), force=force)


if __name__ == "__main__":
    sys.exit(run_cli(main))
