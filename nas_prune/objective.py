"""Score one candidate architecture: slim the dense model, re-estimate BatchNorm, fine-tune, validate.

No Ray or Optuna in here: :func:`evaluate_candidate` reports through a plain callback, so the search
runs it inside Ray Tune trials while tests and scripts call it directly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .cost import count_macs
from .data import DataSplits, load_dataset
from .models import build_from_spec
from .prune import prune
from .train import evaluate, make_optimizer, make_scheduler, resolve_device, seed_everything, train_one_epoch

__all__ = ["TrialSettings", "adapt_batchnorm", "evaluate_candidate"]


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs, picklable so Ray can ship it to workers once.

    ``dense_state`` holds the dense weights (CPU tensors); ``spec`` rebuilds the architecture.
    """

    spec: dict[str, Any]
    dense_state: dict[str, torch.Tensor]
    dataset: str
    data_dir: str | None = None
    subset: int | None = None
    val_fraction: float = 0.1
    epochs: float = 0.25
    reports: int = 4
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 5e-4
    importance: str = "l2"
    bn_batches: int = 20
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def data(self) -> DataSplits:
        """The dataset splits (the readers cache parsed files per process). The split seed is always 0,
        as in the search driver, retrain and baselines: ``seed`` varies training, never the val set."""
        return load_dataset(
            self.dataset, self.data_dir, val_fraction=self.val_fraction, seed=0, subset=self.subset
        )

    def dense_model(self) -> nn.Module:
        """A fresh dense model with the dense weights."""
        model = build_from_spec(self.spec)
        model.load_state_dict(self.dense_state)
        return model


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, loader, batches: int, device) -> None:
    """Re-estimate BatchNorm running statistics on a few training batches (adaptive BN, EagleEye).

    A slimmed network's statistics no longer match its activations; recomputing them (cumulative
    average, no weight update) makes a candidate's accuracy before fine-tuning meaningful.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x.to(device))
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()


def evaluate_candidate(
    widths: dict[str, int],
    settings: TrialSettings,
    report: Callable[[dict[str, Any]], None] = lambda metrics: None,
    trial_seed: int = 0,
) -> dict[str, Any]:
    """Prune the dense model to ``widths``, adapt BN, fine-tune ``settings.epochs`` and validate.

    Validation accuracy is reported ``settings.reports`` times at equal steps through fine-tuning (so a
    scheduler such as ASHA can stop weak candidates); with ``epochs == 0`` it is reported once, after
    adaptive BN. Never touches the test split.

    Returns:
        The last report: ``val_accuracy``, ``epochs`` trained, ``macs``, ``params``, ``step``,
        ``wall_s``.
    """
    start = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    seed_everything(settings.seed + trial_seed)
    device = resolve_device(settings.device)
    data = settings.data()
    example = torch.zeros(2, *data.input_shape)
    slim = prune(settings.dense_model(), example, widths, settings.importance).to(device)
    macs, params = count_macs(slim, example.to(device))
    train_loader = data.loader("train", settings.batch_size, train=True, seed=settings.seed + trial_seed)
    val_loader = data.loader("val", 512, train=False)
    adapt_batchnorm(slim, train_loader, settings.bn_batches, device)

    per_epoch = len(train_loader)
    total_steps = max(0, math.ceil(settings.epochs * per_epoch))
    reports = max(1, settings.reports) if total_steps else 1
    optimizer = make_optimizer(slim, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = make_scheduler(optimizer, max(1, total_steps))
    done = 0
    metrics: dict[str, Any] = {}
    for step in range(1, reports + 1):
        chunk = round(total_steps * step / reports) - done
        while chunk > 0:  # a chunk may span the end of an epoch: the loader restarts with a new order
            stats = train_one_epoch(
                slim,
                train_loader,
                optimizer,
                scheduler=scheduler,
                device=device,
                max_batches=min(chunk, per_epoch),
                progress=settings.progress,
            )
            done += stats["batches"]
            chunk -= stats["batches"]
        val = evaluate(slim, val_loader, device=device)
        metrics = {
            "val_accuracy": val["accuracy"],
            "val_loss": val["loss"],
            "epochs": done / per_epoch,
            "macs": macs,
            "params": params,
            "step": step,
            "wall_s": time.perf_counter() - start,
        }
        report(metrics)
    return metrics
