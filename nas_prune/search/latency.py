"""A latency budget during the search: the latency LUT's guard, and measured latency after the ladder.

``limit_ms`` is fixed at the start of the run (a fraction budget times the dense latency measured then)
and kept in ``latency.json`` so a resumed run judges by the same limit. The LUT's entries for the whole
width grid are measured before any evaluation starts, so nothing is timed while workers train; when the
plain table fails validation it is calibrated (per-kind scales fitted to whole-model timings) and
validated again on architectures the fit did not see; the dense model, the fit's and the held-out
architectures are timed in the same rounds. The projection aims every proposal, by the LUT's
prediction, at the limit less the LUT's median error on those architectures
(``LatencyGuard.aim_ms``), so proposals measure under the limit. Only a LUT that passed validation on
this device (median error <= 15% and Spearman >= 0.9 on random widths spanning the grid) may reject
anything (proposals the projection cannot fit, seeds); an untrusted LUT only aims and orders.
Feasibility in trials.csv is judged on the latency measured after the ladder, and seeds are fitted by
measurement (``LatencyGuard.paired``): the models compared are timed in the same rounds as the dense
model, and a fraction budget is judged on that paired ratio, so a machine that has slowed since the
limit was fixed neither drops the candidates nor starves the seeds.
"""

from __future__ import annotations

import functools
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..atomic import atomic_write_text
from ..batch import batch_size
from ..config import device_label
from ..cost import measure_latency
from ..errors import NasPruneError
from ..latency import LatencyLUT, bisect_to_latency
from ..latency.calibration import MAX_MEDIAN_ERROR
from ..prune import prune
from ..results import write_trials
from ..space import WidthSpace

__all__ = ["MAX_MARGIN", "LatencyGuard", "latency_guard", "measure_latencies"]

MAX_MARGIN = MAX_MEDIAN_ERROR  # a LUT further off is not trusted; aiming lower would waste budget


@dataclass
class LatencyGuard:
    """A latency budget during the search, judged by the latency LUT (see the module docstring).

    ``limit_ms`` is fixed at the start of the run (a fraction budget times the dense latency measured
    then) and kept in ``latency.json`` so a resumed run judges by the same limit. ``trusted``: the LUT
    passed validation on this device (median error <= 15%, Spearman >= 0.9) on architectures
    its calibration did not see, so it may reject; an untrusted LUT only aims and orders.
    ``relative``: the limit is a fraction of the dense latency (``--budget-latency 0.5``), not
    milliseconds. ``margin``: the LUT's median error on held-out architectures; proposals aim that far
    under the limit.
    """

    lut: LatencyLUT
    dense_ms: float
    limit_ms: float
    trusted: bool
    space: WidthSpace
    relative: bool = False
    margin: float = 0.0

    def aim_ms(self) -> float:
        """Where the projection aims proposals: the limit less the LUT's median error (at most
        ``MAX_MARGIN``). Aimed at the limit itself, a candidate the LUT predicts 2% under it measures
        over it about half the time (resnet20 at batch 1: the three most accurate proposals of a search
        measured 2 to 5% over the limit and were dropped), while feasibility stays judged on the limit."""
        return self.limit_ms * (1.0 - min(max(self.margin, 0.0), MAX_MARGIN))

    def violation(self, widths: dict[str, int]) -> tuple[float, float]:
        """``(predicted ms, predicted / limit - 1)``; never times anything (the grid was prepared)."""
        predicted = self.lut.predict(widths, measure_missing=False)
        return predicted, predicted / self.limit_ms - 1.0

    def meets(self, widths: dict[str, int]) -> bool:
        """Within the limit by the LUT's prediction; always True for an untrusted LUT."""
        return not self.trusted or self.violation(widths)[1] <= 1e-12

    def fit(self, widths: dict[str, int]) -> dict[str, int] | None:
        """``widths`` if it *measures* under the limit, else the widest ``widths`` scaled down by one
        factor that does (bisection on measured latency with a 3% noise margin); None when even the
        narrowest grid widths measure over it. Seeds sit right at the budget, where a LUT's error
        decides, so they are fitted by measurement whether or not the LUT is trusted."""
        scaled = lambda s: self.space.snap({n: w * s for n, w in widths.items()})  # noqa: E731
        found = bisect_to_latency(scaled, self.measured, self.limit_ms)
        return None if found is None else dict(found.widths)

    def paired(self, samples: list[dict[str, int]], seed: int = 0) -> tuple[float, list[float]]:
        """``(dense ms, [ms of each sample])``, timed in the same rounds (:meth:`LatencyLUT.time_pruned`,
        the estimator the limit was fixed with): one model timed minutes or an hour after the limit
        carries the machine's drift, against it (a search's three best resnet20s, timed one by one
        right after its workers stopped, measured 3 to 53% over a limit the LUT had aimed them under)."""
        dense, *times = self.lut.time_pruned([{}, *samples], seed)
        return dense, times

    def measured(self, widths: dict[str, int]) -> float:
        """``widths`` measured in the limit's terms: for a fraction budget (a ratio), its ratio to the
        dense model timed with it, times the dense latency the limit was fixed with."""
        dense, (ms,) = self.paired([widths])
        return ms * self.dense_ms / dense if self.relative else ms


