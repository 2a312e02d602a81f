"""How a retrained model starts: re-initialisation (``--init scratch``). What it learns from with
``--distill`` is the task's business (:meth:`nas_prune.task.Task.distillation_step`; classification
uses Hinton et al. 2015, :func:`nas_prune.task.distillation_loss`)."""

from __future__ import annotations

from torch import nn

from ..models import init_weights
from ..train import seed_everything

__all__ = ["reinitialize"]


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
