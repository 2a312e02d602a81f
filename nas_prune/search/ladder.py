"""The fidelity ladder: which candidate is evaluated at which rung, and how well the rungs agree.

Rung 0 scores every candidate without fine-tuning (slim + adaptive BN + validation, EagleEye). Rung
``r`` = 1..K fine-tunes for ``E / eta^(K - r)`` epochs (``E = --epochs-per-trial``, ``eta =
--reduction-factor``) and is reached by the best ``1/eta`` of the rung below (successive halving,
Hyperband's geometry), decided *within each cost level* so every level has candidates at the top rung
and the front stays a curve. Seeds always climb every rung: "the search beats its seeds" is then judged
at equal fidelity.

Promotion is synchronous: rung ``r + 1`` is decided once every rung-``r`` evaluation of the non-seed
candidates is in, from those scores only, so the decision is the same after a kill and ``--resume``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats

from .journal import Journal

__all__ = ["Ladder", "correlations"]

WEAK_KENDALL = 0.3
"""Below this Kendall tau a cheap rung does not predict the next one (the report says so)."""


@dataclass(frozen=True)
class Ladder:
    """Fine-tuning epochs per rung (``epochs[0] == 0``) and the reduction factor between rungs."""

    epochs: tuple[float, ...]
    reduction: int

    @classmethod
    def build(cls, top_epochs: float, rungs: int, reduction: int) -> Ladder:
        fine = tuple(top_epochs / reduction ** (rungs - r) for r in range(1, rungs + 1))
        return cls((0.0, *fine), reduction)

    @property
    def top(self) -> int:
        return len(self.epochs) - 1

    def keep(self, n: int) -> int:
        """How many of ``n`` candidates of one level go up a rung: ``n // eta``, at least one."""
        return max(1, n // self.reduction) if n else 0

    def planned(self, per_level: Iterable[int]) -> list[int]:
        """Non-seed candidates expected at each fine-tune rung 1..K for rung-0 counts per level."""
        counts = [0] * self.top
        for n in per_level:
            for r in range(self.top):
                n = self.keep(n)
                counts[r] += n
        return counts

    def promoted(self, journal: Journal, rung: int, seeds: set[int]) -> list[int]:
        """Non-seed candidates that go from ``rung`` to ``rung + 1``: each level's best ``1/eta`` among
        those scored at ``rung`` (ties: lower trial id; rung 0 by :meth:`Journal.rung0_scores`), seeds
        excluded (they climb anyway)."""
        by_level: dict[float, list[tuple[float, int]]] = {}
        rung0 = journal.rung0_scores() if rung == 0 else {}
        for trial_id, cand in journal.candidates.items():
            score = rung0.get(trial_id) if rung == 0 else journal.score(trial_id, rung)
            if trial_id in seeds or score is None:
                continue
            by_level.setdefault(float(cand["level"]), []).append((-score, trial_id))
        chosen = []
        for ranked in by_level.values():
            ranked.sort()
            chosen += [trial_id for _, trial_id in ranked[: self.keep(len(ranked))]]
        return sorted(chosen)


def rank_agreement(pairs: list[tuple[float, float]]) -> dict:
    """``n``, Kendall tau and Spearman rho of ``(a, b)`` pairs (None below 3 pairs or when undefined)."""
    kendall = spearman = None
    if len(pairs) >= 3:
        a, b = zip(*pairs, strict=True)
        kendall = _finite(stats.kendalltau(a, b).statistic)
        spearman = _finite(stats.spearmanr(a, b).statistic)
    return {"n": len(pairs), "kendall": kendall, "spearman": spearman}


def correlations(journal: Journal, ladder: Ladder) -> list[dict]:
    """Kendall tau and Spearman rho between consecutive rungs, on the candidates scored at both."""
    out = []
    for lower in range(ladder.top):
        pairs = [
            (journal.score(t, lower), journal.score(t, lower + 1))
            for t in journal.candidates
            if journal.score(t, lower) is not None and journal.score(t, lower + 1) is not None
        ]
        out.append({"lower": lower, "upper": lower + 1, **rank_agreement(pairs)})
    return out


def judges(journal: Journal, ladder: Ladder, supernet: bool) -> dict:
    """The rung-0 judges against the top rung, on the same candidates (those with all their scores).

    ``supernet``: the rung-0 score when the run sliced a supernet; ``dense``: the candidate sliced from
    the dense weights with adaptive BN: rung 0's own score without a supernet, else the ``dense_judge``
    that fine-tune jobs (and rung 0 with ``--rung0-judge both``) record; ``both``: what such a rung 0
    ranked by (:meth:`Journal.rung0_scores`). A judge the run did not use is None.
    """
    top = ladder.top
    ranked_by = journal.rung0_scores()
    both = supernet and any(
        r.get("dense_judge") is not None for (_, k), r in journal.results.items() if k == 0
    )
    rows = []
    for trial_id in journal.candidates:
        final, rung0 = journal.score(trial_id, top), journal.score(trial_id, 0)
        dense = rung0
        if supernet:
            judged = [r.get("dense_judge") for (t, _), r in journal.results.items() if t == trial_id]
            dense = next((v for v in judged if v is not None), None)
        if top > 0 and None not in (final, rung0, dense):
            rows.append((rung0, dense, final, ranked_by.get(trial_id)))
    return {
        "top_rung": top,
        "supernet": rank_agreement([(r[0], r[2]) for r in rows]) if supernet else None,
        "dense": rank_agreement([(r[1], r[2]) for r in rows]),
        "both": rank_agreement([(r[3], r[2]) for r in rows]) if both else None,
    }


def _finite(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def fidelity_warning(pairs: list[dict]) -> str | None:
    """A sentence naming every rung pair whose Kendall tau is below :data:`WEAK_KENDALL`, else None."""
    weak = [p for p in pairs if p["kendall"] is not None and p["kendall"] < WEAK_KENDALL]
    if not weak:
        return None
    text = "; ".join(
        f"rung {p['lower']} -> {p['upper']}: Kendall {p['kendall']:.2f} on {p['n']}" for p in weak
    )
    return (
        f"the cheap rung does not predict the next one ({text}): its ranking is little better than chance "
        "here; give the fine-tune rungs more candidates (--reduction-factor) or more epochs"
    )
