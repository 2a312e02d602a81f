import itertools
import json
import math
import random
import re
from collections import Counter

import pytest
import torch
from conftest import COUPLING_MODELS, MULTI_INPUT_GROUPS, DictDetector, Residual, TwoLayer, detector_inputs

from nas_prune import channel_groups, create_model, prune
from nas_prune.batch import batch_size, call_model, tensors
from nas_prune.latency import LatencyLUT
from nas_prune.space import WidthSpace

DENSE_MS = 100.0  # what FakeTimer says the whole model takes
OVERHEAD = {"Conv2d": 0.05, "BatchNorm2d": 0.01, "Linear": 0.02}


class FakeTimer:
    """Deterministic ``measure_fn``: input size and parameters times a rate, plus a per-kind overhead.

    The whole model (a module with children) takes ``DENSE_MS``. Every call is recorded.
    """

    def __init__(self):
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def __call__(self, module, shape, device):
        self.calls.append((type(module).__name__, tuple(shape)))
        if any(module.children()):
            return DENSE_MS
        params = sum(p.numel() for p in module.parameters())
        return 1e-4 * math.prod(shape) + 1e-3 * params + OVERHEAD.get(type(module).__name__, 0.005)


def channels(keys):
    """(layer label, in, out) per key."""
    return [(k.split("[")[0], *map(int, re.search(r" in=(\d+) out=(\d+) ", k).groups())) for k in keys]


@pytest.fixture
def two_layer(tmp_path):
    timer = FakeTimer()
    lut = LatencyLUT(TwoLayer(), torch.randn(2, 1, 8, 8), cache_dir=tmp_path, measure_fn=timer, rounds=1)
    return lut, timer


def test_keys_follow_the_widths_by_hand(two_layer):
    lut, _ = two_layer
    assert channels(lut.layer_keys({"conv1": 4, "conv2": 2})) == [
        ("Conv2d", 1, 4),
        ("BatchNorm2d", 4, 4),
        ("relu", 4, 4),  # F.relu in forward: a functional op with its own entry
        ("Conv2d", 4, 2),
        ("BatchNorm2d", 2, 2),
        ("relu", 2, 2),
        ("adaptive_avg_pool2d", 2, 2),
        ("flatten", 2, 2),  # (N, C, 1, 1) -> (N, C) keeps batch and channels
        ("Linear", 2, 10),
    ]
    assert lut.layer_keys({}) == lut.layer_keys({"conv1": 8, "conv2": 4})
    assert all(" input=8x8 batch=1 float32 @ cpu (" in k for k in lut.layer_keys({})[:6])
    with pytest.raises(ValueError, match="unknown channel group"):
        lut.layer_keys({"conv9": 3})


def test_prediction_is_the_sum_of_entries_plus_the_constant(two_layer):
    lut, timer = two_layer
    widths = {"conv1": 4, "conv2": 2}
    entries = lut.layer_ms(widths)
    dense_entries = lut.layer_ms({})
    assert lut.constant_ms == pytest.approx(DENSE_MS - sum(dense_entries))
    assert lut.predict(widths) == pytest.approx(sum(entries) + lut.constant_ms)
    assert lut.predict({}) == pytest.approx(DENSE_MS)  # the constant is calibrated on the dense model
    # Each entry is the timer's value for a fresh layer of the key's shape.
    assert ("Conv2d", (1, 1, 8, 8)) in timer.calls and ("Linear", (1, 2)) in timer.calls
    conv1 = 1e-4 * 64 + 1e-3 * (4 * 9) + OVERHEAD["Conv2d"]
    assert entries[0] == pytest.approx(conv1)


def test_entries_are_timed_in_rounds_and_the_fastest_kept(tmp_path):
    seen = Counter()

    def timer(module, shape, device):  # 3 ms, then 1 ms, then 2 ms for each layer
        seen[str(module), shape] += 1
        return [3.0, 1.0, 2.0][seen[str(module), shape] - 1]

    lut = LatencyLUT(TwoLayer(), torch.randn(2, 1, 8, 8), cache_dir=tmp_path, measure_fn=timer, rounds=3)
    entries = lut.layer_ms({"conv1": 2})
    assert min(entries) == max(entries) == 1.0 and set(seen.values()) == {3}


