import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from conftest import MULTI_INPUT_GROUPS, ConvClassifier, Grouped, ShuffleUnit, TwoLayer

from nas_prune import channel_groups, create_model, model_names, prune


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


def test_grouped_conv_groups_are_searchable_in_whole_positions():
    groups = {g.name: g for g in channel_groups(Grouped(), torch.randn(2, 3, 16, 16))}
    assert groups["reduce.0"].prunable and groups["reduce.0"].multiple == 4  # feeds the groups=4 conv
    assert groups["grouped.0"].prunable and groups["grouped.0"].multiple == 4  # comes out of it
    assert groups["stem.0"].multiple == groups["expand.0"].multiple == 1


def test_grouped_convs_of_different_group_counts_take_the_least_common_multiple():
    from conftest import GroupedResidual

    groups = {g.name: g for g in channel_groups(GroupedResidual(), torch.randn(2, 3, 16, 16))}
    assert groups["stem.0"].multiple == 4  # read by groups=4, written by groups=2
    assert groups["stem.0"].prunable and {"stem.0", "g2.0"} <= set(groups["stem.0"].modules)


def test_channel_shuffle_ties_both_halves_and_the_branch_stays_its_own_group():
    groups = {g.name: g for g in channel_groups(ShuffleUnit(), torch.randn(2, 3, 16, 16))}
    # stem -> chunk -> (x1, branch(x2)) -> cat -> shuffle: stem channel k, stem k + 8 and branch output k
    # are cut together, so the stem keeps pairs (multiples of 2) and the branch's last conv follows it.
    stem = groups["stem.0"]
    assert stem.prunable and stem.multiple == 2 and {"stem.0", "branch.2.0"} <= set(stem.modules)
    assert groups["branch.0.0"].prunable and groups["branch.0.0"].multiple == 1


def test_an_equal_chunk_cuts_every_piece_alike():
    from conftest import Chunked

    model, x = Chunked().eval(), torch.randn(2, 3, 16, 16)
    group = {g.name: g for g in channel_groups(model, x)}["stem.0"]
    assert group.prunable and group.multiple == 2
    slim = prune(model, x, {"stem.0": 10})
    assert (slim.stem[0].out_channels, slim.left[0].in_channels, slim.right[0].in_channels) == (10, 5, 5)
    kept = [
        next(i for i, w in enumerate(model.stem[0].weight) if torch.equal(w, s)) for s in slim.stem[0].weight
    ]
    assert [k for k in kept if k >= 8] == [k + 8 for k in kept if k < 8]  # the same positions in both halves


_PYTORCHCV = ("shufflenetv2_pytorchcv", "shufflenetv2_pytorchcv_shuffle2")


@pytest.mark.parametrize("kind", _PYTORCHCV)
def test_pytorchcv_shufflenet_searches_every_branch_and_says_why_a_stage_is_frozen(kind):
    from conftest import COUPLING_MODELS

    factory, shape = COUPLING_MODELS[kind]
    groups = {g.name: g for g in channel_groups(factory(), torch.randn(2, *shape))}
    units = [(1, u) for u in range(1, 5)] + [(2, 1), (2, 2)]
    for stage, unit in units:  # the inside of every right branch: 1x1 compress, depthwise 3x3
        branch = groups[f"features.stage{stage}.unit{unit}.compress_conv1"]
        assert branch.prunable and f"features.stage{stage}.unit{unit}.dw_conv2" in branch.modules
    # Two units: the shuffles and the chunk between them tie the stage's channels in classes, searched whole.
    stage2 = groups["features.stage2.unit1.expand_conv3"]
    assert stage2.prunable and stage2.multiple in (2, 4)
    # Four units: the ties reach every channel of the stage, which is frozen with the shuffles named.
    stage1 = groups["features.stage1.unit1.expand_conv3"]
    assert not stage1.prunable and "tie all 8 channels together" in stage1.reason
    assert "features.stage1.unit1.c_shuffle" in stage1.reason
    assert all("channel shuffle" in g.reason for g in groups.values() if not g.prunable)
    assert groups["features.init_block.conv.conv"].prunable and groups["features.final_block.conv"].prunable


def test_pytorchcv_stage_of_two_units_is_cut_in_interleaved_pairs():
    from conftest import PytorchcvShuffleNetV2

    model, x = PytorchcvShuffleNetV2().eval(), torch.randn(2, 3, 32, 32)
    stage2 = {g.name: g for g in channel_groups(model, x)}["features.stage2.unit1.expand_conv3"]
    assert (stage2.channels, stage2.multiple) == (16, 2)
    assert {"features.stage2.unit1.expand_conv5", "features.stage2.unit2.expand_conv3"} <= set(stage2.modules)
    slim = prune(model, x, {"features.stage2.unit1.expand_conv3": 10})
    unit1, unit2 = slim.features.stage2.unit1, slim.features.stage2.unit2
    assert unit1.expand_conv3.out_channels == unit1.expand_conv5.out_channels == 10  # both halves alike
    assert unit2.compress_conv1.in_channels == unit2.expand_conv3.out_channels == 10
    assert slim.features.final_block.conv.in_channels == 20 and slim(x).shape == (2, 10)


