"""Every coupling kind and every zoo model prunes validly (issue 11's acceptance checks), in float64."""

import copy
from functools import partial

import pytest
import torch
from conftest import COUPLING_MODELS, randomize_bn

from nas_prune import channel_groups, count_macs, create_model, model_names, prune, resolve_widths
from nas_prune.cost import CostModel


def _cases():
    for name, (factory, shape) in COUPLING_MODELS.items():
        yield pytest.param(factory, shape, id=name)
    for name in model_names():
        yield pytest.param(partial(create_model, name, in_channels=1), (1, 28, 28), id=name)


@pytest.mark.parametrize("factory, shape", list(_cases()))
def test_every_model_prunes_validly(factory, shape):
    torch.manual_seed(0)
    model = randomize_bn(factory()).double().eval()
    x = torch.randn(1, *shape, dtype=torch.float64)
    state = copy.deepcopy(model.state_dict())
    dense = model(x)
    groups = channel_groups(model, x)
    prunable = [g for g in groups if g.prunable]
    assert prunable and all(g.reason for g in groups if not g.prunable)

    assert torch.allclose(prune(model, x, 1.0)(x), dense, atol=1e-5, rtol=0)

    cost = CostModel(model, x)
    half = prune(model, x, 0.5)
    assert half(x).shape == dense.shape
    macs = count_macs(half, x)
    assert macs[0] < 0.9 * cost.dense[0]
    assert cost.cost(resolve_widths(groups, 0.5)) == macs

    named = {g.name: max(g.multiple, g.channels // (2 * g.multiple) * g.multiple) for g in prunable}
    slim = prune(model, x, named)
    assert slim(x).shape == dense.shape
    assert cost.cost(named) == count_macs(slim, x)

    now = model.state_dict()
    assert state.keys() == now.keys() and all(torch.equal(state[k], now[k]) for k in state)