def test_a_second_lut_reuses_the_cache(two_layer, tmp_path):
    lut, timer = two_layer
    widths = {"conv1": 4, "conv2": 2}
    predicted = lut.predict(widths)
    assert len(timer.calls) == len(set(lut.layer_keys(widths)) | set(lut.layer_keys({}))) + 1  # + dense model
    doc = json.loads(lut.path.read_text())
    assert doc["device"] == lut.device_name and set(lut.layer_keys(widths)) <= set(doc["entries"])
    assert [p.name for p in tmp_path.iterdir()] == [lut.path.name]  # no temp files left behind

    other_timer = FakeTimer()
    other = LatencyLUT(TwoLayer(), torch.randn(2, 1, 8, 8), cache_dir=tmp_path, measure_fn=other_timer)
    assert other.predict(widths) == predicted and other_timer.calls == []
    new = {"conv1": 3, "conv2": 2}  # conv1, bn1, relu and conv2's input change: 4 new entries, 3 rounds
    other.predict(new)
    assert len(other_timer.calls) == 4 * 3
    lut.predict(new)  # the first instance reads what the second one measured
    assert len(timer.calls) == len(set(lut.layer_keys(widths)) | set(lut.layer_keys({}))) + 1


def test_keys_change_with_batch_dtype_device_and_channels(tmp_path):
    model, x = TwoLayer(), torch.randn(2, 1, 8, 8)
    base = LatencyLUT(model, x, cache_dir=tmp_path, threads=1)
    keys = base.layer_keys({})

    def differ(other_keys, old, new):
        assert other_keys != keys and other_keys == [k.replace(old, new) for k in keys]

    differ(LatencyLUT(model, x, cache_dir=tmp_path, threads=1, batch=8).layer_keys({}), "batch=1", "batch=8")
    double = LatencyLUT(TwoLayer().double(), x.double(), cache_dir=tmp_path, threads=1)
    differ(double.layer_keys({}), "float32", "float64")
    two = LatencyLUT(model, x, cache_dir=tmp_path, threads=2)
    differ(two.layer_keys({}), base.device_name, two.device_name)
    assert "1 threads" in base.device_name and "2 threads" in two.device_name and two.path != base.path
    narrow = base.layer_keys({"conv2": 3})
    changed = [i for i, (a, b) in enumerate(zip(keys, narrow, strict=True)) if a != b]
    assert changed == [3, 4, 5, 6, 7, 8]  # conv2 (its outputs) onwards, up to the linear's input


def test_timing_uses_the_key_dtype(tmp_path):
    dtypes = set()

    def timer(module, shape, device):
        dtypes.update(p.dtype for p in module.parameters())
        return 1.0

    LatencyLUT(
        TwoLayer().double(), torch.randn(2, 1, 8, 8).double(), cache_dir=tmp_path, measure_fn=timer
    ).predict({"conv1": 4})
    assert dtypes == {torch.float64}


@pytest.mark.parametrize("name", ["residual", "dense_concat", "squeeze_excite", "depthwise"])
def test_keys_equal_those_of_the_pruned_model(name, tmp_path):
    factory, shape = COUPLING_MODELS[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(2, *shape)
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=FakeTimer())
    assert lut.unmodelled == []
    rng = random.Random(0)
    widths = {g.name: rng.randint(1, g.channels - 1) for g in channel_groups(model, x) if g.prunable}
    slim = LatencyLUT(prune(model, x, widths), x, cache_dir=tmp_path, measure_fn=FakeTimer())
    assert lut.layer_keys(widths) == slim.layer_keys({})


def test_residual_adds_and_relus_have_entries_that_follow_the_widths(tmp_path):
    model, x = Residual(), torch.randn(2, 3, 16, 16)
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=FakeTimer(), rounds=1)
    adds = [c for c in channels(lut.layer_keys({"stem.0": 5})) if c[0] == "add"]
    assert adds == [("add", 5, 5), ("add", 5, 5), ("add", 12, 12)]  # the 2 residual adds carry the stem group
    assert lut.predict({"stem.0": 5}) < lut.predict({})


def test_resnet20_on_random_widths_of_its_space(tmp_path):
    model, x = create_model("resnet20", in_channels=1), torch.randn(2, 1, 28, 28)
    space = WidthSpace.build(channel_groups(model, x), round_to=4, min_fraction=0.1)
    rng = random.Random(0)
    widths = space.random(rng)
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=FakeTimer(), rounds=1)
    slim = LatencyLUT(prune(model, x, widths), x, cache_dir=tmp_path, measure_fn=FakeTimer(), rounds=1)
    assert lut.layer_keys(widths) == slim.layer_keys({})
    assert lut.unmodelled == []
    assert lut.predict(widths) < lut.predict({}) == pytest.approx(DENSE_MS)


