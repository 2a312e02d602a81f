"""The search space: candidate widths per channel group, and the budgets a candidate must meet.

A candidate is a ``{group: channels}`` dict (the ``widths`` column of trials.csv). Each searched group takes one of
a few widths: ``round_to``-multiples from ``min_fraction`` of the dense width up to the full width
(or the fractions of an explicit ``grid``); a group cut by grouped convolutions steps by the least
common multiple of ``round_to`` and its ``multiple``. Frozen groups (not prunable, or listed in the model's
``nas_prune/search_spaces/<model>.yaml``) always keep their full width. Search algorithms see a candidate as
one integer index per group (:meth:`WidthSpace.encode` / :meth:`WidthSpace.decode`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import NasPruneError
from .graph import ChannelGroup
from .prune import round_width

__all__ = ["Budget", "WidthSpace"]


@dataclass(frozen=True)
class WidthSpace:
    """Candidate widths of every searched group.

    Attributes:
        choices: searched group -> ascending candidate widths; the last one is the dense width.
        fixed: group -> width of groups that are never searched (full width).
        round_to: widths are multiples of this (or the full width).
    """

    choices: dict[str, tuple[int, ...]]
    fixed: dict[str, int] = field(default_factory=dict)
    round_to: int = 1

    @classmethod
    def build(
        cls,
        groups: Sequence[ChannelGroup],
        *,
        round_to: int = 1,
        min_fraction: float = 0.1,
        grid: Iterable[float] | None = None,
        frozen: Iterable[str] = (),
    ) -> WidthSpace:
        """The space of ``groups``: ``grid`` fractions (default: every ``round_to`` step) from
        ``min_fraction`` up to full width; ``frozen`` names and unprunable groups stay at full width."""
        if not 0.0 < min_fraction <= 1.0:
            raise NasPruneError(f"min_fraction must be in (0, 1], got {min_fraction}")
        frozen = set(frozen)
        unknown = frozen - {g.name for g in groups}
        if unknown:
            raise NasPruneError(f"frozen group(s) {sorted(unknown)} are not channel groups of this model")
        choices, fixed = {}, {}
        for g in groups:
            if not g.prunable or g.name in frozen or g.channels == 1:
                fixed[g.name] = g.channels
                continue
            step = math.lcm(max(1, round_to), g.multiple)  # grouped convs: whole positions per block
            lowest = round_width(g.channels, min_fraction, step)
            if grid is None:
                widths = set(range(lowest, g.channels, step))
            else:
                widths = {round_width(g.channels, f, step) for f in grid if f >= min_fraction}
            widths = sorted({w for w in widths if lowest <= w < g.channels} | {g.channels})
            if len(widths) == 1:
                fixed[g.name] = g.channels
            else:
                choices[g.name] = tuple(widths)
        return cls(choices=choices, fixed=fixed, round_to=round_to)

    @classmethod
    def of_model(
        cls,
        name: str,
        model,
        example_inputs,
        *,
        round_to: int | None = None,
        min_fraction: float | None = None,
        freeze: Iterable[str] = (),
    ) -> tuple[list[ChannelGroup], WidthSpace]:
        """Channel groups and space of ``model``: the settings of its ``search_spaces/<name>.yaml`` (a zoo
        model; defaults otherwise), overridden by ``round_to``/``min_fraction`` when given, and the YAML's
        frozen groups plus ``freeze`` at full width. The one place a space is read from YAML."""
        from .graph import channel_groups
        from .models import load_search_space

        yaml_space = load_search_space(name) or {}
        frozen = (*yaml_space.get("frozen", ()), *freeze)
        groups = channel_groups(model, example_inputs, frozen=frozen)
        space = cls.build(
            groups,
            round_to=round_to or yaml_space.get("round_to", 1),
            min_fraction=min_fraction or yaml_space.get("min_fraction", 0.1),
            grid=yaml_space.get("grid"),
            frozen=frozen,
        )
        return groups, space

    @property
    def names(self) -> list[str]:
        """Searched group names, in model order."""
        return list(self.choices)

    @property
    def size(self) -> int:
        """Number of distinct candidates."""
        return math.prod(len(c) for c in self.choices.values())

    def dense(self) -> dict[str, int]:
        """Every group at full width."""
        return self.decode({n: len(c) - 1 for n, c in self.choices.items()})

    def smallest(self) -> dict[str, int]:
        """Every searched group at its narrowest choice."""
        return self.decode({n: 0 for n in self.choices})

    def random(self, rng: random.Random) -> dict[str, int]:
        """A uniformly random architecture of the grid: an independent choice per searched group, the
        irregular kind of allocation a search proposes (used to time, calibrate and test on)."""
        return self.decode({n: rng.randrange(len(c)) for n, c in self.choices.items()})

    def spanning(self, count: int, rng: random.Random, spread: float = 0.2) -> list[dict[str, int]]:
        """``count`` random architectures whose overall width spans the grid, from narrow to dense.

        Architecture ``i`` takes a level in the ``i``-th of ``count`` equal strata of [0, 1] and draws
        every searched group's choice independently around it (a Gaussian of ``spread`` grid lengths),
        so each is as irregular per group as :meth:`random`, but the set is not clustered: independent
        uniform choices average out over many groups, and ten :meth:`random` draws of a deep model
        differ in latency by a few percent, less than a CPU timing repeats to, so they rank nothing.
        """
        levels = [(i + rng.random()) / count for i in range(count)]
        return [
            self.decode(
                {
                    n: round(min(max(level + rng.gauss(0.0, spread), 0.0), 1.0) * (len(c) - 1))
                    for n, c in self.choices.items()
                }
            )
            for level in levels
        ]

    def decode(self, indices: Mapping[str, int]) -> dict[str, int]:
        """Widths of every group (fixed ones included) from one choice index per searched group."""
        widths = {n: c[int(indices[n])] for n, c in self.choices.items()}
        return {**widths, **self.fixed}

    def encode(self, widths: Mapping[str, int]) -> dict[str, int]:
        """Choice index per searched group; ``widths`` must lie on the grid (see :meth:`snap`)."""
        try:
            return {n: c.index(int(widths[n])) for n, c in self.choices.items()}
        except (KeyError, ValueError) as err:
            raise NasPruneError(f"widths {dict(widths)} are not on the search grid: {err}") from None

    def snap(self, widths: Mapping[str, int]) -> dict[str, int]:
        """Each searched group's width rounded down onto the grid (never below its smallest choice)."""
        snapped = {}
        for n, c in self.choices.items():
            want = int(widths.get(n, c[-1]))
            snapped[n] = max([w for w in c if w <= want], default=c[0])
        return {**snapped, **self.fixed}

    def uniform(self, fraction: float) -> dict[str, int]:
        """Every searched group at ``fraction`` of its width (rounded to ``round_to``), snapped."""
        return self.snap({n: round_width(c[-1], fraction, self.round_to) for n, c in self.choices.items()})


