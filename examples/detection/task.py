"""The detection example as a nas_prune :class:`~nas_prune.task.Task`, at two sizes.

``tiny`` is for CI and tests (a few dozen 64x64 canvases, a width-8 model: seconds); ``full`` is the
case study (thousands of canvases, a width-16 model: the whole run within an hour on 2 CPU cores).
Every callable in the task is a module-level function or a frozen dataclass, and every split a
:class:`~examples.detection.data.CanvasSplit` factory, so the task pickles by reference in a few
kilobytes and each Ray worker builds its own data.

Example:
    >>> task, model = full_task(), full_model()
    >>> nas_prune.task.check_task(task, model)
    >>> python -m nas_prune.search --task examples.detection.task:full_task ...   # the same from the CLI
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nas_prune.batch import tensors
from nas_prune.task import Task

from .data import CanvasSplit, collate
from .loss import YoloLoss
from .model import TinyYolo
from .score import map50

__all__ = [
    "SIZES",
    "DetectionStep",
    "HeadDistillation",
    "Size",
    "full_model",
    "full_task",
    "make_model",
    "make_task",
    "tiny_model",
    "tiny_task",
]


@dataclass(frozen=True)
class Size:
    """One size of the example: canvases per split, canvas side, model width."""

    train: int
    val: int
    test: int
    canvas: int
    width: int


SIZES = {
    "tiny": Size(train=64, val=32, test=32, canvas=64, width=8),
    "full": Size(train=12_000, val=1_000, test=2_000, canvas=64, width=16),
}
"""The sizes ``make_task`` and ``make_model`` know."""


@dataclass(frozen=True)
class DetectionStep:
    """The training step: :class:`~examples.detection.loss.YoloLoss` of the model's head maps on a
    batch ``(images, targets)``."""

    loss: YoloLoss = YoloLoss()

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        images, targets = batch
        return self.loss(model(images), targets)


@dataclass(frozen=True)
class HeadDistillation:
    """``--distill`` for the detector: ``alpha`` x BCE of every student head logit against the
    teacher's probability (box offsets included: YOLOv5-style decoding puts a sigmoid on all of them)
    + ``(1 - alpha)`` x the YOLO loss on the labels."""

    alpha: float = 0.5
    loss: YoloLoss = YoloLoss()

    def __call__(
        self, teacher_out: Mapping[str, torch.Tensor], student_out: Mapping[str, torch.Tensor], batch: Any
    ):
        pairs = zip(tensors(teacher_out), tensors(student_out), strict=True)
        soft = sum(F.binary_cross_entropy_with_logits(s, t.sigmoid()) for t, s in pairs)
        return self.alpha * soft + (1.0 - self.alpha) * self.loss(student_out, batch[1])


def _size(size: str) -> Size:
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    return SIZES[size]


def make_task(size: str = "tiny", data_dir: str | None = None) -> Task:
    """The detection task at ``size`` (``tiny`` or ``full``): Fashion-MNIST canvases, the YOLO loss,
    mAP@0.5 as the score (``mAP50``), distillation from the heads; ``data_dir`` is searched first for
    the Fashion-MNIST files."""
    s = _size(size)
    return Task(
        train=CanvasSplit("train", s.train, s.canvas, data_dir),
        val=CanvasSplit("val", s.val, s.canvas, data_dir),
        test=CanvasSplit("test", s.test, s.canvas, data_dir),
        training_step=DetectionStep(),
        score=map50,
        score_name="mAP50",
        example_inputs=torch.zeros(2, 1, s.canvas, s.canvas),
        distill_loss=HeadDistillation(),
        collate_fn=collate,
        name="detection" if size == "full" else f"detection-{size}",
    )


def make_model(size: str = "tiny") -> TinyYolo:
    """A freshly initialised :class:`TinyYolo` of ``size``'s width."""
    return TinyYolo(num_classes=10, width=_size(size).width)


def tiny_task() -> Task:
    """``make_task("tiny")``, for ``--task examples.detection.task:tiny_task``."""
    return make_task("tiny")


def full_task() -> Task:
    """``make_task("full")``, for ``--task examples.detection.task:full_task``."""
    return make_task("full")


def tiny_model() -> TinyYolo:
    """``make_model("tiny")``, for ``--model examples.detection.task:tiny_model``."""
    return make_model("tiny")


def full_model() -> TinyYolo:
    """``make_model("full")``, for ``--model examples.detection.task:full_model``."""
    return make_model("full")
