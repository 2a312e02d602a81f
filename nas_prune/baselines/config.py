"""The settings of one baseline run: :class:`BaselineConfig`, also the flags of ``python -m nas_prune.baselines``."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..cli import option
from ..data import check_dataset_name
from ..errors import NasPruneError
from ..models import MODELS, default_model
from ..space import Budget
from ..task import data_label
from ..train import resolve_device
from .primitives import iterative_targets

__all__ = ["FINETUNE_SHARE", "METHODS", "BaselineConfig"]

METHODS = (
    "l1-unstructured",
    "l2-structured",
    "iterative-l2",
    "soft-filter",
    "lottery-ticket",
    "uniform-scratch",
)
FINETUNE_SHARE = 0.5  # soft-filter: share of --epochs spent fine-tuning the slim network after the cut


@dataclass(frozen=True)
class BaselineConfig:
    """Every setting of a baseline run (the CLI flags); written to ``metrics.json`` as ``settings``."""

    method: str = option("", f"one of {', '.join(METHODS)}", cli=False)
    budget_flops: float | None = option(None, "fraction of the dense FLOPs, in (0, 1]", required=True)
    model: str | None = option(None, "zoo name or pkg.module:factory (default: convnet / resnet20)")
    dataset: str = option("fashion-mnist", "dataset: a built-in name, folder:PATH or pkg.module:factory")
    task: str | None = option(
        None,
        "pkg.module:factory returning a nas_prune Task (data, training step, named score) instead of --dataset",
    )
    data_dir: str | None = option(None, "where the dataset files are")
    subset: int | None = option(None, "a fixed random subset of N training images")
    checkpoint: str | None = option(
        None, "dense weights: a nas_prune checkpoint or a plain state_dict file (default: train it first)"
    )
    pretrain_epochs: float = option(1.0, "dense training without --checkpoint")
    epochs: float = option(1.0, "(fine-)tuning epochs, fractions allowed")
    epochs_between: float = option(0.1, "iterative-l2: epochs between steps")
    step: float = option(0.05, "iterative-l2: share of the remaining FLOPs per step")
    finetune_share: float = option(
        FINETUNE_SHARE,
        "soft-filter: share of --epochs spent fine-tuning the slim network after the cut (0 = the soft phase only)",
    )
    per_layer: bool = option(False, "unstructured: the same sparsity in every layer", show_default=False)
    uniform: bool = option(False, "l2-structured: one equal fraction per layer", show_default=False)
    unstructured: bool = option(
        False, "lottery-ticket: a magnitude mask instead of widths", show_default=False
    )
    rewind_epoch: int = option(0, "lottery-ticket: rewind to this epoch")
    seed: int = option(0, "seed of initialisation and batch order")
    device: str = option("auto", "auto, cpu or cuda")
    batch_size: int = option(128, "training batch size")
    lr: float | None = option(None, "peak learning rate (default: 0.01 fine-tuning, 0.1 from init)")
    weight_decay: float = 5e-4
    latency_batch: int = option(1, "batch of the latency measurement")
    latency_batch_large: int = option(256, "batch of the second (throughput) latency measurement")
    output: str | None = option(
        None, "output folder (default: results/baselines/<method>-<model>-<dataset>-flops<F>-seed<S>)"
    )
    progress: bool = option(True, "progress bars")

    def validate(self, model_object: bool = False) -> BaselineConfig:
        """Check everything cheap before heavy work; returns a copy with the default model filled in.
        ``model_object``: the model came as a Python object (``model`` is its class name).

        Raises:
            NasPruneError: the first bad setting, named by its flag.
        """
        if self.method not in METHODS:
            raise NasPruneError(f"unknown method {self.method!r}; choose {', '.join(METHODS)}")
        if self.budget_flops is None:
            raise NasPruneError("--budget-flops is required")
        Budget(flops=self.budget_flops)  # (0, 1] or a NasPruneError
        dataset = check_dataset_name(self.dataset)
        if self.task is not None and ":" not in self.task:
            raise NasPruneError(f"--task {self.task!r} is not of the form pkg.module:factory")
        if self.task and not self.model:
            raise NasPruneError("a task needs its model: give --model (a zoo name or pkg.module:factory)")
        model = self.model or default_model(dataset)
        if not model_object and ":" not in model and model not in MODELS:
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
        return dataclasses.replace(self, model=model, dataset=dataset)

    def output_dir(self) -> Path:
        """``--output``, or ``results/baselines/<method>-<model>-<dataset>-flops<F>-seed<S>``."""
        if self.output:
            return Path(self.output)
        label = f"{self.model}-{data_label(self.task, self.dataset)}"
        label = re.sub(r"[^A-Za-z0-9_-]+", "-", label)
        name = f"{self.method}-{label}-flops{self.budget_flops:g}-seed{self.seed}"
        return Path("results") / "baselines" / name