@dataclass(frozen=True)
class Budget:
    """Resource budgets as fractions of the dense model (``None`` = no such budget).

    ``latency_ms`` is absolute; ``latency_fraction`` is relative to the dense model's measured latency.
    """

    flops: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    latency_fraction: float | None = None

    def __post_init__(self):
        for name in ("flops", "params", "latency_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise NasPruneError(
                    f"--budget-{name.split('_')[0]} must be a fraction in (0, 1], got {value}"
                )
        if self.latency_ms is not None and self.latency_ms <= 0:
            raise NasPruneError(f"--budget-latency must be positive, got {self.latency_ms}ms")
        if all(getattr(self, n) is None for n in ("flops", "params", "latency_ms", "latency_fraction")):
            raise NasPruneError(
                "give at least one budget: --budget-flops, --budget-params or --budget-latency"
            )

    def violations(self, macs: int, params: int, dense_macs: int, dense_params: int) -> dict[str, float]:
        """Relative excess over each FLOP/parameter budget (``<= 0`` means met), Optuna's constraint form."""
        out = {}
        if self.flops is not None:
            out["flops"] = macs / dense_macs - self.flops
        if self.params is not None:
            out["params"] = params / dense_params - self.params
        return out

    def met(self, macs: int, params: int, dense_macs: int, dense_params: int) -> bool:
        """True when every FLOP/parameter budget holds."""
        return all(v <= 1e-12 for v in self.violations(macs, params, dense_macs, dense_params).values())

    def label(self) -> str:
        """Short text for run names and plots, e.g. ``flops0.3``."""
        parts = []
        if self.flops is not None:
            parts.append(f"flops{self.flops:g}")
        if self.params is not None:
            parts.append(f"params{self.params:g}")
        if self.latency_ms is not None:
            parts.append(f"lat{self.latency_ms:g}ms")
        if self.latency_fraction is not None:
            parts.append(f"lat{self.latency_fraction:g}")
        return "-".join(parts)
