"""Seed architectures for a budget, evaluated before the sampler proposes anything.

* ``uniform``: every searched group at the same fraction, the largest that meets the budget;
* ``l2``: global ranking of L2 channel importance, normalised per group (each group's mean = 1), the
  least important channels removed, one grid step at a time, until the budget is met;
* ``sensitivity``: each group is pruned alone to a few widths and the validation accuracy drop is
  measured; the budget is then met greedily by shrinking the group that loses the least accuracy per
  MAC saved (Li et al. 2017's sensitivity analysis, used as an allocation).

New seed kinds register with :func:`register_seed`; a seed function takes a :class:`SeedContext` and
returns widths or ``None`` when it cannot meet the budget. Every registered kind's name is a valid
``source`` in trials.csv (:data:`SEED_SOURCES`), so a new kind needs no other change to be recorded and
plotted. The gate supernet's seeds (``gates``) are made by the search itself, which trains the supernet on
its data (:mod:`nas_prune.search.seeding`); they register their label only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .cost import CostModel
from .prune import channel_importance, prune
from .space import Budget, WidthSpace

__all__ = [
    "GATES",
    "SEEDS",
    "SEED_SOURCES",
    "SeedContext",
    "make_seeds",
    "register_seed",
    "register_seed_source",
]


@dataclass
class SeedContext:
    """What a seed function may use. ``evaluate(model) -> accuracy`` scores a pruned model on a
    validation subset (needed by ``sensitivity`` only); ``constraint(widths) -> bool`` is an extra
    budget beyond FLOPs/parameters for callers of :func:`make_seeds`. The search does not use it for
    latency: it fits each seed to the measured limit afterwards (``search.latency.LatencyGuard.fit``),
    which measures a handful of architectures instead of every step of a greedy shrink."""

    model: nn.Module
    example_inputs: torch.Tensor
    space: WidthSpace
    cost: CostModel
    budget: Budget
    importance: str = "l2"
    evaluate: Callable[[nn.Module], float] | None = None
    constraint: Callable[[dict[str, int]], bool] | None = None

    def feasible(self, widths: dict[str, int]) -> bool:
        macs, params = self.cost.cost(widths)
        if not self.budget.met(macs, params, *self.cost.dense):
            return False
        return self.constraint is None or self.constraint(widths)


SEEDS: dict[str, Callable[[SeedContext], dict[str, int] | None]] = {}
"""Seed functions :func:`make_seeds` can run (``--seeds`` chooses among them)."""

SEED_SOURCES: list[str] = []
"""The ``source`` label of every registered seed kind, in registration order."""


def register_seed_source(name: str) -> str:
    """Register the ``source`` label of a seed kind made outside :func:`make_seeds`; returns ``name``."""
    if name not in SEED_SOURCES:
        SEED_SOURCES.append(name)
    return name


def register_seed(name: str):
    """Decorator registering a seed function under ``name`` (its ``source`` label in trials.csv)."""

    def wrap(fn):
        SEEDS[name] = fn
        register_seed_source(name)
        return fn

    return wrap


@register_seed("uniform")
def uniform_seed(ctx: SeedContext) -> dict[str, int] | None:
    """Largest uniform fraction meeting the budget (bisection; feasibility is monotone in the fraction)."""
    if not ctx.feasible(ctx.space.smallest()):
        return None
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ctx.feasible(ctx.space.uniform(mid)) else (lo, mid)
    best = ctx.space.uniform(lo)
    return best if ctx.feasible(best) else ctx.space.smallest()


def _shrink_greedily(ctx: SeedContext, step_loss: Callable[[str, int, int], float]) -> dict[str, int] | None:
    """Lower one group by one grid step at a time, always the step with the smallest ``step_loss(group,
    from_width, to_width)``, until the budget is met."""
    widths = ctx.space.dense()
    while not ctx.feasible(widths):
        steps = []
        for name, choices in ctx.space.choices.items():
            i = choices.index(widths[name])
            if i > 0:
                steps.append((step_loss(name, choices[i], choices[i - 1]), name, choices[i - 1]))
        if not steps:
            return None
        _, name, lower = min(steps)
        widths[name] = lower
    return widths


@register_seed("l2")
def l2_seed(ctx: SeedContext) -> dict[str, int] | None:
    """Remove the globally least important channels (per-group normalised L2 scores) until within budget."""
    scores = channel_importance(ctx.model, ctx.example_inputs, ctx.importance)
    ranked = {n: torch.sort(s / s.mean().clamp_min(1e-12), descending=True).values for n, s in scores.items()}
    return _shrink_greedily(ctx, lambda name, frm, to: float(ranked[name][to:frm].mean()))


@register_seed("sensitivity")
def sensitivity_seed(
    ctx: SeedContext, levels: tuple[float, ...] = (0.25, 0.5, 0.75)
) -> dict[str, int] | None:
    """Allocate widths by measured per-group accuracy drop per MAC saved."""
    if ctx.evaluate is None:
        return None
    base = ctx.evaluate(ctx.model)
    dense = ctx.space.dense()
    drop: dict[str, dict[int, float]] = {}
    for name, choices in ctx.space.choices.items():
        drop[name] = {choices[-1]: 0.0}
        for level in levels:
            width = ctx.space.uniform(level)[name]
            if width not in drop[name]:
                slim = prune(ctx.model, ctx.example_inputs, {**dense, name: width}, ctx.importance)
                drop[name][width] = max(0.0, base - ctx.evaluate(slim))

    def interpolated(name: str, width: int) -> float:
        known = sorted(drop[name].items())
        if width <= known[0][0]:
            return known[0][1]
        for (w0, d0), (w1, d1) in zip(known, known[1:], strict=False):
            if w0 <= width <= w1:
                return d0 + (d1 - d0) * (width - w0) / (w1 - w0)
        return 0.0

    def loss_per_mac(name: str, frm: int, to: int) -> float:
        saved = ctx.cost.cost({**dense, name: frm})[0] - ctx.cost.cost({**dense, name: to})[0]
        return (interpolated(name, to) - interpolated(name, frm) + 1e-6) / max(saved, 1)

    return _shrink_greedily(ctx, loss_per_mac)


GATES = register_seed_source("gates")
"""The gate supernet's seeds (:mod:`nas_prune.gates`), made and labelled by the search."""


def make_seeds(
    ctx: SeedContext, names: tuple[str, ...] = ("uniform", "l2", "sensitivity")
) -> dict[str, dict]:
    """``{source: widths}`` for every seed that can meet the budget, in ``names`` order, duplicates kept
    (each is a separate, labelled trial)."""
    seeds = {}
    for name in names:
        widths = SEEDS[name](ctx)
        if widths is not None:
            seeds[name] = widths
    return seeds
