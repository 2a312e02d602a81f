"""Calibrating a per-layer latency table against whole models, judging it, and aiming at a latency limit.

Layers timed alone do not add up to the network: on this CPU the entries of a deep network sum to up to
twice its measured latency (per-call overhead that overlaps in a real forward pass, caches that stay
warm from one layer to the next), and the error grows with depth, so one additive constant fitted at the
dense width cannot correct it (it came out negative, and so did predictions). A :class:`Calibration`
scales each *kind* of entry (conv, depthwise conv, linear, norm, element-wise) and adds a constant,

    predicted ms = sum over kinds of scale[kind] * (sum of that kind's entries) + constant_ms,

fitted to a handful of whole-model measurements by non-negative least squares on relative errors
(:func:`fit_calibration`). Scales and constant are never negative, so neither is a prediction.
Before a fit, only the dense model is measured (:meth:`Calibration.from_dense`).

:func:`agreement` judges predictions against measurement: the LUT may reject candidates only
once it is trusted on the device (median error <= 15% and Spearman >= 0.9 on random widths).

:func:`bisect_to_latency` finds, by bisection over a global width scale, the widest architecture whose
latency (measured, or predicted by a trusted LUT) sits just under a limit: the search's latency seeds and
its projection of proposals onto a latency budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import nnls

__all__ = [
    "KINDS",
    "MAX_MEDIAN_ERROR",
    "MIN_SPEARMAN",
    "Calibration",
    "LatencyFit",
    "agreement",
    "bisect_to_latency",
    "default_samples",
    "fit_calibration",
]

KINDS = ("conv", "depthwise", "linear", "norm", "elementwise")
"""Kinds of LUT entries; each gets its own scale in a :class:`Calibration`."""

PRIOR_WEIGHT = 0.05
"""Pull of each scale towards 1 (the entries as timed), relative to one sample's relative error: keeps a
kind that barely varies across the samples from taking an arbitrary scale."""

MAX_MEDIAN_ERROR = 0.15
"""A LUT is trusted on a device when its median relative error is at most this ..."""
MIN_SPEARMAN = 0.9
"""... and its rank correlation with measured latency at least this."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """``predicted ms = sum(scales[kind] * sums[kind]) + constant_ms`` (see the module docstring).

    Attributes:
        scales: kind -> non-negative factor on the sum of that kind's entries (missing kinds: 1).
        constant_ms: time no entry covers (``forward`` glue, layers without entries); non-negative when
            fitted, possibly negative from the dense model alone (see :meth:`from_dense`).
        samples: whole-model measurements fitted (1 = only the dense model: no fit, see
            :meth:`from_dense`).
        median_error: median relative error on the fitted samples.
        worst_error: largest relative error on the fitted samples.
        floor_ms: the smallest prediction (0 when fitted: scales and constant are non-negative).
    """

    scales: Mapping[str, float]
    constant_ms: float
    samples: int = 1
    median_error: float = 0.0
    worst_error: float = 0.0
    floor_ms: float = 0.0

    def predict(self, sums: Mapping[str, float]) -> float:
        """Predicted latency from the per-kind sums of entries (at least :attr:`floor_ms`)."""
        total = sum(self.scales.get(k, 1.0) * ms for k, ms in sums.items()) + self.constant_ms
        return float(max(total, self.floor_ms))

    @classmethod
    def from_dense(cls, sums: Mapping[str, float], dense_ms: float) -> Calibration:
        """Calibration from the dense model alone: the entries as timed plus the rest as a constant.

        With one measurement, scale and offset cannot be told apart; the offset is kept (exact when the
        entries' excess is per-call overhead that every architecture pays). If the entries exceed the
        dense latency the constant is negative and a narrow architecture could be predicted below zero,
        so predictions are floored at 0.1% of the dense latency: such a table fails validation (it only
        orders candidates) until :func:`fit_calibration` scales it from more measurements.
        """
        constant = float(dense_ms - sum(sums.values()))
        return cls(dict.fromkeys(KINDS, 1.0), constant, floor_ms=1e-3 * dense_ms if constant < 0 else 0.0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"scales": dict(self.scales)}


def fit_calibration(
    sums: Sequence[Mapping[str, float]], measured_ms: Sequence[float], prior_weight: float = PRIOR_WEIGHT
) -> Calibration:
    """Fit per-kind scales and a constant to whole-model measurements (non-negative least squares).

    Each sample's residual is divided by its measured latency, so small and large architectures count
    alike (relative error is what the LUT is judged on). One extra row per kind pulls its scale towards
    1 with weight ``prior_weight``; kinds absent from every sample keep scale 1. Samples off by more than
    3x the median error (and 5%) are dropped and the fit repeated once, if at least half remain: load on
    a shared machine only ever adds time, and one spoiled timing should not bend every prediction.
    The reported errors still cover every sample.

    Args:
        sums: per sample, kind -> sum of that kind's entries (ms).
        measured_ms: per sample, the measured latency of the whole model.
        prior_weight: weight of the pull of each scale towards 1.

    Returns:
        The fitted :class:`Calibration` with its in-sample errors.
    """
    if len(sums) != len(measured_ms) or not sums:
        raise ValueError(
            f"need as many measurements as samples (>= 1), got {len(sums)} and {len(measured_ms)}"
        )
    y = np.asarray(measured_ms, dtype=float)
    if not np.all(y > 0):
        raise ValueError(f"measured latencies must be positive, got {measured_ms}")
    kinds = [k for k in KINDS if any(s.get(k, 0.0) > 0 for s in sums)]
    features = np.array([[s.get(k, 0.0) for k in kinds] + [1.0] for s in sums])
    prior = np.hstack([prior_weight * np.eye(len(kinds)), np.zeros((len(kinds), 1))])

    def solve(keep: np.ndarray) -> np.ndarray:
        rows = np.vstack([features[keep] / y[keep, None], prior])
        return nnls(rows, np.concatenate([np.ones(int(keep.sum())), np.full(len(kinds), prior_weight)]))[0]

    solution = solve(np.ones(len(y), dtype=bool))
    errors = np.abs(features @ solution - y) / y
    inliers = errors <= max(3 * float(np.median(errors)), 0.05)
    if 2 * inliers.sum() >= len(y) and not inliers.all():  # a timing spoiled by load: refit without it
        solution = solve(inliers)
        errors = np.abs(features @ solution - y) / y
    scales = dict.fromkeys(KINDS, 1.0) | {k: float(v) for k, v in zip(kinds, solution[:-1], strict=True)}
    return Calibration(scales, float(solution[-1]), len(y), float(np.median(errors)), float(errors.max()))


def default_samples(groups: Mapping[str, int], count: int, seed: int) -> list[dict[str, int]]:
    """``count`` architectures to calibrate on: random widths, each group between 10% and all of its
    channels, like the irregular allocations a search proposes. Uniform fractions are left out: a fit
    that leans on them under-predicts random architectures (on the 2-core CPU, a fit on uniform 1/4,
    1/2, 3/4 and the dense alone was 5-22% under on 10 of 10 random convnet widths at batch 32, one on
    random widths 5.7% off either way: results/BENCHMARKS.md, issue 12)."""
    rng = random.Random(seed)
    return [{g: rng.randint(max(1, round(0.1 * c)), c) for g, c in groups.items()} for _ in range(count)]


def agreement(pairs: Sequence[tuple[dict[str, int], float, float]]) -> dict:
    """How predictions agree with measurement, from ``(widths, predicted ms, measured ms)`` per sample.

    Returns:
        A dict with ``median_error`` and ``worst_error`` (relative ``|predicted - measured| /
        measured``), ``spearman`` (rank correlation; NaN below 2 samples or for constant values),
        ``trusted`` (median error <= :data:`MAX_MEDIAN_ERROR` and Spearman >= :data:`MIN_SPEARMAN`) and
        ``pairs``: one ``{"widths", "predicted_ms", "measured_ms", "error"}`` per sample.
    """
    rows = [{"widths": w, "predicted_ms": p, "measured_ms": m, "error": abs(p - m) / m} for w, p, m in pairs]
    frame = pd.DataFrame(rows)
    spearman = float(frame["predicted_ms"].rank().corr(frame["measured_ms"].rank()))
    median_error = float(frame["error"].median())
    trusted = median_error <= MAX_MEDIAN_ERROR and not math.isnan(spearman) and spearman >= MIN_SPEARMAN
    return {
        "median_error": median_error,
        "worst_error": float(frame["error"].max()),
        "spearman": spearman,
        "trusted": trusted,
        "pairs": rows,
    }


@dataclasses.dataclass(frozen=True)
class LatencyFit:
    """Result of :func:`bisect_to_latency`.

    Attributes:
        widths: the widest architecture found within the target.
        scale: the global width scale that gave it.
        latency_ms: its latency as ``measure`` gave it.
        evaluations: distinct architectures ``measure`` was called on.
    """

    widths: dict[str, int]
    scale: float
    latency_ms: float
    evaluations: int


def bisect_to_latency(
    widths_at: Callable[[float], Mapping[str, int]],
    measure: Callable[[Mapping[str, int]], float],
    limit_ms: float,
    *,
    margin: float = 0.03,
    tolerance: float = 0.05,
    low: float = 0.0,
    high: float = 1.0,
    max_steps: int = 12,
) -> LatencyFit | None:
    """The widest architecture ``widths_at(scale)`` whose latency is within ``limit_ms * (1 - margin)``.

    Bisection over the global scale in ``[low, high]``, assuming latency grows with it. ``margin``
    absorbs timing noise (a measured candidate at the limit may measure over it next time; 0 for a
    deterministic ``measure`` such as a LUT's prediction). Stops once the best candidate is within
    ``tolerance`` under the target, after ``max_steps`` bisections, or when the scale no longer changes
    the widths (a grid). Each distinct architecture is measured once.

    Args:
        widths_at: scale -> ``{group: channels}`` (e.g. ``space.uniform``, or a proposal's allocation
            scaled and snapped to the grid); monotone in the scale.
        measure: widths -> ms (real timing of the pruned model, or ``lut.predict(w,
            measure_missing=False)`` for a trusted LUT).
        limit_ms: the latency limit.
        margin: fraction of the limit kept free for noise.
        tolerance: stop when the candidate is at least ``target * (1 - tolerance)``.
        low, high: the scale's range; ``widths_at(low)`` is the narrowest candidate.
        max_steps: bisection steps after the two ends.

    Returns:
        The :class:`LatencyFit`, or ``None`` when even ``widths_at(low)`` exceeds the target.
    """
    if not 0 <= margin < 1 or limit_ms <= 0:
        raise ValueError(f"need limit_ms > 0 and 0 <= margin < 1, got {limit_ms} and {margin}")
    target = limit_ms * (1 - margin)
    seen: dict[str, float] = {}

    def timed(scale: float) -> tuple[dict[str, int], float]:
        widths = dict(widths_at(scale))
        key = json.dumps(widths, sort_keys=True)
        if key not in seen:
            seen[key] = float(measure(widths))
        return widths, seen[key]

    widths, ms = timed(high)
    if ms <= target:
        return LatencyFit(widths, high, ms, len(seen))
    widths, ms = timed(low)
    if ms > target:
        return None
    best = LatencyFit(widths, low, ms, len(seen))
    for _ in range(max_steps):
        if best.latency_ms >= target * (1 - tolerance):
            break
        mid = (low + high) / 2
        before = len(seen)
        widths, ms = timed(mid)
        if ms <= target:
            low, best = mid, LatencyFit(widths, mid, ms, len(seen))
        else:
            high = mid
        if len(seen) == before and widths == best.widths and high - low < 1e-3:
            break  # the grid cannot get closer
    return dataclasses.replace(best, evaluations=len(seen))
