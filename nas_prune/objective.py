"""Score candidate architectures at any rung of the fidelity ladder: slim, adapt BatchNorm, fine-tune, validate.

Rung 0 is the EagleEye score (ECCV 2020): slim the dense model keeping the most important filters,
re-estimate BatchNorm statistics on a few training batches, and measure the task's validation score
(accuracy for classification), with no fine-tuning. Higher rungs fine-tune the slim model for their epochs first. A
:class:`CandidateEvaluator` is built once per worker: it holds the dense model, the BatchNorm batches
and the validation batches, so a rung-0 score costs only the slimming and two forward passes.

Decisions:

* Every candidate's BatchNorm statistics are re-estimated on the *same* training batches (drawn once
  per evaluator with the run's seed), so rung-0 scores differ only by architecture.
* Validation runs in channels-last layout with BatchNorm folded into the convolutions (``torch.fx``;
  models it cannot trace are validated unfolded): about 40% less time for the same accuracy.
* On a CPU, validation batches hold 256 images, not 1000: the activations of a smaller batch stay in
  cache, which makes a ResNet-20 rung 0 on Fashion-MNIST faster (``scripts/benchmark_rung0.py``,
  results/BENCHMARKS.md). Scores do not depend on the batch size (eval mode). GPUs keep 1000.
* Each rung starts from the dense weights (not from the rung below), so a score depends only on
  ``(widths, epochs, seed)`` and a killed run can recompute any of them.

No Ray or Optuna in here: the search's Ray workers call :class:`CandidateEvaluator`, and tests and scripts
call it directly.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .batch import call_model, channels_last, to_device
from .data import DataSplits, load_dataset
from .models import build_from_spec
from .prune import prune
from .task import Task, default_inputs, resolve_task
from .train import fit, resolve_device, seed_everything

__all__ = ["CandidateEvaluator", "TrialSettings", "adapt_batchnorm", "evaluate_candidate"]

VAL_BATCH = {"cpu": 256}  # validation batch size by device type; others: DEFAULT_VAL_BATCH
DEFAULT_VAL_BATCH = 1000


@dataclass(frozen=True)
class TrialSettings:
    """Everything a worker needs to score candidates, picklable so Ray ships it to workers once.

    ``dense_state`` holds the dense weights (CPU tensors), or a width-shared supernet's with its channel
    ``ranking`` (:mod:`nas_prune.supernet`: candidates are sliced by it instead of ``importance``);
    ``model`` (a module given as an object, its class shipped by Ray's serialisation) or else ``spec``
    rebuilds the architecture. With a supernet, ``judge_state`` holds the dense weights: fine-tune jobs
    then also score the candidate as rung 0 would without the supernet (``dense_judge``: sliced from
    the dense model by ``importance``, adaptive BN), so fidelity.json compares both judges on the same
    candidates, and ``fine_tune_from`` says which weights a fine-tune starts from: ``"dense"`` (that
    same dense slice, as ``retrain --init inherit`` starts by default) or ``"supernet"``;
    ``rung0_judge="both"`` (the default) records ``dense_judge`` at rung 0 too, for the search to rank by
    both judges; ``"supernet"`` skips it. ``task`` is a
    :class:`~nas_prune.task.Task`, a ``pkg.module:factory`` path to one (imported on the worker), or None
    for classification on ``dataset``.
    """

    spec: dict[str, Any]
    dense_state: dict[str, torch.Tensor]
    dataset: str = "fashion-mnist"
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
    task: Task | str | None = None
    model: nn.Module | None = None
    ranking: dict[str, torch.Tensor] | None = None
    judge_state: dict[str, torch.Tensor] | None = None
    fine_tune_from: str = "dense"
    rung0_judge: str = "both"

    def make_task(self) -> Task:
        """The task (the readers cache parsed files per process). The split seed is always 0, as in the
        search driver, retrain and baselines: ``seed`` varies training, never the val set."""
        return resolve_task(self.task, self.dataset, self.data_dir, self.subset, self.val_fraction)

    def data(self) -> DataSplits:
        """The built-in dataset's splits (classification on ``dataset`` only)."""
        return load_dataset(
            self.dataset, self.data_dir, val_fraction=self.val_fraction, seed=0, subset=self.subset
        )

    def dense_model(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """A fresh dense model with the dense weights (or ``state``)."""
        model = copy.deepcopy(self.model) if self.model is not None else build_from_spec(self.spec)
        model.load_state_dict(self.dense_state if state is None else state)
        return model


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module, loader, batches: int, device, inputs: Callable[[Any], Any] = default_inputs
) -> None:
    """Re-estimate BatchNorm running statistics on a few training batches (adaptive BN, EagleEye).

    A slimmed network's statistics no longer match its activations; recomputing them (cumulative
    average, no weight update) makes a candidate's accuracy before fine-tuning meaningful. ``inputs``
    turns a batch into the model's inputs (a task's ``inputs``).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        call_model(model, to_device(inputs(batch), device))
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()


def _inference_copy(model: nn.Module) -> nn.Module:
    """``model`` with BatchNorm folded into its convolutions, in channels-last layout (eval only)."""
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(model)
    except Exception:  # not traceable by torch.fx (data-dependent control flow): validate it as it is
        folded = copy.deepcopy(model)
    return folded.to(memory_format=torch.channels_last).eval()


class CandidateEvaluator:
    """Scores ``widths`` after ``epochs`` of fine-tuning (0 = rung 0) with the task's score; built once
    per worker.

    Args:
        settings: the dense model, task and training settings.
    """

    def __init__(self, settings: TrialSettings):
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.task = settings.make_task()
        self.dense = settings.dense_model().eval()
        judge = settings.judge_state
        self.judge = None if judge is None else settings.dense_model(judge).eval()
        self.example = self.task.example()
        bn_loader = self.task.loader(
            "train", settings.batch_size, train=True, seed=settings.seed, device=self.device
        )
        self.bn_batches = [channels_last(b) for b in itertools.islice(bn_loader, settings.bn_batches)]
        self.val = self.task.cached_val(VAL_BATCH.get(self.device.type, DEFAULT_VAL_BATCH), self.device)

    @torch.inference_mode()
    def validate(self, model: nn.Module) -> float:
        """The task's score on the whole validation split (BatchNorm folded, channels-last)."""
        fast = _inference_copy(model)
        return self.task.evaluate(fast, self.val)[self.task.score_key]

    def fine_tune(self, model: nn.Module, epochs: float, seed: int) -> float:
        """Train ``epochs`` (fractions allowed) with :func:`nas_prune.train.fit`, without validating after
        each epoch; returns the epochs done."""
        s = self.settings
        history = fit(
            model, self.task, epochs=epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
            device=self.device, seed=seed, progress=False, validate=False,
        )  # fmt: skip
        return history[-1]["epoch"]

    def __call__(self, widths: dict[str, int], epochs: float = 0.0, seed: int = 0) -> dict[str, Any]:
        """Slim, adapt BN, fine-tune ``epochs``, validate.

        Returns:
            ``val_accuracy`` (the task's validation score, whatever its name), ``epochs`` (fine-tuning
            done) and ``wall_s``; with ``judge_state`` set, also ``dense_judge`` for a fine-tune, and at
            rung 0 with ``rung0_judge="both"``.
        """
        start = time.perf_counter()
        s = self.settings
        seed_everything(s.seed + seed)
        judged = None
        if self.judge is not None and (epochs > 0 or s.rung0_judge == "both"):  # a run with a supernet
            judged = self._sliced(self.judge, widths, s.importance)
            dense_judge = self.validate(judged)
        if judged is not None and epochs > 0 and s.fine_tune_from == "dense":
            slim = judged
        else:
            slim = self._sliced(self.dense, widths, s.ranking if s.ranking is not None else s.importance)
        done = self.fine_tune(slim, epochs, s.seed + seed) if epochs > 0 else 0.0
        result = {"val_accuracy": self.validate(slim.eval()), "epochs": done}
        if judged is not None:
            result["dense_judge"] = dense_judge
        return {**result, "wall_s": time.perf_counter() - start}

    def _sliced(self, model: nn.Module, widths: dict[str, int], ranking) -> nn.Module:
        """``widths`` cut from ``model`` keeping the channels ``ranking`` ranks first, BatchNorm adapted."""
        slim = prune(model, self.example, widths, ranking).to(self.device)
        slim = slim.to(memory_format=torch.channels_last)
        adapt_batchnorm(slim, self.bn_batches, len(self.bn_batches), self.device, self.task.inputs)
        return slim


def evaluate_candidate(
    widths: dict[str, int], settings: TrialSettings, epochs: float = 0.0, seed: int = 0
) -> dict[str, Any]:
    """One candidate's score (see :class:`CandidateEvaluator`; build one of those to score many)."""
    return CandidateEvaluator(settings)(widths, epochs, seed)
