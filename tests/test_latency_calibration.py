"""Calibrated latency LUT, latency seeds by bisection, and the never-rejecting untrusted LUT.

Tests of latency logic inject latency instead of timing. ``ContextTimer`` times a layer alone
as the sum of a per-call overhead and a size term, and a whole model as less than the sum of its layers
(overheads overlap in a real forward pass): the situation that made uncalibrated predictions negative.
"""

import json
import math
import random
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_prune import channel_groups, create_model, model_names
from nas_prune.cost import CostModel
from nas_prune.latency import (
    KINDS,
    Calibration,
    LatencyLUT,
    bisect_to_latency,
    fit_calibration,
    in_rounds,
)
from nas_prune.latency.calibration import default_samples
from nas_prune.results import TRIAL_COLUMNS
from nas_prune.search.latency import latency_guard, measure_latencies
from nas_prune.space import Budget, WidthSpace

IN_CONTEXT = {"Conv2d": 0.45, "BatchNorm2d": 0.2, "Linear": 0.5}  # whole-model share of a layer's time


def alone_ms(module: nn.Module, shape) -> float:
    """A layer timed alone: a fixed per-call overhead plus work proportional to input and weights."""
    weights = sum(p.numel() for p in module.parameters())
    return 0.05 + 1e-5 * math.prod(shape) + 2e-7 * weights * math.prod(shape[2:])


class ContextTimer:
    """Deterministic ``measure_fn``: layers alone by :func:`alone_ms`, whole models by their leaves'
    share in context (:data:`IN_CONTEXT`, 0.3 for other leaves) plus 0.2 ms of glue."""

    def __init__(self):
        self.models = 0

    def __call__(self, module, shape, device):
        if not any(module.children()):
            return alone_ms(module, shape)
        self.models += 1
        total = [0.2]

        def hook(leaf, args, out):
            total[0] += IN_CONTEXT.get(type(leaf).__name__, 0.3) * alone_ms(leaf, tuple(args[0].shape))

        leaves = [m for m in module.modules() if not any(m.children())]
        hooks = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.no_grad():
                module.eval()(torch.zeros(shape))
        finally:
            for h in hooks:
                h.remove()
        return total[0]


