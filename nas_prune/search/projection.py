"""Projection onto the budget: a per-group allocation becomes widths that sit just under the budget.

The sampler proposes a relative *keep score* in ``[KEEP_MIN, 1]`` per searched group. Group ``g`` then
keeps ``min(1, t * score_g)`` of its channels, rounded down onto the grid, and one global scale ``t`` is
solved by bisection: the largest ``t`` whose widths meet every budget of the cost level (FLOPs and
parameters by the exact :class:`~nas_prune.cost.CostModel`; latency by the latency LUT's prediction).
Rounding down leaves a gap below the budget, so a greedy fill then raises single groups one grid step
at a time, the group furthest below its share first, while the budget still holds. Every proposal so
lands within a few percent under the tightest budget, whatever the sampler proposed.

A proposal is infeasible only when even the narrowest widths break the level's budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..cost import CostModel
from ..space import Budget, WidthSpace

__all__ = ["KEEP_MIN", "Projector", "arch_key", "level_schedule", "scores_of"]

KEEP_MIN = 0.05
"""Lowest keep score the sampler may propose (a group at 5% of the scale of the widest)."""


def level_schedule(index: int, levels: tuple[float, ...]) -> float:
    """Cost level of the ``index``-th sampled candidate: two of every three at the budget itself (1.0),
    every third cycling through the lower levels, so well over half of all evaluations (seeds included)
    are at the budget while the front still gets its lower points."""
    lower = sorted((v for v in levels if v < 1.0), reverse=True)
    if not lower or index % 3 != 2:
        return 1.0
    return lower[(index // 3) % len(lower)]


def arch_key(widths: Mapping[str, int]) -> tuple:
    """An architecture as a hashable key, whatever the order of its groups."""
    return tuple(sorted(widths.items()))


def scores_of(widths: Mapping[str, int], space: WidthSpace) -> dict[str, float]:
    """Keep scores that project back to about ``widths`` (a seed told to the sampler)."""
    return {n: min(1.0, max(KEEP_MIN, widths[n] / c[-1])) for n, c in space.choices.items()}


@dataclass
class Projector:
    """Projects keep scores onto ``level`` x the budget.

    Args:
        space: the width grid.
        cost: exact MACs and parameters.
        budget: the FLOP/parameter budgets (fractions of the dense model).
        latency: ``(widths -> predicted ms, limit ms)`` for a latency budget, else None.
        latency_binding: the prediction may make a proposal infeasible (a trusted LUT). An untrusted
            one only aims: when nothing fits its prediction, the proposal is projected without it.
    """

    space: WidthSpace
    cost: CostModel
    budget: Budget
    latency: tuple[Callable[[dict[str, int]], float], float] | None = None
    latency_binding: bool = True

    def usage(self, widths: Mapping[str, int], level: float = 1.0, latency: bool = True) -> float:
        """Cost over the level's budget for the tightest budget (<= 1 fits); ``latency=False`` leaves
        the latency prediction out."""
        macs, params = self.cost.cost(dict(widths))
        dense_macs, dense_params = self.cost.dense
        shares = []
        if self.budget.flops is not None:
            shares.append(macs / dense_macs / (self.budget.flops * level))
        if self.budget.params is not None:
            shares.append(params / dense_params / (self.budget.params * level))
        if self.latency is not None and latency:
            predict, limit = self.latency
            shares.append(predict(dict(widths)) / (limit * level))
        return max(shares, default=0.0)

    def _widths(self, scores: Mapping[str, float], scale: float) -> dict[str, int]:
        return self.space.snap(
            {n: min(1.0, scale * scores[n]) * c[-1] for n, c in self.space.choices.items()}
        )

    def project(self, scores: Mapping[str, float], level: float = 1.0) -> dict[str, int] | None:
        """Widths for ``scores`` just under ``level`` x the budget, or None if nothing fits."""
        widths = self._project(scores, level, latency=True)
        if widths is None and self.latency is not None and not self.latency_binding:
            widths = self._project(scores, level, latency=False)
        return widths

    def _project(self, scores: Mapping[str, float], level: float, latency: bool) -> dict[str, int] | None:
        fits = lambda w: self.usage(w, level, latency) <= 1.0 + 1e-12  # noqa: E731
        if not fits(self.space.smallest()):
            return None
        lo, hi = 0.0, 1.0 / max(KEEP_MIN, min(scores.values(), default=1.0))
        if fits(self._widths(scores, hi)):
            return self._widths(scores, hi)
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(self._widths(scores, mid)) else (lo, mid)
        widths = self._widths(scores, lo)
        return self._fill(widths, scores, lo, fits)

    def _fill(self, widths: dict[str, int], scores, scale: float, fits) -> dict[str, int]:
        """Raise single groups one grid step while the budget holds, the furthest below its share first."""
        choices = self.space.choices
        raised = True
        while raised:
            raised = False
            deficit = sorted(choices, key=lambda n: widths[n] / choices[n][-1] - min(1.0, scale * scores[n]))
            for name in deficit:
                i = choices[name].index(widths[name])
                if i + 1 < len(choices[name]):
                    trial = {**widths, name: choices[name][i + 1]}
                    if fits(trial):
                        widths, raised = trial, True
                        break
        return widths
