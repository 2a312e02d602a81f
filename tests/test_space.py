import random

import pytest
import torch
from conftest import Grouped, ShuffleUnit, TwoLayer

from nas_prune import NasPruneError, channel_groups, create_model
from nas_prune.space import Budget, WidthSpace


def _space(model=None, x=None, **kw):
    model = model or create_model("resnet20", in_channels=1)
    x = x if x is not None else torch.randn(1, 1, 28, 28)
    return WidthSpace.build(channel_groups(model, x), **kw)


def test_default_grid_steps_by_round_to_up_to_full_width():
    space = _space(round_to=4, min_fraction=0.25)
    assert space.choices["conv1"] == (4, 8, 12, 16)
    assert space.choices["layer3.0.conv1"] == tuple(range(16, 65, 4))
    assert all(all(w % 4 == 0 for w in c) for c in space.choices.values())


def test_explicit_grid_of_fractions():
    space = _space(round_to=1, min_fraction=0.5, grid=[0.25, 0.5, 0.75, 1.0])
    assert space.choices["conv1"] == (8, 12, 16)


def test_encode_decode_round_trip_and_snap():
    space = _space(round_to=4)
    idx = {n: len(c) // 2 for n, c in space.choices.items()}
    widths = space.decode(idx)
    assert space.encode(widths) == idx
    assert space.snap({"conv1": 15})["conv1"] == 12 and space.snap({"conv1": 1})["conv1"] == 4
    with pytest.raises(NasPruneError, match="not on the search grid"):
        space.encode({**widths, "conv1": 13})
    assert space.dense()["conv1"] == 16 and space.smallest()["conv1"] == 4


def test_random_architectures_lie_on_the_grid_vary_per_group_and_repeat_by_seed():
    frozen = _space(ShuffleUnit(), torch.randn(1, 3, 16, 16), frozen=["branch.0.0"])
    assert frozen.random(random.Random(0)).items() >= frozen.fixed.items()  # fixed groups kept
    space = _space(round_to=4)
    draws = [space.random(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]  # the same generator state, the same architecture
    rng = random.Random(0)
    samples = [space.random(rng) for _ in range(20)]
    for widths in samples:
        assert space.decode(space.encode(widths)) == widths  # on the grid, fixed groups included
    fractions = {n: widths[n] / space.choices[n][-1] for widths in samples[:1] for n in space.names}
    assert len(set(fractions.values())) > 1  # groups drawn apart, not one fraction of every group
    assert len({tuple(sorted(w.items())) for w in samples}) == 20


def test_spanning_architectures_reach_from_narrow_to_dense_irregular_per_group():
    space = _space(round_to=2)
    frozen = _space(ShuffleUnit(), torch.randn(1, 3, 16, 16), frozen=["branch.0.0"])
    assert all(w.items() >= frozen.fixed.items() for w in frozen.spanning(3, random.Random(0)))
    assert space.spanning(6, random.Random(1)) == space.spanning(6, random.Random(1))

    def level(widths):  # mean position of the groups' choices on their grids, 0 narrowest, 1 dense
        positions = [space.encode(widths)[n] / (len(c) - 1) for n, c in space.choices.items()]
        return sum(positions) / len(positions)

    spanning = space.spanning(10, random.Random(0))
    for widths in spanning:
        assert space.decode(space.encode(widths)) == widths  # on the grid
    levels = [level(w) for w in spanning]
    assert min(levels) < 0.25 and max(levels) > 0.75  # the set spans the grid ...
    assert sum(len({space.encode(w)[n] for n in space.names}) > 1 for w in spanning) >= 5  # ... irregularly
    rng = random.Random(0)
    independent = [level(space.random(rng)) for _ in range(10)]
    spread = lambda xs: max(xs) - min(xs)  # noqa: E731
    assert spread(levels) > spread(independent)  # independent choices cluster at mid-width


def test_frozen_and_unprunable_groups_stay_fixed():
    from conftest import PytorchcvShuffleNetV2

    stage1, branch = "features.stage1.unit1.expand_conv3", "features.stage1.unit1.compress_conv1"
    space = _space(PytorchcvShuffleNetV2(), torch.randn(1, 3, 32, 32), frozen=[branch])
    assert set(space.fixed) == {stage1, branch}  # channels tied all together by shuffles, the user's choice
    assert len(space.names) == 8 and "features.stage2.unit1.expand_conv3" in space.names
    with pytest.raises(NasPruneError, match="not channel groups"):
        _space(TwoLayer(), torch.randn(1, 1, 8, 8), frozen=["nope"])


def test_grouped_conv_groups_step_by_their_group_count():
    space = _space(Grouped(), torch.randn(1, 3, 16, 16), round_to=2, min_fraction=0.25)
    assert space.choices["reduce.0"] == space.choices["grouped.0"] == (4, 8, 12, 16)  # lcm(2, 4 groups)
    assert space.choices["stem.0"] == (4, 6, 8, 10, 12, 14, 16)
    grid = _space(Grouped(), torch.randn(1, 3, 16, 16), grid=[0.3, 0.6, 1.0], min_fraction=0.3)
    assert grid.choices["reduce.0"] == (4, 8, 16) and grid.choices["stem.0"] == (5, 10, 16)


def test_budget_validation_and_violations():
    with pytest.raises(NasPruneError, match="at least one budget"):
        Budget()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(NasPruneError, match="fraction in"):
            Budget(flops=bad)
    budget = Budget(flops=0.3, params=0.5)
    assert budget.violations(30, 40, 100, 100) == pytest.approx({"flops": 0.0, "params": -0.1})
    assert budget.met(30, 50, 100, 100) and not budget.met(31, 10, 100, 100)
    assert budget.label() == "flops0.3-params0.5"


def test_of_model_reads_the_zoo_yaml_and_flags_override_it():
    model, example = create_model("resnet20", in_channels=1), torch.zeros(2, 1, 28, 28)
    groups, space = WidthSpace.of_model("resnet20", model, example)
    assert space.round_to == 4 and all(w % 4 == 0 for c in space.choices.values() for w in c)
    assert {g.name for g in groups} == set(space.choices) | set(space.fixed)
    _, finer = WidthSpace.of_model("resnet20", model, example, round_to=2, freeze=["conv1"])
    assert finer.round_to == 2 and "conv1" in finer.fixed and "conv1" in space.choices
    _, unknown = WidthSpace.of_model("not-a-zoo-model", model, example)
    assert unknown.round_to == 1  # no YAML: the defaults
