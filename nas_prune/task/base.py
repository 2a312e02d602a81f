"""The task: how to train and how to judge one model (data, inputs, training step, named score).

A :class:`Task` is the one way a model's data, loss and metric reach nas_prune: dense training, every
rung of the ladder, the gate supernet, the sensitivity seed, retrain, the baselines and the final
report all call the same four things:

* ``loader(split, ...)``: batches of ``train``, ``val`` or ``test``, streamed through a
  :class:`torch.utils.data.DataLoader` from map-style datasets (nothing is held in memory whole) and
  moved to the device;
* ``inputs(batch)``: what ``model(...)`` takes (a tensor, a tuple or a dict; :mod:`nas_prune.batch`);
* ``training_step(model, batch)``: the scalar loss (or ``{"loss": ..., other metrics}``);
* ``score(model, batches)``: a float, higher is better, named ``score_name``.

Optimiser, schedule and epochs stay nas_prune's (:func:`nas_prune.train.fit`), so every method is
compared at equal training.

Example:
    >>> task = Task(train=train_set, val=val_set, test=test_set,
    ...             training_step=lambda model, batch: detection_loss(model(batch[0]), batch[1]),
    ...             score=lambda model, batches: mean_ap(model, batches), score_name="mAP50",
    ...             collate_fn=collate_boxes)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..batch import call_model, channels_last, to_device
from ..errors import NasPruneError

__all__ = ["SPLITS", "DeviceLoader", "Task", "TaskError", "default_inputs", "loss_and_metrics", "score_key"]

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0  # the validation carve-out and subsets are always drawn with seed 0
CACHE_LIMIT = 20_000  # validation splits up to this many items are kept as batches for rung 0


class TaskError(NasPruneError):
    """A task that does not do what nas_prune needs (bad factory, loss, score or data): one line."""


def default_inputs(batch: Any) -> Any:
    """The model inputs of a batch by default: its first element for a tuple or list (``(x, y)``), else
    the batch itself."""
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    return batch


def score_key(score_name: str) -> str:
    """The column stem of a score: ``accuracy`` keeps its name (``val_accuracy``); any other score is
    ``score`` (``val_score``), with its name in ``score_name``."""
    return "accuracy" if score_name == "accuracy" else "score"


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float, or a TaskError saying what it was."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskError(f"the task's {what} returned a {type(value).__name__}, not a number")
    if not math.isfinite(value):
        raise TaskError(f"the task's {what} returned {value}, not a finite number")
    return float(value)


def loss_and_metrics(out: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """A training step's output split into the scalar loss and its other per-batch metrics (tensors or
    numbers); a loss that is not a scalar floating-point tensor is a TaskError."""
    metrics: dict[str, Any] = {}
    if isinstance(out, Mapping):
        metrics = {k: v for k, v in out.items() if k != "loss"}
        out = out.get("loss")
    if not isinstance(out, torch.Tensor) or out.numel() != 1 or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TaskError(f"the task's training step returned {shape}, not a scalar loss tensor")
    return out.reshape(()), metrics


class DeviceLoader:
    """Batches of a :class:`~torch.utils.data.DataLoader` moved to ``device`` (and to channels-last on
    CUDA), with the loader's length."""

    def __init__(self, loader: Iterable[Any], device: torch.device, layout: bool = False):
        self.loader, self.device, self.layout = loader, device, layout

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            batch = to_device(batch, self.device, non_blocking=True)
            yield channels_last(batch) if self.layout else batch