@pytest.mark.parametrize(
    "shuffle, reason",
    [
        (
            lambda x: x.view(2, 2, 2, 16, 16).transpose(1, 2).reshape(2, 4, 16, 16),
            "into 2 x 2, so which factor is the group count",
        ),
        (nn.ChannelShuffle(2), "channel reordering op ChannelShuffleBackward0"),
    ],
)
def test_a_channel_shuffle_that_cannot_be_mapped_is_frozen_with_the_reason(shuffle, reason):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    head = nn.Sequential(nn.Conv2d(4, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    net = nn.Sequential(model, _Lambda(shuffle), head)
    groups = {g.name: g for g in channel_groups(net, torch.randn(2, 3, 16, 16))}
    assert not groups["0.0"].prunable and reason in groups["0.0"].reason
    assert groups["2.0"].prunable


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


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


def test_shufflenet_searches_its_branches_and_its_shuffled_stage_outputs_in_pairs():
    groups = channel_groups(create_model("shufflenetv2", in_channels=1), torch.randn(2, 1, 28, 28))
    assert len(groups) == 11 and all(g.prunable for g in groups)  # stem, 6 branches, 3 stages, last conv
    stages = [g for g in groups if g.multiple > 1]
    assert [g.name for g in stages] == [f"units.{i}.branch1.1.conv" for i in (0, 2, 4)]
    assert all(g.multiple == 2 and g.name.replace("branch1.1", "branch2.2") in g.modules for g in stages)


def test_user_can_freeze_groups_by_name():
    from nas_prune import NasPruneError

    groups = {g.name: g for g in channel_groups(TwoLayer(), torch.randn(2, 1, 8, 8), frozen=["conv1"])}
    assert not groups["conv1"].prunable and groups["conv1"].reason == "frozen by the user"
    assert groups["conv2"].prunable
    with pytest.raises(NasPruneError, match="not channel groups"):
        channel_groups(TwoLayer(), torch.randn(2, 1, 8, 8), frozen=["nope"])


def test_a_graph_library_failure_on_one_layer_freezes_only_that_layer(monkeypatch):
    from conftest import Residual

    model = Residual()
    real = tp.DependencyGraph.get_pruning_group

    def flaky(self, module, fn, idxs):
        if module is self.model.a1[0]:
            raise ZeroDivisionError("integer division or modulo by zero")
        return real(self, module, fn, idxs)

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", flaky)
    groups = {g.name: g for g in channel_groups(model, torch.randn(2, 3, 16, 16))}
    assert not groups["a1.0"].prunable and "ZeroDivisionError" in groups["a1.0"].reason
    assert all(g.prunable for name, g in groups.items() if name != "a1.0")
    slim = prune(model, torch.randn(2, 3, 16, 16), 0.5)
    assert slim.a1[0].out_channels == 6 and slim.b1[0].out_channels == 3


def test_a_model_the_graph_library_cannot_trace_is_frozen_not_a_crash(monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", broken)
    model, x = TwoLayer().eval(), torch.randn(2, 1, 8, 8)
    groups = channel_groups(model, x)
    assert [g.name for g in groups] == ["conv1", "conv2"]  # the classifier is never a group
    assert all(not g.prunable and "cannot trace" in g.reason for g in groups)
    assert torch.equal(prune(model, x, 0.5)(x), model(x))


@pytest.mark.parametrize("kind", ["channel_scale", "channel_scale_view"])
def test_a_per_channel_scale_parameter_joins_the_group_it_scales(kind):
    from conftest import COUPLING_MODELS

    factory, shape = COUPLING_MODELS[kind]
    groups = {g.name: g for g in channel_groups(factory(), torch.randn(2, *shape))}
    assert groups["conv1.0"].prunable and groups["conv2.0"].prunable


# --- models with several inputs (a tuple, a dict) and several outputs ------------------------------


def test_several_inputs_and_outputs_give_groups_but_never_an_output(multi_input_model):
    name, model, inputs = multi_input_model
    groups = channel_groups(model, inputs)
    assert {g.name: g.channels for g in groups} == MULTI_INPUT_GROUPS[name]
    assert all(g.prunable for g in groups)
    # Both heads' final layers (and a returned feature map that a head also reads) are outputs.
    outputs = {"dict_detector": ("boxes", "scores.1"), "two_stream": ("feat", "fc")}[name]
    assert not any(layer in g.modules for g in groups for layer in outputs)
    if name == "two_stream":  # the add ties both inputs' stems
        assert {"a.0", "b.0"} <= set(groups[0].modules)


def test_a_tensor_input_is_one_argument_never_unpacked_along_its_batch():
    class OptionalScale(TwoLayer):
        seen: list = []

        def forward(self, x, scale=None):
            self.seen.append(tuple(x.shape))
            return super().forward(x if scale is None else x * scale)

    model = OptionalScale()
    groups = channel_groups(model, torch.randn(2, 1, 8, 8))
    assert [g.name for g in groups] == ["conv1", "conv2"]
    assert model.seen and set(model.seen) == {(2, 1, 8, 8)}
