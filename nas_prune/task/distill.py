"""Distillation losses for tasks that are not classification: a task's ``distill_loss(teacher_outputs,
student_outputs, batch)`` that needs no labels. Outputs may be a tensor, a tuple or a dict (a detector's
heads); the loss sums over their tensors in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..batch import tensors
from .base import TaskError

__all__ = ["OutputMatching", "SoftDistillation", "soft_kl"]


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """``KL(softmax(teacher / t) || softmax(student / t))`` over dimension 1 (the classes or channels),
    averaged over every other position (a batch of logits, or of per-pixel logits)."""
    if student.ndim < 2:
        raise TaskError(
            f"soft distillation needs logits of at least 2 dimensions, got shape {tuple(student.shape)}"
        )
    flat_s, flat_t = (x.float().movedim(1, -1).flatten(0, -2) for x in (student, teacher))
    return F.kl_div(
        F.log_softmax(flat_s / t, dim=-1),
        F.log_softmax(flat_t / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


@dataclass(frozen=True)
class SoftDistillation:
    """For outputs that are logits (classes on dimension 1): ``T^2 * KL(p_teacher || p_student)``
    (Hinton et al. 2015) without the labels' term."""

    temperature: float = 4.0

    def __call__(self, teacher_out: Any, student_out: Any, batch: Any) -> torch.Tensor:
        t = float(self.temperature)
        pairs = zip(tensors(teacher_out), tensors(student_out), strict=True)
        return sum(t * t * soft_kl(s, k, t) for k, s in pairs)


@dataclass(frozen=True)
class OutputMatching:
    """For any outputs (regression, boxes, feature maps): the mean squared error between the student's
    and the teacher's outputs, summed over the output tensors."""

    def __call__(self, teacher_out: Any, student_out: Any, batch: Any) -> torch.Tensor:
        pairs = zip(tensors(teacher_out), tensors(student_out), strict=True)
        return sum(F.mse_loss(s.float(), k.float()) for k, s in pairs)
