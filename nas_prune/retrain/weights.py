"""How a retrained model starts and what it learns from: re-initialisation (``--init scratch``) and
knowledge distillation from the dense model (``--distill``, Hinton et al. 2015)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models import init_weights
from ..train import seed_everything

__all__ = ["ALPHA", "TEMPERATURE", "distillation", "distillation_loss", "reinitialize"]

TEMPERATURE = 4.0  # the distillation defaults, written once
ALPHA = 0.9


def reinitialize(model: nn.Module, seed: int, zoo_init: bool = True) -> nn.Module:
    """Re-initialise every weight of ``model`` in place (from ``seed``) and reset BatchNorm statistics.

    Every module with ``reset_parameters`` is reset (PyTorch's default initialisation); with
    ``zoo_init`` the zoo's scheme is applied on top (Kaiming-normal convs, BN 1/0, small-normal linear),
    so a scratch-trained zoo model starts the way its dense model did.
    """
    seed_everything(seed)
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    if zoo_init:
        init_weights(model)
    return model


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
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits.float(), targets)
    return alpha * t * t * soft + (1.0 - alpha) * hard


def distillation(teacher: nn.Module, temperature: float = TEMPERATURE, alpha: float = ALPHA) -> Callable:
    """A ``loss_fn`` for :func:`nas_prune.train.train_one_epoch` that distils from ``teacher`` (eval
    mode, no gradients) with :func:`distillation_loss`."""
    teacher.eval()

    def loss_fn(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        return distillation_loss(logits, teacher_logits, y, temperature, alpha)

    return loss_fn
