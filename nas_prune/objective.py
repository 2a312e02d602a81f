"""Score candidate architectures at any rung of the fidelity ladder: slim, adapt BatchNorm, fine-tune, validate.

Rung 0 is the EagleEye score (ECCV 2020): slim the dense model keeping the most important filters,
re-estimate BatchNorm statistics on a few training batches, and measure validation accuracy, with no
fine-tuning. Higher rungs fine-tune the slim model for their epochs first. A
:class:`CandidateEvaluator` is built once per worker: it holds the dense model, the BatchNorm batches
and the normalised validation split, so a rung-0 score costs only the slimming and two forward passes.

Decisions:

* Every candidate's BatchNorm statistics are re-estimated on the *same* training batches (drawn once
  per evaluator with the run's seed), so rung-0 scores differ only by architecture.
* Validation runs in channels-last layout with BatchNorm folded into the convolutions (``torch.fx``;
  models it cannot trace are validated unfolded): about 40% less time for the same accuracy.
* Each rung starts from the dense weights (not from the rung below), so a score depends only on
  ``(widths, epochs, seed)`` and a killed run can recompute any of them.

No Ray or Optuna in here: the search's Ray workers call :class:`CandidateEvaluator`, and tests and scripts
call it directly.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .data import DataSplits, load_dataset
from .models import build_from_spec
from .prune import prune
from .train import fit, resolve_device, seed_everything

__all__ = ["CandidateEvaluator", "TrialSettings", "adapt_batchnorm", "evaluate_candidate"]


@dataclass(frozen=True)
class TrialSettings:
    """Everything a worker needs to score candidates, picklable so Ray ships it to workers once.

    ``dense_state`` holds the dense weights (CPU tensors); ``spec`` rebuilds the architecture.
    """

    spec: dict[str, Any]
    dense_state: dict[str, torch.Tensor]
    dataset: str
    data_dir: str | None = None
    subset: int | None = None
    val_fraction: float = 0.1
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 5e-4
    importance: str = "l2"
    bn_batches: int = 10
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0

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


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _inference_copy(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm folded into its convolutions, in channels-last layout (eval only)."""
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(model)
    except Exception:  # not traceable by torch.fx (data-dependent control flow): validate it as it is
        folded = copy.deepcopy(model)
    return folded.to(memory_format=torch.channels_last).eval()


class CandidateEvaluator:
    """Scores ``widths`` after ``epochs`` of fine-tuning (0 = rung 0); built once per worker.

    Args:
        settings: the dense model, data and training settings.
    """

    def __init__(self, settings: TrialSettings):
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.data = settings.data()
        self.dense = settings.dense_model().eval()
        self.example = torch.zeros(2, *self.data.input_shape)
        bn_loader = self.data.loader("train", settings.batch_size, train=True, seed=settings.seed)
        self.bn_batches = [
            (_layout(x.to(self.device)), y)
            for _, (x, y) in zip(range(settings.bn_batches), bn_loader, strict=False)
        ]
        val = self.data.loader("val", 1000, train=False, device=self.device)
        self.val = [(_layout(x), y) for x, y in val]

    @torch.inference_mode()
    def validate(self, model: nn.Module) -> float:
        """Accuracy on the whole validation split (BatchNorm folded, channels-last)."""
        fast = _inference_copy(model)
        correct = sum(int((fast(x).argmax(1) == y).sum()) for x, y in self.val)
        return correct / max(1, sum(len(y) for _, y in self.val))

    def fine_tune(self, model: nn.Module, epochs: float, seed: int) -> float:
        """Train ``epochs`` (fractions allowed) with :func:`nas_prune.train.fit`, without validating after
        each epoch; returns the epochs done."""
        s = self.settings
        history = fit(
            model, self.data, epochs=epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
            device=self.device, seed=seed, progress=False, validate=False,
        )  # fmt: skip
        return history[-1]["epoch"]

    def __call__(self, widths: dict[str, int], epochs: float = 0.0, seed: int = 0) -> dict[str, Any]:
        """Slim, adapt BN, fine-tune ``epochs``, validate.

        Returns:
            ``val_accuracy``, ``epochs`` (fine-tuning done) and ``wall_s``.
        """
        start = time.perf_counter()
        seed_everything(self.settings.seed + seed)
        slim = prune(self.dense, self.example, widths, self.settings.importance).to(self.device)
        slim = slim.to(memory_format=torch.channels_last)
        adapt_batchnorm(slim, self.bn_batches, len(self.bn_batches), self.device)
        done = self.fine_tune(slim, epochs, self.settings.seed + seed) if epochs > 0 else 0.0
        accuracy = self.validate(slim.eval())
        return {"val_accuracy": accuracy, "epochs": done, "wall_s": time.perf_counter() - start}


def evaluate_candidate(
    widths: dict[str, int], settings: TrialSettings, epochs: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """One candidate's score (see :class:`CandidateEvaluator`; build one of those to score many)."""
    return CandidateEvaluator(settings)(widths, epochs, seed)
