"""Which entries to measure before a search: every entry its width grid can reach, or a sub-grid.

During a search nothing may be timed while trials train on the same device (it would time the contention), and timed
entries are cached for later runs. So the search calls :meth:`LatencyLUT.prepare` before any trial
starts: it measures every entry the space's grid can reach (or, past ``max_entries``, an evenly spaced
sub-grid per layer) and the constant; missing entries are then estimated
(:mod:`~nas_prune.latency.estimate`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..cost import CostModel
from .slots import Slot, channels
from .table import Entry, Keys

if TYPE_CHECKING:
    from ..space import WidthSpace

MAX_COMBINATIONS = 200_000
"""A slot with more width combinations than this is not enumerated (it gets a few architectures' keys)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan` chose: ``targets`` are to be measured, ``full`` is the whole grid."""

    full: dict[str, Entry]
    targets: dict[str, Entry]
    per_axis: int | None  # the sub-grid's widths per axis, None: the full grid
    fallback_layers: int  # slots that were not enumerated


def _spread(values: Sequence[int], k: int) -> list[int]:
    """``k`` evenly spaced items of sorted ``values``, always the first and the last (all if fewer)."""
    n = len(values)
    if n <= k:
        return list(values)
    return sorted({values[round(i * (n - 1) / (k - 1))] for i in range(k)})


def _slot_grid(slot: Slot, space: WidthSpace, groups: Mapping[str, int]) -> set[tuple[int, int, int]] | None:
    """``(in, out, groups)`` of ``slot`` at every combination of its groups' widths (``None``: too many)."""
    names = list(dict.fromkeys(g for g, _ in (*slot.ins, *slot.outs)))
    options = [space.choices.get(g) or (space.fixed.get(g, groups[g]),) for g in names]
    if math.prod(len(o) for o in options) > MAX_COMBINATIONS:
        return None
    drops = [[(groups[g] - w) / groups[g] for w in o] for g, o in zip(names, options, strict=True)]
    return {channels(slot, dict(zip(names, combo, strict=True))) for combo in itertools.product(*drops)}


def _subgrid(grids: list, k: int, keys: Keys) -> dict[str, Entry]:
    """Entries of every slot's sub-grid with ``k`` evenly spaced widths per axis."""
    out = {}
    for slot, triples in grids:
        if all(cin == cout for cin, cout, _ in triples):  # one axis: norms, depthwise, element-wise
            by_width = {cout: (cin, cout, groups) for cin, cout, groups in triples}
            chosen = [by_width[c] for c in _spread(sorted(by_width), k)]
        else:
            groups = next(iter(triples))[2]
            ins = _spread(sorted({t[0] for t in triples}), k)
            outs = _spread(sorted({t[1] for t in triples}), k)
            chosen = [(i, o, groups) for i in ins for o in outs if i % groups == 0 and o % groups == 0]
        out.update((entry[0], entry) for entry in (keys.entry(slot, *t) for t in chosen))
    return out


def _grids(slots: Sequence[Slot], space: WidthSpace, cost: CostModel, keys: Keys) -> tuple[list, dict]:
    """``(slot, its (in, out, groups) grid)`` of the slots that can be enumerated; entries of the others
    at a few architectures (smallest, dense, uniform 1/4, 1/2, 3/4)."""
    groups = dict(cost.groups)
    grids, fallback, drops = [], {}, []
    for slot in slots:
        triples = _slot_grid(slot, space, groups)
        if triples is not None:
            grids.append((slot, triples))
            continue
        if not drops:
            few = [space.smallest(), space.dense(), *(space.uniform(f) for f in (0.25, 0.5, 0.75))]
            drops = [cost.drop_fractions(w) for w in few]
        fallback.update((e[0], e) for e in (keys.entry(slot, *channels(slot, d)) for d in drops))
    return grids, fallback


def plan(
    slots: Sequence[Slot],
    space: WidthSpace,
    cost: CostModel,
    keys: Keys,
    measured: Mapping[str, float],
    max_entries: int,
) -> Plan:
    """The entries to measure so that at most ``max_entries`` are missing from ``measured``.

    Each slot gets every combination of the widths of the groups cutting its input and output
    (``space.choices``; ``space.fixed`` groups at their width). If more than ``max_entries`` of these are
    missing, each slot gets a sub-grid instead: the same number ``k`` of evenly spaced widths per axis
    (input, output; always the smallest and the largest), the largest ``k`` that keeps the missing
    entries within ``max_entries`` (at least 2). A slot whose combinations cannot be enumerated gets the
    keys of a few architectures (smallest, dense, uniform 1/4, 1/2, 3/4). The dense entries are always in.
    """
    grids, fallback = _grids(slots, space, cost, keys)
    dense_drop = cost.drop_fractions({})
    dense = {e[0]: e for e in (keys.entry(slot, *channels(slot, dense_drop)) for slot in slots)}
    full = {**dense, **fallback}
    for slot, triples in grids:
        full.update((entry[0], entry) for entry in (keys.entry(slot, *t) for t in triples))

    def missing(names) -> int:
        return sum(name not in measured for name in names)

    if missing(full) <= max_entries:
        return Plan(full, full, None, len(slots) - len(grids))
    longest = max((len({t[i] for t in triples}) for _, triples in grids for i in (0, 1)), default=2)
    low, high = 2, max(2, longest)
    while low < high:  # the largest k whose sub-grid fits (2 even if it does not)
        mid = (low + high + 1) // 2
        if missing(_subgrid(grids, mid, keys).keys() | dense.keys() | fallback.keys()) <= max_entries:
            low = mid
        else:
            high = mid - 1
    targets = {**dense, **fallback, **_subgrid(grids, low, keys)}
    if missing(targets) > max_entries:
        warnings.warn(
            f"latency LUT: even 2 widths per axis need {missing(targets)} entries "
            f"(> max_entries={max_entries}); measuring them anyway",
            stacklevel=3,
        )
    return Plan(full, targets, low, len(slots) - len(grids))
