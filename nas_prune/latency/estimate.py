"""Entries without timing: interpolated from the measured entries of the same layer slot.

During a search nothing may be timed (trials train on the device), so the search predicts with
``predict(widths, measure_missing=False)``: an entry missing from the table is interpolated from the
measured entries of the same slot (linear over the width, or bilinear over input and output widths), or
scaled from the nearest measured one. Estimates are never written to the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .slots import Slot, channels, depthwise, work
from .table import Keys, split_key


def _between(points: Mapping[float, float], x: float) -> float | None:
    """Linear interpolation of ``{x: y}`` at ``x`` (exact hit or bracketed), ``None`` outside the range."""
    if x in points:
        return points[x]
    below = max((p for p in points if p < x), default=None)
    above = min((p for p in points if p > x), default=None)
    if below is None or above is None:
        return None
    t = (x - below) / (above - below)
    return points[below] * (1 - t) + points[above] * t


class Estimator:
    """Entries of a model's slots from a table that is only ever added to, estimated where missing.

    ``entries`` is the table itself (shared, not copied): indexes and memos are rebuilt when it grows.
    """

    def __init__(self, slots: Sequence[Slot], kinds: Sequence[str], keys: Keys, entries: Mapping[str, float]):
        self.slots, self.kinds, self.keys, self.entries = slots, kinds, keys, entries
        self._index: dict[tuple[str, str], dict[tuple[int, int, int], float]] = {}
        self._estimates: dict[str, float] = {}
        self._indexed = -1  # len(entries) when _index was built
        self._memo: dict[tuple[int, int, int, int], float] = {}  # (slot, in, out, groups) -> ms
        self._memo_size = -1

    def kind_sums(self, drop: Mapping[str, float], sums: dict[str, float]) -> dict[str, float]:
        """Add each slot's entry (or estimate) at the channel fractions ``drop`` to ``sums[kind]``."""
        if len(self.entries) != self._memo_size:  # entries are only ever added: estimates may change
            self._memo, self._memo_size = {}, len(self.entries)
        for i, (slot, kind) in enumerate(zip(self.slots, self.kinds, strict=True)):
            at = channels(slot, drop)
            memo_key = (i, *at)
            ms = self._memo.get(memo_key)
            if ms is None:
                key, *entry = self.keys.entry(slot, *at)
                ms = self._memo[memo_key] = (
                    self.entries[key] if key in self.entries else self.estimate(*entry)
                )
            sums[kind] += ms
        return sums

    def estimate(self, slot: Slot, cin: int, cout: int, groups: int) -> float:
        """A missing entry from the measured entries of the same slot (same key but the widths).

        Linear over the width for one-axis slots (norms, depthwise convs, element-wise ops); over the
        output width within each measured input width, then over the input width (bilinear on a grid)
        otherwise; else the nearest measured entry scaled by :func:`~nas_prune.latency.slots.work`
        (weights ``in * out / groups`` or channels), else the dense entry scaled the same way.
        """
        key = self.keys.entry(slot, cin, cout, groups)[0]
        self._reindex()
        if key in self._estimates:
            return self._estimates[key]
        points = self._index.get(self.keys.parts(slot), {})
        if depthwise(slot):
            own = {(i, o): ms for (i, o, g), ms in points.items() if i == o == g}
        else:
            own = {(i, o): ms for (i, o, g), ms in points.items() if g == groups}
        one_axis = slot.kind not in ("conv", "linear") or depthwise(slot)
        if one_axis or (cin == cout and own and all(i == o for i, o in own)):  # e.g. in and out one group
            value = _between({o: ms for (i, o), ms in own.items() if i == o}, cout)
        else:
            columns: dict[int, dict[float, float]] = {}
            for (i, o), ms in own.items():
                columns.setdefault(i, {})[o] = ms
            across = {i: _between(col, cout) for i, col in columns.items()}
            value = _between({i: v for i, v in across.items() if v is not None}, cin)
        if value is None:
            value = self._scaled(slot, cin, cout, groups, own, key)
        self._estimates[key] = float(value)
        return float(value)

    def _reindex(self) -> None:
        """Rebuild the per-slot index of measured entries if the table grew."""
        if len(self.entries) == self._indexed:
            return
        self._index, self._estimates, self._indexed = {}, {}, len(self.entries)
        for k, ms in self.entries.items():
            split = split_key(k)
            if split:
                parts, point = split
                self._index.setdefault(parts, {})[point] = ms

    def _scaled(self, slot: Slot, cin: int, cout: int, groups: int, own: dict, key: str) -> float:
        """The nearest of the slot's measured entries ``own`` (else the dense one) scaled by the work."""
        if not own:
            full = {g: 0.0 for g, _ in (*slot.ins, *slot.outs)}
            dense = self.keys.entry(slot, *channels(slot, full))
            if dense[0] not in self.entries:
                raise RuntimeError(f"no measured entry to estimate {key!r} from: call prepare() first")
            own = {dense[2:4]: self.entries[dense[0]]}

        def distance(point):
            return abs(math.log(max(point[0], 1) / max(cin, 1))) + abs(
                math.log(max(point[1], 1) / max(cout, 1))
            )

        i, o = min(own, key=distance)
        g = o if depthwise(slot) else groups
        return own[i, o] * work(slot, cin, cout, groups) / work(slot, i, o, g)
