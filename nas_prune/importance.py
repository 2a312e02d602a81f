"""Registry of channel-importance criteria: which channels of a group to keep.

An importance is any callable ``(tp_group) -> Tensor`` giving one score per channel of the group's root
(higher = keep). The built-in criteria are Torch-Pruning's group scores, aggregated (mean) over every
coupled layer of the group, so a residual group's score reflects all convs that share its channels:

* ``l1`` / ``l2``: group L1 / L2 weight magnitude (Li et al. 2017; He et al. 2018 use L2);
* ``bn_scale``: |gamma| of the group's BatchNorms (network slimming, Liu et al. 2017);
* ``taylor``: first-order Taylor |w * dL/dw| (Molchanov et al. 2019); needs gradients on the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp

from .errors import NasPruneError

__all__ = ["IMPORTANCES", "register_importance", "get_importance", "importance_names"]

Importance = Callable[[object], torch.Tensor]
IMPORTANCES: dict[str, Callable[[], Importance]] = {}


def register_importance(name: str):
    """Decorator registering a zero-argument factory of an importance criterion under ``name``."""

    def wrap(factory: Callable[[], Importance]):
        IMPORTANCES[name] = factory
        return factory

    return wrap


@register_importance("l1")
def _l1() -> Importance:
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)


@register_importance("l2")
def _l2() -> Importance:
    return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)


@register_importance("bn_scale")
def _bn_scale() -> Importance:
    return tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)


class _Taylor(tp.importance.GroupTaylorImportance):
    """Torch-Pruning's Taylor score, with a clear error when the model carries no gradients."""

    def __call__(self, group):
        for item in group:
            weight = getattr(item.dep.target.module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.requires_grad and weight.grad is None:
                raise NasPruneError(
                    "importance 'taylor' needs gradients: call loss.backward() on the model first"
                )
        return super().__call__(group)


@register_importance("taylor")
def _taylor() -> Importance:
    return _Taylor(group_reduction="mean", normalizer=None)


def importance_names() -> list[str]:
    """Names accepted by :func:`get_importance`."""
    return sorted(IMPORTANCES)


def get_importance(criterion: str | Importance) -> Importance:
    """An importance callable from a registered name (or the callable itself)."""
    if callable(criterion):
        return criterion
    if criterion not in IMPORTANCES:
        raise NasPruneError(
            f"unknown importance {criterion!r}; choose one of {', '.join(importance_names())}"
        )
    return IMPORTANCES[criterion]()