def measure_fn(latency_fn: Callable | None) -> Callable:
    """``latency_fn(model, example_inputs, device, batch) -> ms`` (tests inject one) or real timing."""
    if latency_fn is not None:
        return latency_fn
    return lambda model, example, device, batch: measure_latency(model, example, device=device, batch=batch)


def _validate(lut: LatencyLUT, space: WidthSpace, cfg) -> tuple[float, dict]:
    """The dense latency, and the LUT validated on held-out architectures; if the plain table is not
    trusted, it is calibrated on other architectures of the grid (per-kind scales, issue 12) and
    validated again, and the better kept.

    The dense model, the held-out and the fit's architectures are timed in the same rounds
    (:meth:`LatencyLUT.time_pruned`): a machine whose speed drifts between the fit and its validation
    would otherwise show the drift as the LUT's error.
    """
    # random per group, like proposals (uniform ones bias the fit), and spanning the grid so that the
    # measured order means something (WidthSpace.spanning)
    held_out = [space.smallest(), *space.spanning(cfg.lut_samples, random.Random(cfg.seed))]
    fit = space.spanning(6, random.Random(cfg.seed + 1))
    timed = [{}, *held_out, *fit]
    times = dict(zip(map(_key, timed), lut.time_pruned(timed, cfg.seed), strict=True))
    measured = lambda widths: times[_key(widths)]  # noqa: E731
    report = lut.validate(held_out, measured)
    if report["trusted"]:
        return measured({}), {**report, "calibrated": False}
    lut.calibrate(fit, measure=measured)
    calibrated = lut.validate(held_out, measured)
    better = calibrated["median_error"] <= report["median_error"]
    return measured({}), ({**calibrated, "calibrated": True} if better else report)


def _key(widths: dict[str, int]) -> str:
    return json.dumps(dict(widths), sort_keys=True)


def _injected(latency_fn: Callable, module: nn.Module, shape_or_inputs: Any, device) -> float:
    """An injected ``latency_fn(model, inputs, device, batch)`` as the LUT's ``measure_fn``, which gets a
    layer's input shape, or a whole model's inputs when the model takes a tuple or dict of them."""
    if isinstance(shape_or_inputs, (tuple, list)) and all(isinstance(d, int) for d in shape_or_inputs):
        shape_or_inputs = torch.zeros(shape_or_inputs)
    return latency_fn(module, shape_or_inputs, device, batch_size(shape_or_inputs))


