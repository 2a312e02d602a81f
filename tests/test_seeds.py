import dataclasses

import pytest
import torch

from nas_prune import channel_groups, create_model
from nas_prune.cost import CostModel
from nas_prune.seeds import SeedContext, make_seeds, uniform_seed
from nas_prune.space import Budget, WidthSpace


@pytest.fixture(scope="module")
def context():
    torch.manual_seed(0)
    model, x = create_model("convnet", in_channels=1).eval(), torch.randn(2, 1, 28, 28)
    space = WidthSpace.build(channel_groups(model, x), round_to=4, min_fraction=0.1)

    def evaluate(m):  # a deterministic stand-in for validation accuracy: agreement with the dense model
        with torch.no_grad():
            return float((m.eval()(x).argmax(1) == model(x).argmax(1)).float().mean())

    return SeedContext(model, x, space, CostModel(model, x), Budget(flops=0.3), evaluate=evaluate)


def test_every_seed_meets_the_budget_and_lies_on_the_grid(context):
    seeds = make_seeds(context)
    assert set(seeds) == {"uniform", "l2", "sensitivity"}
    for widths in seeds.values():
        macs, _ = context.cost.cost(widths)
        assert macs <= 0.3 * context.cost.dense[0]
        context.space.encode(widths)  # raises when off the grid


def test_uniform_seed_is_the_largest_feasible_uniform_width(context):
    widths = uniform_seed(context)
    fractions = sorted({w / c[-1] for n, c in context.space.choices.items() for w in c})
    bigger = [
        f
        for f in fractions
        if context.space.uniform(f) != widths
        and all(context.space.uniform(f)[n] >= widths[n] for n in widths)
    ]
    assert all(not context.feasible(context.space.uniform(f)) for f in bigger)


def test_unreachable_budget_gives_no_seed(context):
    tiny = SeedContext(context.model, context.example_inputs, context.space, context.cost, Budget(flops=1e-4))
    assert make_seeds(tiny, ("uniform", "l2")) == {}


def test_l2_seed_removes_negligible_channels_first(context):
    from nas_prune.seeds import l2_seed

    model = create_model("convnet", in_channels=1)
    first = next(iter(context.space.choices))
    assert first == "features.conv1.conv"
    channels = context.space.choices[first][-1]
    modules = dict(model.named_modules())
    with torch.no_grad():  # half of the first group's channels become negligible everywhere they appear
        modules["features.conv1.conv"].weight[: channels // 2] *= 1e-4
        modules["features.conv1.bn"].weight[: channels // 2] *= 1e-4
        modules["features.conv2.conv"].weight[:, : channels // 2] *= 1e-4
    x = context.example_inputs
    # Dropping exactly the negligible half costs 17% of the FLOPs: a 0.84 budget needs just that.
    ctx = SeedContext(model, x, context.space, CostModel(model, x), Budget(flops=0.84))
    assert l2_seed(ctx) == {**context.space.dense(), first: channels // 2}


def test_seeds_honour_an_extra_constraint(context):
    """A latency budget reaches the seeds as ``constraint``: here, the first group at most 8 channels."""
    first = context.space.names[0]
    ctx = dataclasses.replace(context, budget=Budget(flops=1.0), constraint=lambda w: w[first] <= 8)
    seeds = make_seeds(ctx, ("uniform", "l2"))
    assert set(seeds) == {"uniform", "l2"}
    assert all(w[first] <= 8 for w in seeds.values())
