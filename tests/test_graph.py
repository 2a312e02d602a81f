import copy

import pytest
import torch
import torch.nn as nn
from conftest import ConvClassifier, Grouped, ShuffleUnit, TwoLayer

from nas_prune import channel_groups, create_model, model_names


def test_two_layer_groups_are_named_after_their_first_module():
    groups = channel_groups(TwoLayer(), torch.randn(2, 1, 8, 8))
    assert [(g.name, g.channels, g.prunable) for g in groups] == [("conv1", 8, True), ("conv2", 4, True)]
    assert groups[0].modules == ("conv1", "bn1")


def test_residual_add_ties_all_feeding_convs(coupling_model):
    name, model, x = coupling_model
    groups = channel_groups(model, x)
    modules = dict(model.named_modules())
    # A conv's filters belong to one group; a BatchNorm after a concat may normalise several groups.
    convs = [m for g in groups for m in g.modules if type(modules[m]) is nn.Conv2d and modules[m].groups == 1]
    assert len(convs) == len(set(convs))
    if name == "residual":
        stem = next(g for g in groups if g.name == "stem.0")
        assert {"stem.0", "a2.0", "b2.0"} <= set(stem.modules)
        stage = next(g for g in groups if g.name == "down.0")
        assert "c2.0" in stage.modules


@pytest.mark.parametrize("factory, classifier", [(TwoLayer, "fc"), (ConvClassifier, "classifier")])
def test_network_outputs_are_never_a_group(factory, classifier):
    groups = channel_groups(factory(), torch.randn(2, 1 if factory is TwoLayer else 3, 8, 8))
    assert all(classifier not in g.modules for g in groups)


def test_grouped_conv_channels_are_frozen_with_a_reason():
    groups = {g.name: g for g in channel_groups(Grouped(), torch.randn(2, 3, 16, 16))}
    assert not groups["reduce.0"].prunable and "grouped convolution" in groups["reduce.0"].reason
    assert not groups["grouped.0"].prunable
    assert groups["stem.0"].prunable and groups["expand.0"].prunable


def test_channel_shuffle_is_frozen_but_branch_stays_prunable():
    groups = {g.name: g for g in channel_groups(ShuffleUnit(), torch.randn(2, 3, 16, 16))}
    assert not groups["stem.0"].prunable
    assert groups["branch.0.0"].prunable


def test_depthwise_conv_joins_the_group_of_its_input():
    from conftest import Depthwise

    groups = {g.name: g for g in channel_groups(Depthwise(), torch.randn(2, 3, 16, 16))}
    assert {"expand.0", "dw.0", "dw.1"} <= set(groups["expand.0"].modules)


def test_user_model_is_untouched():
    model = TwoLayer().train()
    before = copy.deepcopy(model.state_dict())
    channel_groups(model, torch.randn(4, 1, 8, 8))
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", model_names())
def test_zoo_groups_are_stable_and_prunable(name):
    x = torch.randn(2, 1, 28, 28)
    first = channel_groups(create_model(name, in_channels=1), x)
    second = channel_groups(create_model(name, in_channels=1), x)
    assert [(g.name, g.channels) for g in first] == [(g.name, g.channels) for g in second]
    assert first and all(g.prunable for g in first)
    assert all(
        isinstance(dict(create_model(name, in_channels=1).named_modules())[g.name], nn.Module) for g in first
    )