def latency_guard(
    cfg, budget, model, example, space, run_dir: Path, device, latency_fn, resume: bool, quiet: bool
) -> LatencyGuard | None:
    """The latency budget's guard, ``None`` without one.

    Builds the LUT on ``device``, measures every layer shape on the search grid before any evaluation
    starts (nothing is timed while workers train), measures the dense model, and validates the LUT on
    ``cfg.lut_samples`` random grid architectures spanning the grid plus the smallest (calibrating it
    first on others when the plain table fails). ``latency.json`` records the limit and the verdict; ``--resume``
    reuses them when the device, batch and budget match.

    Raises:
        NasPruneError: a trusted LUT predicts even the smallest architecture over the limit.
    """
    if not (budget.latency_ms or budget.latency_fraction):
        return None
    layer_fn = None
    if latency_fn is not None:
        layer_fn = functools.partial(_injected, latency_fn)
    lut = LatencyLUT(
        model, example, device=device, batch=cfg.latency_batch, cache_dir=cfg.lut_dir, measure_fn=layer_fn
    )

    relative = budget.latency_ms is None
    key = {"device": device_label(device), "batch": cfg.latency_batch, "budget": budget.label()}
    saved = run_dir / "latency.json"
    if not quiet:
        print(f"Latency budget: preparing and validating the latency LUT on {key['device']} ...")
    lut.prepare(space, progress=not quiet)
    if resume and saved.is_file():
        info = json.loads(saved.read_text())
        if all(info.get(k) == v for k, v in key.items()):
            return LatencyGuard(
                lut, info["dense_ms"], info["limit_ms"], info["trusted"], space, relative,
                margin=info.get("median_error") or 0.0,
            )  # fmt: skip
        print(
            f"warning: {saved} was made for {[info.get(k) for k in key]}; validating again", file=sys.stderr
        )
    dense_ms, report = _validate(lut, space, cfg)
    limit_ms = budget.latency_ms or budget.latency_fraction * dense_ms
    guard = LatencyGuard(
        lut, dense_ms, limit_ms, bool(report["trusted"]), space, relative, report["median_error"]
    )
    if not guard.meets(space.smallest()):
        raise NasPruneError(
            f"no architecture in the space meets {budget.label()}: the smallest is predicted at "
            f"{lut.predict(space.smallest()):.3f} ms against a limit of {limit_ms:.3f} ms"
        )
    info = {**key, "dense_ms": dense_ms, "limit_ms": limit_ms, "trusted": guard.trusted}
    info.update({k: report[k] for k in ("median_error", "worst_error", "spearman", "calibrated", "pairs")})
    atomic_write_text(saved, json.dumps(info, indent=2, default=float))
    if not quiet:
        verdict = (
            "may reject proposals over the limit" if guard.trusted else "only aims and orders (not trusted)"
        )
        print(
            f"  dense {dense_ms:.3f} ms, limit {limit_ms:.3f} ms; LUT{' (calibrated)' if info['calibrated'] else ''} "
            f"median error {info['median_error']:.1%}, worst {info['worst_error']:.1%}, Spearman "
            f"{info['spearman']:.2f} on held-out architectures: it {verdict}; proposals aim at "
            f"{guard.aim_ms():.3f} ms"
        )
    return guard


def measure_latencies(
    run_dir: Path, trials: pd.DataFrame, dense: dict, example, model, cfg, guard, device, latency_fn
):
    """Measure every top-rung candidate (``complete``) that has no latency yet, in this process, and
    judge a latency budget on the measurement against the run's limit.

    With a latency budget the candidates and the dense model are timed in the same rounds
    (:meth:`LatencyGuard.paired`); ``latency_ratio`` is the paired ratio, and a fraction budget is
    judged on it. Lower-rung candidates are not measured: the front and the best architecture are taken
    over the top rung only, and timing hundreds of rung-0 candidates would cost more than scoring them.
    """
    complete = trials["state"] == "complete"
    todo = trials.index[complete & trials["latency_ms"].isna()]
    architectures = [json.loads(trials.at[i, "widths"]) for i in todo]
    if guard is not None:
        dense_ms, times = guard.paired(architectures, cfg.seed) if len(todo) else (guard.dense_ms, [])
    else:
        timed = measure_fn(latency_fn)
        measure = lambda net: timed(net, example, device, cfg.latency_batch)  # noqa: E731
        dense_ms = measure(model) if len(todo) or "latency_ms" not in dense else dense["latency_ms"]
        times = [measure(prune(model, example, widths, cfg.importance)) for widths in architectures]
    label = device_label(device)
    for i, ms in zip(todo, times, strict=True):
        trials.loc[i, ["latency_ms", "latency_ratio"]] = [ms, ms / dense_ms]
        trials.at[i, "latency_device"] = label
        trials.at[i, "latency_batch"] = cfg.latency_batch
    if guard is not None:  # a fraction budget on the paired ratio, a budget in ms on the milliseconds
        measured = trials["latency_ms"].notna()
        column, limit = (
            ("latency_ratio", guard.limit_ms / guard.dense_ms)
            if guard.relative
            else ("latency_ms", guard.limit_ms)
        )
        trials.loc[measured, "feasible"] = trials.loc[measured, "feasible"] & (
            trials.loc[measured, column] <= limit
        )
        trials.loc[trials["state"] == "failed", "feasible"] = False  # never measured: not shown to meet it
    write_trials(run_dir / "trials.csv", trials)
    dense["latency_ms"] = dense_ms
    return trials
