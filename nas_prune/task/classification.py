"""Classification as a task: cross-entropy, top-1 accuracy and Hinton distillation from logits.

:class:`ClassificationTask` works on any map-style datasets of ``(image, label)`` items (a ``folder:``
tree, a user's dataset); :class:`TensorClassificationTask` is the built-in datasets' fast path: the
splits stay in memory as ``uint8`` tensors and :class:`~nas_prune.data.TensorLoader` augments and
normalises whole batches on the device (what every search used before tasks existed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataSplits
from .base import Task, TaskError
from .distill import soft_kl

__all__ = [
    "ALPHA",
    "TEMPERATURE",
    "ClassificationTask",
    "CrossEntropyStep",
    "LogitDistillation",
    "TensorClassificationTask",
    "accuracy",
    "as_task",
    "classification_metrics",
    "distillation_loss",
    "with_label_smoothing",
]

TEMPERATURE = 4.0  # the distillation defaults, written once
ALPHA = 0.9


@dataclass(frozen=True)
class CrossEntropyStep:
    """The classification training step: cross-entropy of ``model(x)`` against ``y``, with the batch's
    accuracy as a side metric."""

    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return {"loss": loss, "accuracy": (logits.detach().argmax(1) == y).float().mean()}


def classification_metrics(model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Mean cross-entropy, top-1 accuracy and the number of samples over ``batches`` of ``(x, y)``
    (NaN loss and accuracy when there are none)."""
    loss_sum, correct, samples = 0.0, 0, 0
    for batch in batches:
        x, y = batch[0], batch[1]
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        samples += len(y)
    if samples == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "samples": 0}
    return {"loss": loss_sum / samples, "accuracy": correct / samples, "samples": samples}


def accuracy(model: nn.Module, batches: Iterable[Any]) -> float:
    """Top-1 accuracy over ``batches`` of ``(x, y)``."""
    return classification_metrics(model, batches)["accuracy"]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = TEMPERATURE,
    alpha: float = ALPHA,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, targets)``.

    Both distributions are softened by ``temperature``; the ``T^2`` factor keeps the soft term's
    gradients on the scale of the hard one (Hinton et al. 2015). The KL term is averaged over samples.
    """
    t = float(temperature)
    soft = soft_kl(student_logits, teacher_logits, t)
    hard = F.cross_entropy(student_logits.float(), targets)
    return alpha * t * t * soft + (1.0 - alpha) * hard


@dataclass(frozen=True)
class LogitDistillation:
    """A task's ``distill_loss`` for classifiers: :func:`distillation_loss` against the batch's labels."""

    temperature: float = TEMPERATURE
    alpha: float = ALPHA

    def __call__(self, teacher_out: torch.Tensor, student_out: torch.Tensor, batch: Any) -> torch.Tensor:
        return distillation_loss(student_out, teacher_out, batch[1], self.temperature, self.alpha)


@dataclass(eq=False)
class ClassificationTask(Task):
    """Classification on map-style datasets of ``(image, label)``: cross-entropy, accuracy, Hinton
    distillation. ``model_kwargs`` should give ``in_channels`` and ``num_classes`` for zoo models."""

    training_step: Callable[[nn.Module, Any], Any] = field(default_factory=CrossEntropyStep)
    score: Callable[[nn.Module, Iterable[Any]], float] = accuracy
    score_name: str = "accuracy"
    distill_loss: Callable[[Any, Any, Any], torch.Tensor] | None = field(default_factory=LogitDistillation)

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        """Loss, accuracy and samples (the loss goes into ``val_loss`` of the training history)."""
        return classification_metrics(model, batches)

    def distillation_step(
        self, teacher: nn.Module, temperature: float = TEMPERATURE, alpha: float = ALPHA, **_: Any
    ) -> Callable[[nn.Module, Any], Any]:
        """Distil from ``teacher``'s logits with ``temperature`` and ``alpha`` (:func:`distillation_loss`)."""
        copy = dataclasses.replace(self, distill_loss=LogitDistillation(temperature, alpha))
        return Task.distillation_step(copy, teacher)


@dataclass(eq=False)
class TensorClassificationTask(ClassificationTask):
    """A built-in dataset held in memory (:class:`~nas_prune.data.DataSplits`): batches come from its
    augmenting :class:`~nas_prune.data.TensorLoader`, built on the device."""

    data: DataSplits | None = None

    @classmethod
    def of(cls, data: DataSplits, label_smoothing: float = 0.0) -> TensorClassificationTask:
        """The task of ``data`` (``load_dataset``'s splits)."""
        return cls(
            train=data.train, val=data.val, test=data.test, data=data, name=data.name,
            training_step=CrossEntropyStep(label_smoothing),
            model_kwargs={"in_channels": data.in_channels, "num_classes": data.num_classes},
        )  # fmt: skip

    def split(self, name: str) -> Any:
        return getattr(self.data, name)

    def loader(self, split: str, batch_size: int, *, train: bool, limit: int | None = None, **kwargs: Any):
        """A :class:`~nas_prune.data.TensorLoader` (``seed``, ``device``, ``drop_last``, ``augment``)."""
        data = self.data
        if limit is not None and limit < len(getattr(data, split)):
            part = getattr(data, split)
            data = dataclasses.replace(data, **{split: type(part)(part.x[:limit], part.y[:limit])})
        return data.loader(split, batch_size, train=train, **kwargs)

    def example(self) -> torch.Tensor:
        """Zeros of two images (only shapes matter)."""
        return torch.zeros(2, *self.data.input_shape)


def with_label_smoothing(task: Task, label_smoothing: float) -> Task:
    """``task`` training with label smoothing: classification only (any other task: a TaskError)."""
    if not label_smoothing:
        return task
    if not isinstance(task, ClassificationTask):
        raise TaskError(
            f"label smoothing is a classification setting; task {task.name} scores {task.score_name}"
        )
    return dataclasses.replace(task, training_step=CrossEntropyStep(label_smoothing))


def as_task(data: Task | DataSplits, label_smoothing: float = 0.0) -> Task:
    """``data`` as a task: a :class:`Task` as it is, a built-in dataset's splits as classification."""
    if isinstance(data, DataSplits):
        data = TensorClassificationTask.of(data)
    if not isinstance(data, Task):
        raise TaskError(f"expected a nas_prune Task or DataSplits, got a {type(data).__name__}")
    return with_label_smoothing(data, label_smoothing)