@pytest.mark.parametrize(
    "name", ["grouped", "grouped_residual", "masked_conv", "channel_scale", "inplace", "shuffle", "resnext20"]
)
def test_new_group_kinds_have_the_keys_of_the_pruned_model(name, tmp_path):
    if name in COUPLING_MODELS:
        factory, shape = COUPLING_MODELS[name]
        model, x = factory().eval(), torch.randn(2, *shape)
    else:
        model, x = create_model(name, in_channels=1).eval(), torch.randn(2, 1, 28, 28)
    space = WidthSpace.build(channel_groups(model, x), min_fraction=0.1)
    widths = space.decode({n: len(c) // 2 for n, c in space.choices.items()})  # grouped: multiples of groups
    lut = LatencyLUT(model, x, cache_dir=tmp_path, measure_fn=FakeTimer(), rounds=1)
    slim = LatencyLUT(prune(model, x, widths), x, cache_dir=tmp_path, measure_fn=FakeTimer(), rounds=1)
    assert lut.unmodelled == []
    assert lut.layer_keys(widths) == slim.layer_keys({})
    assert lut.predict(widths) < lut.predict({})


def test_the_model_is_left_untouched(tmp_path):
    model = TwoLayer().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lut = LatencyLUT(model, torch.randn(2, 1, 8, 8), cache_dir=tmp_path, measure_fn=FakeTimer())
    lut.predict({"conv1": 3})
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _validated(predicted, measured, tmp_path):
    lut = LatencyLUT(TwoLayer(), torch.randn(2, 1, 8, 8), cache_dir=tmp_path, measure_fn=FakeTimer())
    lut.predict = lambda widths: predicted[widths["conv1"]]  # known predictions, no table needed
    return lut, lut.validate([{"conv1": i} for i in range(len(predicted))], lambda w: measured[w["conv1"]])


def test_validate_on_known_numbers(tmp_path):
    predicted, measured = [1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.5, 2.4, 4.4, 5.5]
    lut, result = _validated(predicted, measured, tmp_path)
    errors = [0.0, 0.5 / 2.5, 0.6 / 2.4, 0.4 / 4.4, 0.5 / 5.5]
    assert result["median_error"] == pytest.approx(sorted(errors)[2])
    assert result["worst_error"] == pytest.approx(0.25)
    assert result["spearman"] == pytest.approx(1 - 6 * 2 / (5 * (25 - 1)))  # ranks 1 3 2 4 5: sum d^2 = 2
    assert [p["measured_ms"] for p in result["pairs"]] == measured
    assert [p["error"] for p in result["pairs"]] == pytest.approx(errors)
    assert result["pairs"][1]["widths"] == {"conv1": 1} and result["pairs"][1]["predicted_ms"] == 2.0


@pytest.mark.parametrize(
    "measured, trusted",
    [
        ([1.1, 2.2, 3.3, 4.4], True),  # 9% error, same order
        ([1.2, 2.4, 3.6, 4.8], False),  # 17% error
        ([4.0, 3.0, 2.0, 1.0], False),  # reversed order
        ([1.0, 2.0, 4.0, 3.0], False),  # right median error, Spearman 0.8
    ],
)
def test_trusted_needs_small_error_and_the_right_order(measured, trusted, tmp_path):
    lut, result = _validated([1.0, 2.0, 3.0, 4.0], measured, tmp_path)
    assert result["trusted"] is trusted and lut.trusted is trusted


def test_one_sample_is_never_trusted(tmp_path):
    lut, result = _validated([1.0], [1.0], tmp_path)
    assert math.isnan(result["spearman"]) and result["median_error"] == 0 and not result["trusted"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"entries": {"k": "fast"}}'])
def test_a_corrupt_cache_file_starts_a_fresh_table(content, two_layer, tmp_path):
    lut, _ = two_layer
    lut.path.write_text(content)
    with pytest.warns(UserWarning, match="unreadable"):
        fresh = LatencyLUT(TwoLayer(), torch.randn(2, 1, 8, 8), cache_dir=tmp_path, measure_fn=FakeTimer())
        predicted = fresh.predict({"conv1": 4})
    assert predicted > 0 and json.loads(lut.path.read_text())["entries"]  # replaced by a valid table


def test_real_timing_smoke_on_convnet(tmp_path):
    model, x = create_model("convnet", in_channels=1), torch.randn(2, 1, 28, 28)
    lut = LatencyLUT(model, x, cache_dir=tmp_path, threads=1, rounds=1)
    half = {g: c // 2 for g, c in lut.groups.items()}
    entries = lut.layer_ms(half)
    assert all(ms > 0 for ms in entries) and math.isfinite(lut.predict(half))
    assert lut.predict({}) == pytest.approx(
        json.loads(lut.path.read_text())["constants"].popitem()[1]["dense_ms"]
    )


class FixedView(torch.nn.Module):
    """A reshape to fixed sizes that keeps the shape: element-wise in shape, but not in channels."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        return torch.relu(x.reshape(2, 6, 4, 4)).mean((2, 3))


def test_ops_with_fixed_shapes_get_no_entry(tmp_path):
    lut = LatencyLUT(FixedView(), torch.randn(2, 1, 4, 4), cache_dir=tmp_path, measure_fn=FakeTimer())
    assert [c[0] for c in channels(lut.layer_keys({}))] == ["Conv2d"]  # the relu is fed by the reshape


# ---------------------------------------------------------------------------------------------------
# prepare() before a search, then predictions that never time
# ---------------------------------------------------------------------------------------------------


def _space(model, x, round_to=1):
    return WidthSpace.build(channel_groups(model, x), round_to=round_to, min_fraction=0.1)


@pytest.mark.parametrize(
    "name", ["two_layer", "residual", "dense_concat", "depthwise", "grouped", "shuffle", "squeeze_excite"]
)
def test_prepare_measures_every_reachable_entry_then_predict_never_times(name, tmp_path):
    factory, shape = COUPLING_MODELS[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(2, *shape)
    space = _space(model, x, round_to=2)
    timer = FakeTimer()
    lut = LatencyLUT(model, x, cache_dir=tmp_path / "a", measure_fn=timer, rounds=2)
    info = lut.prepare(space, progress=False)
    assert info["subgrid"] is False and info["fallback_layers"] == 0
    assert info["measured"] == info["entries"] == info["targets"] == info["timed"]
    assert len(timer.calls) == 2 * info["timed"] + 2  # every entry in 2 rounds, then the dense model twice
    if space.size <= 3000:  # the grid is exactly the keys of all architectures of the space
        reachable = set()
        for combo in itertools.product(*(range(len(c)) for c in space.choices.values())):
            reachable.update(lut.layer_keys(space.decode(dict(zip(space.choices, combo, strict=True)))))
        assert len(reachable) == info["entries"] and reachable <= set(lut.table)

    calls = len(timer.calls)
    reference = LatencyLUT(model, x, cache_dir=tmp_path / "b", measure_fn=FakeTimer(), rounds=1)
    rng = random.Random(0)
    for widths in [space.smallest(), space.dense()] + [space.random(rng) for _ in range(10)]:
        assert lut.predict(widths, measure_missing=False) == pytest.approx(reference.predict(widths))
    assert len(timer.calls) == calls
    assert lut.prepare(space, progress=False)["timed"] == 0 and len(timer.calls) == calls  # all cached


def macs_timer(calls):
    """``measure_fn`` proportional to a layer's multiply-adds (weights times input positions) plus overhead."""

    def timer(module, shape, device):
        calls.append(shape)
        if any(module.children()):
            return DENSE_MS
        weights = sum(p.numel() for p in module.parameters())
        return 1e-5 * weights * math.prod(shape[2:]) + 1e-4 * math.prod(shape) + 0.01

    return timer


def test_a_subgrid_within_max_entries_interpolates_without_timing(tmp_path):
    model, x = create_model("convnet", in_channels=1), torch.randn(2, 1, 28, 28)
    space = _space(model, x, round_to=4)
    calls = []
    lut = LatencyLUT(model, x, cache_dir=tmp_path / "a", measure_fn=macs_timer(calls), rounds=1)
    info = lut.prepare(space, max_entries=150, progress=False)
    assert info["subgrid"] is True and info["per_axis"] >= 2
    assert info["timed"] == info["targets"] <= 150 < info["entries"]
    assert info["measured"] <= info["targets"] and len(calls) == info["timed"] + 1  # + the dense model

    truth = LatencyLUT(model, x, cache_dir=tmp_path / "b", measure_fn=macs_timer([]), rounds=1)
    rng = random.Random(1)
    before = len(calls)
    for widths in [space.smallest(), space.uniform(0.5)] + [space.random(rng) for _ in range(20)]:
        predicted = lut.predict(widths, measure_missing=False)
        assert predicted == pytest.approx(truth.predict(widths), rel=0.03)
        assert len(lut.layer_ms(widths, measure_missing=False)) == len(lut.layer_keys(widths))
    assert len(calls) == before


def test_without_prepare_missing_entries_scale_the_dense_ones(two_layer):
    lut, timer = two_layer
    with pytest.raises(RuntimeError, match="prepare"):
        lut.predict({"conv1": 4}, measure_missing=False)  # the constant is unknown: nothing to add it to
    assert timer.calls == []
    dense = lut.layer_ms({})
    lut.constant_ms  # noqa: B018 - measures the dense model
    calls = len(timer.calls)
    entries = lut.layer_ms({"conv1": 4}, measure_missing=False)
    assert len(timer.calls) == calls
    assert entries[0] == pytest.approx(dense[0] * 4 / 8)  # conv 1->4 from the dense conv 1->8
    assert entries[1:3] == dense[4:6]  # BatchNorm and relu at 4 channels: bn2's and its relu's entries
    assert entries[3] == pytest.approx(dense[3] * 4 / 8)  # conv 4->4 from 8->4
    assert entries[4:] == dense[4:]  # unchanged layers are in the table
    assert lut.predict({"conv1": 4}, measure_missing=False) == pytest.approx(sum(entries) + lut.constant_ms)
    assert lut.layer_keys({"conv1": 4})[0] not in lut.table  # estimates are never cached
    one = LatencyLUT(TwoLayer(), torch.randn(2, 1, 8, 8), cache_dir=lut.path.parent, measure_fn=FakeTimer())
    small = {"conv1": 1, "conv2": 1}  # BatchNorm at 1 channel: below every measured one, scaled from 4
    assert one.layer_ms(small, measure_missing=False)[1] == pytest.approx(dense[4] / 4)


# --- models with several inputs (a tuple, a dict) and several outputs ------------------------------


class WholeModelInputs(FakeTimer):
    """:class:`FakeTimer` for layers; a whole model takes ``DENSE_MS`` times its share of the dense
    parameters, after a run on the inputs it was given (recorded)."""

    def __init__(self, dense_params):
        super().__init__()
        self.dense_params, self.models = dense_params, []

    def __call__(self, module, inputs, device):
        if not any(module.children()):
            return super().__call__(module, inputs, device)
        self.models.append(inputs)
        with torch.no_grad():
            call_model(module.eval(), inputs)
        return DENSE_MS * sum(p.numel() for p in module.parameters()) / self.dense_params


def test_a_model_with_several_inputs_gets_keys_of_its_pruned_model_and_a_calibrated_prediction(
    multi_input_model, tmp_path
):
    name, model, inputs = multi_input_model
    timer = WholeModelInputs(sum(p.numel() for p in model.parameters()))
    lut = LatencyLUT(model, inputs, cache_dir=tmp_path, measure_fn=timer, rounds=1, batch=3)
    assert lut.groups == MULTI_INPUT_GROUPS[name]
    widths = {g: max(1, c // 2) for g, c in lut.groups.items()}
    slim = LatencyLUT(
        prune(model, inputs, widths), inputs, cache_dir=tmp_path, measure_fn=FakeTimer(), rounds=1, batch=3
    )
    assert lut.layer_keys(widths) == slim.layer_keys({})
    assert lut.predict({}) == pytest.approx(DENSE_MS) and 0 < lut.predict(widths) < DENSE_MS
    lut.calibrate(count=3)  # prunes and times whole models on zero inputs of the model's structure
    assert lut.calibration.samples == 4 and 0 < lut.predict(widths, measure_missing=False) < lut.predict({})
    # The whole model was given its own input structure at the LUT's batch, never a bare shape.
    assert all(type(got) is type(inputs) and batch_size(got) == 3 for got in timer.models)
    assert [t.shape[1:] for t in tensors(timer.models[0])] == [t.shape[1:] for t in tensors(inputs)]


def test_the_default_timer_times_a_model_with_keyword_inputs(tmp_path):
    model, inputs = DictDetector().eval(), detector_inputs()
    lut = LatencyLUT(model, inputs, cache_dir=tmp_path, rounds=1, threads=1)
    assert lut.predict({}) > 0 and lut.predict({"body.0": 4}) > 0