class DeepResidual(nn.Module):
    """A deep (3 x 9 blocks) thin CIFAR-style residual network: depth is where per-layer sums drift."""

    def __init__(self, width=4, blocks=9, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                stride = 2 if i and not b else 1
                stages.append(Block(cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + self.skip(x))


def _model(name):
    torch.manual_seed(0)
    if name == "deep_residual":
        return DeepResidual().eval(), torch.zeros(2, 1, 16, 16)
    return create_model(name, in_channels=1).eval(), torch.zeros(2, 1, 28, 28)


def _space(model, x):
    return WidthSpace.build(channel_groups(model, x), round_to=1, min_fraction=0.1)


# ---------------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------------


def test_fit_recovers_known_scales_and_constant():
    rng = random.Random(0)
    truth = {"conv": 0.6, "depthwise": 1.3, "linear": 1.0, "norm": 0.4, "elementwise": 0.8}
    sums = [{k: rng.uniform(0.5, 5.0) for k in KINDS} for _ in range(12)]
    measured = [sum(truth[k] * s[k] for k in KINDS) + 0.7 for s in sums]
    fitted = fit_calibration(sums, measured, prior_weight=0.0)
    assert fitted.scales == pytest.approx(truth, rel=1e-6) and fitted.constant_ms == pytest.approx(0.7)
    assert fitted.samples == 12 and fitted.worst_error < 1e-9


def test_fit_never_goes_negative_where_the_parts_exceed_the_whole():
    # Entries summing to twice the measured latency, which falls slower than they do: a free least
    # squares fit wants a negative constant (-9.8 ms in the issue); here everything stays >= 0.
    sums = [{"conv": c} for c in (20.0, 12.0, 8.0, 4.0)]
    measured = [10.0, 8.5, 7.9, 7.5]
    fitted = fit_calibration(sums, measured)
    assert fitted.constant_ms >= 0 and all(v >= 0 for v in fitted.scales.values())
    assert fitted.predict({"conv": 0.0}) >= 0 and fitted.predict({"conv": 1.0}) > 0


def test_from_dense_keeps_the_offset_and_floors_predictions_above_zero():
    assert Calibration.from_dense({"conv": 3.0, "norm": 1.0}, 6.0).constant_ms == pytest.approx(2.0)
    over = Calibration.from_dense({"conv": 15.0, "norm": 5.0}, 10.0)
    assert over.constant_ms == pytest.approx(-10.0) and over.scales["conv"] == 1.0
    assert over.predict({"conv": 15.0, "norm": 5.0}) == pytest.approx(10.0)
    assert over.predict({"conv": 12.0, "norm": 4.0}) == pytest.approx(6.0)  # per-call overhead: exact
    assert over.predict({"conv": 1.0, "norm": 0.0}) == pytest.approx(0.01)  # floored, never negative


# ---------------------------------------------------------------------------------------------------
# The calibrated LUT
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deep_residual", *model_names()])
def test_calibrated_predictions_are_positive_and_within_the_fit_error(name, tmp_path):
    model, x = _model(name)
    space = _space(model, x)
    timer = ContextTimer()
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=timer, rounds=1)
    rng = random.Random(1)
    fitted = lut.calibrate(
        [space.uniform(f) for f in (0.25, 0.5, 0.75)] + [space.random(rng) for _ in range(4)]
    )
    assert fitted.samples == 8 and lut.calibration == fitted  # the dense model is always a sample
    held_out = [space.smallest()] + [space.random(rng) for _ in range(4)]
    for widths in held_out:
        predicted = lut.predict(widths)
        truth = timer(prune_model(model, x, widths), (1, *x.shape[1:]), "cpu")
        assert predicted > 0
        assert abs(predicted - truth) / truth <= fitted.worst_error + 0.05, widths


def prune_model(model, x, widths):
    from nas_prune import prune

    return prune(model, x, widths)


def test_a_machine_that_slowed_since_the_table_was_built_still_gets_a_consistent_fit(tmp_path):
    """Every whole-model point of a fit, the dense one included, is timed at calibration time: the dense
    latency cached when the table was built would be one point from another machine state."""
    model, x = _model("deep_residual")
    space = _space(model, x)
    timer = ContextTimer()
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=timer, rounds=1)
    lut.predict({})  # the table and the dense latency, measured now

    def slower(widths):  # the same machine, 30% slower by the time the fit is measured
        return 1.3 * timer(prune_model(model, x, widths), (1, *x.shape[1:]), "cpu")

    rng = random.Random(2)
    fit = [space.uniform(f) for f in (0.25, 0.5, 0.75)] + [space.random(rng) for _ in range(4)]
    fitted = lut.calibrate(fit, measure=slower)
    assert fitted.samples == 8 and fitted.worst_error < 0.05
    for widths in [{}, space.smallest(), space.random(rng)]:
        assert lut.predict(widths) == pytest.approx(slower(widths), rel=0.05), widths


def test_models_are_timed_in_rounds_over_all_each_round_in_a_new_order():
    calls, times = [], iter([5.0, 4.0, 6.0, 3.0, 7.0, 2.0, 1.0, 9.0] * 3)

    def measure(model):
        calls.append(model)
        return next(times)

    best = in_rounds(list("abcdefgh"), measure, rounds=3, seed=1)
    rounds = [calls[i : i + 8] for i in (0, 8, 16)]
    assert all(sorted(r) == list("abcdefgh") for r in rounds)  # every model once in every round
    assert len({tuple(r) for r in rounds}) == 3  # a new order each round: drift spreads over all
    timed = {}
    for model, ms in zip(calls, [5.0, 4.0, 6.0, 3.0, 7.0, 2.0, 1.0, 9.0] * 3, strict=True):
        timed.setdefault(model, []).append(ms)
    assert best == [min(timed[m]) for m in "abcdefgh"]  # the fastest round of each model


