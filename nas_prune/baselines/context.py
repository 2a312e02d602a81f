"""What every method shares: the run's data, dense model and output folder, resumable training
phases (:func:`nas_prune.train.fit` checkpointing in ``OUTPUT/phases/<phase>/``), adaptive BN and the
L2 or uniform width allocation to a FLOPs budget."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_state_dict_into, save_checkpoint
from ..cost import CostModel
from ..errors import NasPruneError
from ..graph import channel_groups
from ..models import build_from_spec
from ..objective import adapt_batchnorm
from ..retrain.weights import reinitialize
from ..seeds import SeedContext, l2_seed, uniform_seed
from ..space import Budget, WidthSpace
from ..task import Task
from ..train import Checkpointing, epoch_reporter, evaluate, fit, resumed_epochs, seed_everything
from .config import BaselineConfig

__all__ = ["FINETUNE_LR", "PHASES", "SCRATCH_LR", "Context", "Outcome", "group_widths", "load_dense"]

FINETUNE_LR, SCRATCH_LR = 0.01, 0.1
BN_BATCHES = 20
CHECKPOINT = "checkpoint.pt"
PHASES = "phases"  # OUTPUT/phases/<phase>/checkpoint.pt: per-epoch checkpoints of an unfinished run


@dataclass
class Context:
    """A baseline run in progress: its settings, data, dense model and the notes for metrics.json."""

    s: BaselineConfig
    task: Task
    spec: dict[str, Any]
    example: Any
    device: torch.device
    say: Callable[[str], None]
    quiet: bool
    model_object: nn.Module | None = None
    dense: nn.Module | None = None
    dense_epochs: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def phases(self) -> Path:
        """``OUTPUT/phases``: the checkpoints of an unfinished run."""
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

        :func:`nas_prune.train.fit` with a checkpoint after every (partial) epoch in
        ``OUTPUT/phases/<phase>/``: a rerun continues it, and a finished phase only reloads its weights.
        ``before_checkpoint(epoch, row)`` may change the model after each epoch; the change is
        checkpointed.
        """
        if epochs <= 0:
            return []
        settings = {
            "phase": phase, "epochs": float(epochs), "lr": float(self.s.lr or lr),
            "batch_size": int(self.s.batch_size), "weight_decay": float(self.s.weight_decay),
            "seed": int(self.s.seed + seed),
        }  # fmt: skip
        path = self.phases / phase / CHECKPOINT
        if resumed_epochs(path):
            self.say(f"Resuming {phase} after {resumed_epochs(path):g} of {epochs:g} epochs (from {path})")
        return fit(
            model, self.task, epochs=epochs, batch_size=settings["batch_size"], lr=settings["lr"],
            weight_decay=settings["weight_decay"], device=self.device, seed=settings["seed"],
            progress=self.s.progress, on_epoch_end=epoch_reporter(None if self.quiet else self.say, epochs),
            checkpoint=Checkpointing(path, settings, self.spec, before_checkpoint),
        )  # fmt: skip

    def val_accuracy(self, model: nn.Module) -> float:
        """The task's validation score (accuracy for classification)."""
        loader = self.task.loader("val", 512, train=False, device=self.device)
        return evaluate(model.to(self.device), loader, device=self.device, task=self.task)[
            self.task.score_key
        ]

    def adapt_bn(self, model: nn.Module) -> nn.Module:
        loader = self.task.loader(
            "train", self.s.batch_size, train=True, seed=self.s.seed, device=self.device
        )
        adapt_batchnorm(model.to(self.device), loader, BN_BATCHES, self.device, self.task.inputs)
        return model

    def fresh_model(self) -> nn.Module:
        """The dense architecture with new initial weights: built from the spec, or a copy of the model
        object given, re-initialised (PyTorch's default initialisation, from the run's seed)."""
        if self.model_object is None:
            return build_from_spec(self.spec)
        return reinitialize(copy.deepcopy(self.model_object), self.s.seed, zoo_init=False)

    def widths_for(self, model: nn.Module, flops: float, uniform: bool = False) -> dict[str, int]:
        """Widths of ``model``'s groups with at most ``flops`` x its MACs (L2 allocation or uniform)."""
        _, space = WidthSpace.of_model(self.s.model, model, self.example)
        ctx = SeedContext(model, self.example, space, CostModel(model, self.example), Budget(flops=flops))
        widths = (uniform_seed if uniform else l2_seed)(ctx)
        if widths is None:
            raise NasPruneError(
                f"no width choice of {self.s.model} meets {flops:.3f} of the FLOPs "
                f"(min_fraction {space.smallest()})"
            )
        return widths


@dataclass
class Outcome:
    """What a method returns: the pruned model, its widths, how it started and its training."""

    model: nn.Module
    widths: dict[str, int]
    init: str
    epochs: float
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def load_dense(ctx: Context) -> None:
    """The dense model: ``--checkpoint`` (a nas_prune checkpoint or a plain state_dict), else the model
    object's own weights, else trained for ``--pretrain-epochs`` (saved as dense.pt)."""
    s = ctx.s
    model = copy.deepcopy(ctx.model_object) if ctx.model_object is not None else build_from_spec(ctx.spec)
    if s.checkpoint:
        ckpt = load_state_dict_into(model, s.checkpoint)
        epochs = ckpt.get("epochs")
        ctx.dense_epochs = float(epochs) if isinstance(epochs, (int, float)) else None
    elif ctx.model_object is not None:
        ctx.dense_epochs = None  # trained by its owner: nas_prune does not know how long
    else:
        ctx.say(f"Training the dense {s.model} for {s.pretrain_epochs:g} epochs ...")
        seed_everything(s.seed)
        model = ctx.fresh_model()
        ctx.fit(model, s.pretrain_epochs, SCRATCH_LR, "dense")
        save_checkpoint(s.output_dir() / "dense.pt", model.cpu(), ctx.spec, epochs=s.pretrain_epochs)
        ctx.dense_epochs = s.pretrain_epochs
    ctx.dense = model.to(ctx.device).eval()


def group_widths(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    return {g.name: g.channels for g in channel_groups(model, example)}
