"""Evolution on the projected grid: children of the best rung-0 candidates of a cost level.

Why (issue 24): TPE models keep scores, and most keep-score vectors project onto few grid
architectures near the budget; in the default resnet20 run ~40% of its proposals repeated an evaluated
architecture and only ~42% of the rung-0 candidates came from its model (a latency budget: 22 of 240).
Evolution, as OFA and SPOS search under a budget, works on the architectures the projection produced:
a child is a crossover and mutation of parents chosen by tournament among the level's best rung-0
scores, projected back onto the level's budget. A child that repeats an architecture already proposed
is bred again with a stronger mutation (``strength``: the projection rescales every group and rounds
onto the grid, which undoes most one-step mutations of a converged population), and only then moved to
a grid neighbour (:func:`neighbour`) before it counts as a repeat.

Example:
    >>> import random
    >>> from nas_prune.space import WidthSpace
    >>> space = WidthSpace({"a": [4, 8, 12, 16], "b": [4, 8]})
    >>> parents = [(0.9, {"a": 16, "b": 4}), (0.5, {"a": 4, "b": 8})]
    >>> sorted(breed(parents, space, random.Random(0)))
    ['a', 'b']
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from ..space import WidthSpace

__all__ = ["MIN_PARENTS", "POPULATION", "breed", "neighbour"]

MIN_PARENTS = 4
"""Rung-0 scores a level needs before it breeds (until then it breeds from the budget level's, and
before that proposals are uniform draws): the seeds usually, so the heuristics' architectures are the
first population and mutation and crossover diversify it. A TPE-like start-up of 10 random draws per
level cost 20 of 240 candidates, four batches being in flight before the first scores return."""

POPULATION = 16
"""Parents are drawn from the level's best ``POPULATION`` rung-0 scores (OFA keeps the best quarter of
a population of 100 for a 1,000-sample search; rung 0 here sees ~240)."""
TOURNAMENT = 3
"""Candidates per tournament: the best of three random parents breeds, so the top ranks breed most."""
CROSSOVER = 0.5
"""Share of children made by uniform crossover of two parents (the others mutate one parent)."""


def _tournament(parents: Sequence[tuple[float, Mapping[str, int]]], rng: random.Random) -> dict:
    entrants = rng.sample(range(len(parents)), min(TOURNAMENT, len(parents)))
    return dict(parents[min(entrants)][1])  # parents are sorted best first


def _mutate(
    widths: dict[str, int], space: WidthSpace, rng: random.Random, strength: int = 1
) -> dict[str, int]:
    """Each searched group moves 1 to ``strength`` grid steps up or down with probability
    2 x ``strength`` / groups (at least one moves); the projection afterwards puts the child back on the
    budget."""
    names = [n for n, c in space.choices.items() if len(c) > 1]
    if not names:
        return widths
    moved = [n for n in names if rng.random() < 2.0 * strength / len(names)] or [rng.choice(names)]
    for name in moved:
        widths = _step(widths, name, rng.choice((-1, 1)) * rng.randint(1, strength), space)
    return widths


def _step(widths: Mapping[str, int], name: str, direction: int, space: WidthSpace) -> dict[str, int]:
    choices = space.choices[name]
    i = min(max(choices.index(widths[name]) + direction, 0), len(choices) - 1)
    return {**widths, name: choices[i]}


def breed(
    parents: Sequence[tuple[float, Mapping[str, int]]],
    space: WidthSpace,
    rng: random.Random,
    strength: int = 1,
) -> dict[str, int]:
    """A child of ``parents`` (``(rung-0 score, widths)``, any order): tournament selection among the
    best :data:`POPULATION`, uniform crossover (:data:`CROSSOVER` of children), then mutation of the
    given ``strength`` (1 for a first try; more after the child repeated an architecture)."""
    ranked = sorted(parents, key=lambda p: -p[0])[:POPULATION]
    child = _tournament(ranked, rng)
    if rng.random() < CROSSOVER and len(ranked) > 1:
        other = _tournament(ranked, rng)
        child = {n: (child[n] if rng.random() < 0.5 else other[n]) for n in child}
    return _mutate(child, space, rng, strength)


def neighbour(widths: Mapping[str, int], space: WidthSpace, rng: random.Random) -> dict[str, int]:
    """A grid neighbour of ``widths``: one group a step up, another a step down, so the cost stays
    about where the projection put it (a repeated proposal moved to a new architecture nearby)."""
    names = [n for n, c in space.choices.items() if len(c) > 1]
    if len(names) < 2:
        return _mutate(dict(widths), space, rng)
    up, down = rng.sample(names, 2)
    return _step(_step(widths, up, 1, space), down, -1, space)