def test_a_latency_search_times_the_dense_fit_and_held_out_models_in_the_same_rounds(tmp_path):
    """What the LUT's validation compares must be timed alike: a machine that drifts between the dense
    model, the fit and the held-out architectures would otherwise show its drift as the LUT's error."""
    model, x = _model("deep_residual")
    timer, log = ContextTimer(), []

    def latency_fn(net, example, device, batch):
        if any(net.children()):  # a whole model: record its architecture
            log.append(tuple(m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)))
        return timer(net, (batch, *example.shape[1:]), device)

    cfg = SimpleNamespace(latency_batch=1, lut_dir=str(tmp_path), lut_samples=4, seed=0, importance="l2")
    space = _space(model, x)
    guard = latency_guard(
        cfg, Budget(latency_fraction=0.95), model, x, space, tmp_path, torch.device("cpu"), latency_fn,
        resume=False, quiet=True,
    )  # fmt: skip
    rounds, models = guard.lut.rounds, 1 + 5 + 6  # dense, smallest + 4 held out, 6 to fit on
    dense = tuple(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    assert rounds >= 2 and log[: -rounds * models] == [dense] * rounds  # the table's own dense timing
    first, *others = [sorted(log[-(i + 1) * models :][:models]) for i in range(rounds)]
    assert len(set(first)) == models and all(other == first for other in others)  # all, every round
    assert dense in first and guard.dense_ms == pytest.approx(timer(model, (1, *x.shape[1:]), "cpu"))


def test_default_calibration_samples_are_irregular_like_proposals():
    """Fitted on uniform fractions, the calibration under-predicts the irregular widths a search proposes."""
    groups = {"a": 16, "b": 32, "c": 64, "d": 128}
    samples = default_samples(groups, count=8, seed=0)
    assert len(samples) == 8 and len({json.dumps(s, sort_keys=True) for s in samples}) == 8
    for widths in samples:
        fractions = {round(widths[g] / c, 2) for g, c in groups.items()}
        assert len(fractions) > 1, widths  # not one fraction of every group
        assert all(max(1, round(0.1 * c)) <= widths[g] <= c for g, c in groups.items())


def test_a_deep_model_whose_entries_exceed_it_predicts_positive_before_and_after_calibration(tmp_path):
    model, x = _model("deep_residual")
    space = _space(model, x)
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=ContextTimer(), rounds=1)
    assert sum(lut.layer_ms({})) > 1.5 * lut.predict({})  # the entries exceed the whole
    assert lut.constant_ms < 0 and lut.predict(space.smallest()) > 0
    fitted = lut.calibrate(count=6)
    assert fitted.constant_ms >= 0 and lut.predict(space.smallest()) > 0


def test_the_calibrated_prediction_is_the_formula(tmp_path):
    model, x = _model("deep_residual")
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=ContextTimer(), rounds=1)
    space = _space(model, x)
    fitted = lut.calibrate(count=6)
    widths = space.random(random.Random(3))
    formula = sum(fitted.scales[k] * ms for k, ms in lut.kind_sums(widths).items()) + fitted.constant_ms
    assert lut.predict(widths) == pytest.approx(formula)
    assert sum(lut.kind_sums(widths).values()) == pytest.approx(sum(lut.layer_ms(widths)))
    assert lut.predict(widths, measure_missing=False) == pytest.approx(formula)
    # Another instance on the same cache predicts the same numbers without timing anything.
    other_timer = ContextTimer()
    other = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=other_timer, rounds=1)
    assert other.predict(widths) == pytest.approx(formula) and other_timer.models == 0


def test_an_untrusted_lut_never_rejects(tmp_path):
    model, x = _model("convnet")
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=ContextTimer(), rounds=1)
    dense = lut.predict({})
    assert not lut.trusted and not lut.rejects({}, limit_ms=dense / 10)
    lut.trusted = True
    assert lut.rejects({}, limit_ms=dense / 10) and not lut.rejects({}, limit_ms=dense * 2)


# ---------------------------------------------------------------------------------------------------
# Seeds at a latency budget
# ---------------------------------------------------------------------------------------------------


def _measured_latency(model, x):
    """Injected 'measurement': exact MACs through CostModel plus a per-call overhead, with +-2% noise
    that changes from call to call (deterministic: a fixed pattern)."""
    cost = CostModel(model, x)
    calls = [0]

    def measure(widths):
        calls[0] += 1
        noise = 1 + 0.02 * math.sin(7.0 * calls[0])
        return (0.4 + 2e-6 * cost.cost(dict(widths))[0]) * noise

    return measure, calls


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_uniform_seed_sits_within_ten_percent_under_the_measured_limit(fraction):
    model, x = _model("resnet20")
    space = _space(model, x)
    measure, calls = _measured_latency(model, x)
    limit = fraction * measure(space.dense())
    fit = bisect_to_latency(space.uniform, measure, limit, low=0.0, high=1.0, margin=0.03)
    assert fit is not None and fit.evaluations == calls[0] - 1 <= 14
    assert 0.9 * limit <= fit.latency_ms <= limit
    assert measure(fit.widths) <= limit  # still under when measured again (the margin absorbs noise)


def test_bisection_returns_the_dense_model_or_nothing():
    model, x = _model("convnet")
    space = _space(model, x)
    measure, _ = _measured_latency(model, x)
    dense = measure(space.dense())
    whole = bisect_to_latency(space.uniform, measure, 2 * dense)
    assert whole.widths == space.dense() and whole.scale == 1.0 and whole.evaluations == 1
    assert bisect_to_latency(space.uniform, measure, 0.1) is None  # the overhead alone is 0.4 ms
    with pytest.raises(ValueError):
        bisect_to_latency(space.uniform, measure, 1.0, margin=1.0)