@dataclass(eq=False)
class Task:
    """How to train and judge one model. Every callable receives batches already on the model's device.

    Attributes:
        train: the training set: a map-style :class:`~torch.utils.data.Dataset` (or anything with
            ``__len__`` and ``__getitem__``), or a zero-argument callable returning one (built where it
            is used, e.g. on each Ray worker).
        training_step: ``(model, batch) -> loss``: a scalar tensor, or a dict with ``"loss"`` and other
            per-batch metrics to average (e.g. ``"accuracy"``).
        score: ``(model, batches) -> float``, higher is better; runs in eval mode under
            ``torch.inference_mode``. ``batches`` iterates the split's batches.
        score_name: the score's name in every output (``accuracy``, ``mAP50``, ``mIoU``, ...).
        val: the validation set (searched on); None carves ``val_fraction`` of ``train`` (seed 0).
        test: the test set (final reports only); None: final reports have no test score.
        inputs: ``batch -> model inputs`` (a tensor, tuple or dict); default :func:`default_inputs`.
        example_inputs: inputs the model accepts, batch >= 2 (tracing, costs, latency, export);
            default: the inputs of the first two training items.
        distill_loss: ``(teacher_outputs, student_outputs, batch) -> loss`` for ``--distill``; None:
            distillation does not apply to this task.
        collate_fn, num_workers: passed to the :class:`~torch.utils.data.DataLoader`.
        model_kwargs: keyword arguments a zoo model or ``pkg.module:factory`` is built with.
        name: a short label for run directory names.
        cache_batches: keep the validation batches in memory for rung 0 (None: when it has at most
            20,000 items).
    """

    train: Any
    training_step: Callable[[nn.Module, Any], Any]
    score: Callable[[nn.Module, Iterable[Any]], float]
    score_name: str = "score"
    val: Any = None
    test: Any = None
    inputs: Callable[[Any], Any] = default_inputs
    example_inputs: Any = None
    distill_loss: Callable[[Any, Any, Any], torch.Tensor] | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None
    num_workers: int = 0
    val_fraction: float = 0.1
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = "task"
    cache_batches: bool | None = None
    subset: int | None = None
    _splits: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for attr in ("training_step", "score", "inputs"):
            if not callable(getattr(self, attr)):
                raise TaskError(f"Task.{attr} must be callable, got {type(getattr(self, attr)).__name__}")
        if not isinstance(self.score_name, str) or not self.score_name:
            raise TaskError(f"Task.score_name must be a non-empty string, got {self.score_name!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise TaskError(f"Task.val_fraction must be in (0, 1), got {self.val_fraction}")

    def __getstate__(self) -> dict[str, Any]:  # datasets built by factories are rebuilt where used
        state = dict(self.__dict__)
        state["_splits"] = None
        return state

    @property
    def score_key(self) -> str:
        """``accuracy`` or ``score``: the stem of ``val_*`` and ``test_*`` columns."""
        return score_key(self.score_name)

    def with_subset(self, subset: int | None) -> Task:
        """A copy that trains on a fixed random ``subset`` of the training items (before the validation
        carve-out) and tests on at most ``subset`` items: quick runs and tests."""
        return self if subset is None else dataclasses.replace(self, subset=int(subset))

    # -- data -------------------------------------------------------------------------------------

    def split(self, name: str) -> Any:
        """The dataset of split ``name`` (None for a missing test split); factories are called once."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        if self._splits is None:
            self._splits = self._make_splits()
        return self._splits[name]

    def _make_splits(self) -> dict[str, Any]:
        built = {}
        for name in SPLITS:
            value = getattr(self, name)
            if callable(value) and not hasattr(value, "__getitem__"):
                try:
                    value = value()
                except Exception as err:
                    raise TaskError(f"the task's {name} factory raised {type(err).__name__}: {err}") from err
            if value is not None and not (hasattr(value, "__len__") and hasattr(value, "__getitem__")):
                raise TaskError(
                    f"the task's {name} split is a {type(value).__name__}, not a map-style dataset"
                )
            built[name] = value
        if built["train"] is None or len(built["train"]) == 0:
            raise TaskError("the task has no training items")
        gen = torch.Generator().manual_seed(SPLIT_SEED)
        order = torch.randperm(len(built["train"]), generator=gen).tolist()
        if self.subset is not None:
            order = order[: self.subset]
        if built["val"] is None:
            n_val = max(1, round(len(order) * self.val_fraction))
            if len(order) - n_val < 1:
                raise TaskError(
                    f"the task has too few training items ({len(order)}) to carve a validation split"
                )
            built["val"] = Subset(built["train"], sorted(order[:n_val]))
            order = order[n_val:]
        if self.subset is not None or len(order) < len(built["train"]):
            built["train"] = Subset(built["train"], sorted(order))
        if self.subset is not None:
            for name in ("val", "test"):
                if built[name] is not None and len(built[name]) > self.subset:
                    built[name] = Subset(built[name], range(self.subset))
        return built

    def size(self, split: str) -> int:
        """Items in ``split`` (0 for a missing test split)."""
        data = self.split(split)
        return 0 if data is None else len(data)

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        augment: bool = True,
        limit: int | None = None,
    ) -> DeviceLoader:
        """Batches of ``split`` on ``device``; ``train=True`` shuffles with a generator seeded by ``seed``
        (a rerun sees the same order). ``limit`` keeps the first items only. ``augment`` is the
        dataset's business here (give ``val`` its own dataset without augmentation)."""
        data = self.split(split)
        if data is None:
            raise TaskError(f"the task has no {split} split")
        if limit is not None and limit < len(data):
            data = Subset(data, range(limit))
        device = torch.device(device)
        loader = DataLoader(
            data, batch_size=batch_size, shuffle=train, drop_last=drop_last, collate_fn=self.collate_fn,
            num_workers=self.num_workers, generator=torch.Generator().manual_seed(seed) if train else None,
            pin_memory=device.type == "cuda",
        )  # fmt: skip
        return DeviceLoader(loader, device, layout=device.type == "cuda")

    def cached_val(self, batch_size: int, device: torch.device) -> Iterable[Any]:
        """The validation batches for repeated scoring: a list in memory (channels-last) when small
        enough (``cache_batches``), else a loader."""
        loader = self.loader("val", batch_size, train=False, device=device)
        cache = self.cache_batches if self.cache_batches is not None else self.size("val") <= CACHE_LIMIT
        return [channels_last(b) for b in loader] if cache else loader

    # -- the model --------------------------------------------------------------------------------

    def example(self) -> Any:
        """Example inputs (batch >= 2): ``example_inputs``, or the inputs of the first two training items."""
        if self.example_inputs is not None:
            return self.example_inputs
        batch = next(iter(self.loader("train", 2, train=False, drop_last=False)))
        return self.inputs(batch)

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """``model`` run on the inputs of ``batch``."""
        return call_model(model, self.inputs(batch))

    def step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """One training step's loss and its other metrics (see :func:`loss_and_metrics`)."""
        return loss_and_metrics(self.training_step(model, batch))

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        """``{score_key: score}`` of ``model`` (already in eval mode, under inference mode)."""
        try:
            value = self.score(model, batches)
        except TaskError:
            raise
        except Exception as err:
            raise TaskError(f"the task's score raised {type(err).__name__}: {err}") from err
        return {self.score_key: _number(value, "score")}

    def check_distillation(self) -> None:
        """A TaskError when this task has no ``distill_loss`` (``--distill`` then does not apply)."""
        if self.distill_loss is None:
            raise TaskError(
                f"--distill does not apply to this task ({self.name}): it has no distill_loss "
                "(give Task(distill_loss=...): nas_prune.task.SoftDistillation() for logits, OutputMatching() "
                "for any outputs)"
            )

    def distillation_step(self, teacher: nn.Module, **options: Any) -> Callable[[nn.Module, Any], Any]:
        """A training step that distils from ``teacher`` with ``distill_loss``; a TaskError without one.
        ``options`` (temperature, alpha) are for tasks that take them (classification)."""
        self.check_distillation()
        teacher.eval()
        loss = self.distill_loss

        def step(model: nn.Module, batch: Any) -> torch.Tensor:
            with torch.no_grad():
                teacher_out = self.forward(teacher, batch)
            return loss(teacher_out, self.forward(model, batch), batch)

        return step