def test_bisection_on_a_trusted_lut_prediction_never_times(tmp_path):
    model, x = _model("convnet")
    space = _space(model, x)
    timer = ContextTimer()
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=timer, rounds=1)
    lut.prepare(space, progress=False)
    before, entries = timer.models, len(lut.table)
    limit = 0.6 * lut.predict({})
    fit = bisect_to_latency(space.uniform, lambda w: lut.predict(w, measure_missing=False), limit, margin=0.0)
    assert fit is not None and 0.9 * limit <= fit.latency_ms <= limit
    assert timer.models == before and len(lut.table) == entries


def test_one_timing_spoiled_by_load_does_not_bend_the_fit():
    sums = [{"conv": c, "norm": c / 4} for c in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)]
    measured = [0.5 * s["conv"] + 0.5 * s["norm"] + 0.3 for s in sums]
    measured[3] *= 10  # a burst of load during one measurement
    fitted = fit_calibration(sums, measured, prior_weight=0.0)
    assert fitted.predict({"conv": 10.0, "norm": 2.5}) == pytest.approx(0.5 * 12.5 + 0.3, rel=1e-6)
    assert fitted.worst_error == pytest.approx(0.9, rel=1e-6)  # reported errors still cover every sample


@pytest.mark.parametrize("budget", [Budget(latency_fraction=0.6), Budget(latency_ms=0.6)])
def test_a_machine_that_slowed_since_the_limit_was_fixed(tmp_path, budget):
    """A fraction budget is a ratio: a machine 30% slower by the time seeds are fitted and candidates
    measured must neither starve the seeds nor drop on-budget candidates, because each is timed in the
    same rounds as the dense model and judged on that ratio. A budget in ms stays in ms."""
    model, x = _model("convnet")
    timer, slowdown = ContextTimer(), [1.0]

    def latency_fn(net, example, device, batch):
        return slowdown[0] * timer(net, (batch, *example.shape[1:]), device)

    cfg = SimpleNamespace(latency_batch=1, lut_dir=str(tmp_path), lut_samples=4, seed=0, importance="l2")
    space = _space(model, x)
    if budget.latency_ms is not None:  # 0.6 of the dense model, in ms
        budget = Budget(latency_ms=0.6 * timer(model, (1, *x.shape[1:]), "cpu"))
    guard = latency_guard(
        cfg, budget, model, x, space, tmp_path, torch.device("cpu"), latency_fn, resume=False, quiet=True
    )
    assert guard.relative == (budget.latency_fraction is not None)
    slowdown[0] = 1.3
    ratio = lambda w: timer(prune_model(model, x, w), (1, *x.shape[1:]), "cpu") / guard.dense_ms  # noqa: E731
    seed = guard.fit(space.dense())
    on_budget, over = space.uniform(0.6), space.uniform(0.9)
    assert ratio(on_budget) < 0.6 < 1.3 * ratio(on_budget) and ratio(over) > 0.6  # the slowdown matters
    top_rung = {"state": "complete", "source": "optuna", "val_accuracy": 0.5, "feasible": True}
    trials = pd.DataFrame(
        [
            {**dict.fromkeys(TRIAL_COLUMNS), **top_rung, "trial_id": i, "widths": json.dumps(w)}
            for i, w in enumerate((on_budget, over))
        ]
    )
    trials["latency_ms"] = math.nan
    dense = {}
    measured = measure_latencies(tmp_path, trials, dense, x, model, cfg, guard, "cpu", latency_fn)
    if guard.relative:  # judged on the ratio to the dense model timed with it: the slowdown cancels
        assert seed is not None and 0.9 * 0.6 <= ratio(seed) <= 0.6
        assert measured["feasible"].tolist() == [True, False]
        assert measured["latency_ratio"].tolist() == pytest.approx([ratio(on_budget), ratio(over)])
        assert dense["latency_ms"] == pytest.approx(1.3 * guard.dense_ms)  # timed with the candidates
    else:  # 0.6 x dense ms on a machine 30% slower: the seed fits 0.6 / 1.3 of the old dense time
        assert seed is not None and 0.9 * 0.6 / 1.3 <= ratio(seed) <= 0.6 / 1.3
        assert measured["feasible"].tolist() == [False, False]
