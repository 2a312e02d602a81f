import copy

import pytest
import torch
import torch.nn as nn
from conftest import MULTI_INPUT_GROUPS, DictDetector, TwoLayer, detector_inputs, random_widths, randomize_bn

from nas_prune import NasPruneError, channel_groups, count_macs, create_model, model_names, prune
from nas_prune.batch import call_model, map_tensors, tensors
from nas_prune.prune import _check_forward, channel_importance, mask, round_width


def _double(model, x):
    return model.double().eval(), x.double()


def _assert_unchanged(model, state):
    now = model.state_dict()
    assert state.keys() == now.keys()
    assert all(torch.equal(state[k], now[k]) for k in state)


def test_coupling_models_prune_equals_mask(coupling_model):
    _, model, x = coupling_model
    model, x = _double(model, x)
    state = copy.deepcopy(model.state_dict())
    dense = model(x)
    assert torch.allclose(prune(model, x, 1.0)(x), dense, atol=1e-12)
    for widths in (0.5, random_widths(channel_groups(model, x), seed=1)):
        slim = prune(model, x, widths)
        out = slim(x)
        assert out.shape == dense.shape
        assert torch.allclose(out, mask(model, x, widths)(x), atol=1e-5)
        assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    _assert_unchanged(model, state)


@pytest.mark.parametrize("name", model_names())
def test_zoo_prune_equals_mask(name):
    torch.manual_seed(0)
    model, x = _double(randomize_bn(create_model(name, in_channels=1)), torch.randn(2, 1, 28, 28))
    state = copy.deepcopy(model.state_dict())
    dense = model(x)
    assert torch.allclose(prune(model, x, 1.0)(x), dense, atol=1e-10)
    widths = random_widths(channel_groups(model, x), seed=0)
    slim = prune(model, x, widths, round_to=1)
    assert slim(x).shape == dense.shape
    assert torch.allclose(slim(x), mask(model, x, widths)(x), atol=1e-5)
    kept = {g.name: g.channels for g in channel_groups(slim, x)}
    expected = {g.name: widths.get(g.name, g.channels) for g in channel_groups(model, x)}
    assert {n: kept.get(n) for n in expected} == expected
    # A depthwise conv cut to one channel is an ordinary conv to Torch-Pruning: its output splits off.
    layers = dict(slim.named_modules())
    assert all(kept[n] == layers[n].in_channels == 1 for n in set(kept) - set(expected))
    _assert_unchanged(model, state)


def test_kept_filters_carry_the_most_important_weights():
    model = TwoLayer()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.weight[[1, 5]] = 1.0  # only these two filters matter
    slim = prune(model, torch.randn(1, 1, 8, 8), {"conv1": 2})
    assert torch.equal(slim.conv1.weight, model.conv1.weight[[1, 5]])
    assert torch.equal(slim.conv2.weight, model.conv2.weight[:, [1, 5]])


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale"])
def test_every_importance_gives_a_valid_model(criterion, coupling_model):
    _, model, x = coupling_model
    assert prune(model, x, 0.5, importance=criterion)(x).shape == model(x).shape


def test_taylor_uses_gradients():
    model, x = TwoLayer(), torch.randn(4, 1, 8, 8)
    with pytest.raises(NasPruneError, match="needs gradients"):
        prune(model, x, 0.5, importance="taylor")
    model(x).sum().backward()
    assert prune(model, x, 0.5, importance="taylor")(x).shape == (4, 10)


def test_round_to_gives_multiples():
    model = create_model("resnet20", in_channels=1)
    x = torch.randn(1, 1, 28, 28)
    slim = prune(model, x, 0.3, round_to=8)
    assert all(g.channels % 8 == 0 for g in channel_groups(slim, x))


@pytest.mark.parametrize(
    "channels, fraction, round_to, expected",
    [
        (16, 0.5, 1, 8),
        (16, 0.3, 4, 4),
        (16, 0.4, 4, 8),
        (10, 0.25, 1, 3),
        (10, 0.01, 1, 1),
        (16, 0.01, 8, 8),
        (4, 0.5, 8, 4),
        (64, 1.0, 8, 64),
    ],
)
def test_round_width(channels, fraction, round_to, expected):
    assert round_width(channels, fraction, round_to) == expected


@pytest.mark.parametrize(
    "widths, message",
    [
        ({"nope": 3}, "unknown channel group"),
        ({"conv1": 0}, "outside 1..8"),
        ({"conv1": 9}, "outside 1..8"),
        (0.0, "fraction in (0, 1]"),
        (1.5, "fraction in (0, 1]"),
    ],
)
def test_bad_widths_raise(widths, message):
    with pytest.raises(NasPruneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prune(TwoLayer(), torch.randn(1, 1, 8, 8), widths)


def test_frozen_group_cannot_be_shrunk_but_uniform_width_skips_it():
    from conftest import PytorchcvShuffleNetV2

    x, stage1 = torch.randn(2, 3, 32, 32), "features.stage1.unit1.expand_conv3"
    with pytest.raises(NasPruneError, match="cannot be pruned: 4 channel shuffles .* tie all 8 channels"):
        prune(PytorchcvShuffleNetV2(), x, {stage1: 4})
    slim = prune(PytorchcvShuffleNetV2(), x, 0.5)
    unit1 = slim.features.stage1.unit1
    assert unit1.expand_conv3.out_channels == 8 and unit1.compress_conv1.out_channels == 4


@pytest.mark.parametrize("kind", ["shufflenetv2_pytorchcv", "shufflenetv2_pytorchcv_shuffle2"])
def test_pytorchcv_shufflenet_loses_a_real_share_of_its_macs(kind):
    from conftest import COUPLING_MODELS

    factory, shape = COUPLING_MODELS[kind]
    model, x = _double(randomize_bn(factory()), torch.randn(2, *shape))
    slim = prune(model, x, 0.5)
    assert count_macs(slim, x)[0] < 0.55 * count_macs(model, x)[0]  # 46% (44% with channel_shuffle2)
    assert slim(x).shape == model(x).shape == (2, 10)
    assert torch.allclose(slim(x), mask(model, x, 0.5)(x), atol=1e-10)


def test_user_frozen_groups_keep_their_width():
    x = torch.randn(2, 1, 8, 8)
    slim = prune(TwoLayer(), x, 0.5, frozen=["conv1"])
    assert slim.conv1.out_channels == 8 and slim.conv2.out_channels == 2
    with pytest.raises(NasPruneError, match="frozen by the user"):
        prune(TwoLayer(), x, {"conv1": 4}, frozen=["conv1"])


def _kept_rows(dense: torch.Tensor, slim: torch.Tensor, cols=slice(None)) -> list[int]:
    """Indices of the rows of ``dense`` (restricted to ``cols``) that ``slim``'s rows are."""
    return [next(i for i, row in enumerate(dense[:, cols]) if torch.equal(row, s)) for s in slim]


def test_grouped_conv_keeps_its_groups_and_cuts_the_same_positions_from_every_block():
    from conftest import Grouped

    model, x = Grouped(), torch.randn(2, 3, 16, 16)
    slim = prune(model, x, {"reduce.0": 8, "grouped.0": 6})  # 6 is rounded half up to a multiple of 4: 8
    conv = slim.grouped[0]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 8, 8)
    reduce_kept = _kept_rows(model.reduce[0].weight, slim.reduce[0].weight)
    positions = sorted({i % 4 for i in reduce_kept})
    assert reduce_kept == [b * 4 + p for b in range(4) for p in positions]  # same 2 positions per block
    grouped_kept = _kept_rows(model.grouped[0].weight, conv.weight, positions)
    assert len({i % 4 for i in grouped_kept}) == 2 and len(grouped_kept) == 8


def test_scores_of_a_grouped_group_are_averaged_per_position():
    from nas_prune.prune import channel_order

    scores = torch.tensor([1.0, 9.0, 2.0, 3.0, 8.0, 4.0])  # 2 blocks of 3: positions average to 2, 6.5, 3
    assert channel_order(scores, 2).tolist() == [1, 4, 2, 5, 0, 3]
    assert channel_order(scores, 1).tolist() == [1, 4, 5, 3, 2, 0]


def test_extra_tensors_of_a_pruned_layer_are_sliced_with_its_weight():
    from conftest import MaskedConvNet

    model, x = MaskedConvNet(), torch.randn(2, 3, 16, 16)
    slim = prune(model, x, {"conv1": 4, "conv2": 6})
    kept1 = _kept_rows(model.conv1.weight, slim.conv1.weight)
    kept2 = _kept_rows(model.conv2.weight, slim.conv2.weight, kept1)
    assert torch.equal(slim.conv1.mask, model.conv1.mask[kept1])
    assert torch.equal(slim.conv2.mask, model.conv2.mask[kept2][:, kept1])
    assert not slim.conv2.mask.requires_grad


def test_a_pruned_model_that_cannot_run_raises_one_clear_error_naming_the_layer():
    class Shift(torch.nn.Module):  # a buffer of the channel count, invisible to the dependency graph
        def __init__(self):
            super().__init__()
            self.register_buffer("shift", torch.zeros(1, 8, 1, 1))

        def forward(self, x):
            return x + self.shift

    model = TwoLayer()
    model.bn1 = torch.nn.Sequential(model.bn1, Shift())
    with pytest.raises(NasPruneError, match=r"pruned model fails in bn1\.1: RuntimeError"):
        prune(model, torch.randn(2, 1, 8, 8), 0.5)


def test_unknown_importance_raises():
    with pytest.raises(NasPruneError, match="unknown importance"):
        prune(TwoLayer(), torch.randn(1, 1, 8, 8), 0.5, importance="nope")


def test_works_under_no_grad():
    with torch.no_grad():
        assert prune(TwoLayer(), torch.randn(1, 1, 8, 8), 0.5).conv1.out_channels == 4


def test_group_norm_keeps_its_groups_and_widths_step_by_them():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.GroupNorm(4, 16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    )
    x = torch.randn(2, 3, 8, 8)
    group = channel_groups(model, x)[0]
    assert (group.name, group.multiple) == ("0", 4)
    slim = prune(model, x, {"0": 6})  # rounded half up to 8
    assert slim[0].out_channels == slim[1].num_channels == 8 and slim[1].num_groups == 4
    assert slim(x).shape == (2, 5)


def test_several_inputs_and_outputs_prune_equals_mask_and_keep_the_output_structure(multi_input_model):
    name, model, inputs = multi_input_model
    model, inputs = model.double(), map_tensors(torch.Tensor.double, inputs)
    dense = call_model(model, inputs)
    state = copy.deepcopy(model.state_dict())
    for widths in (0.5, random_widths(channel_groups(model, inputs), seed=1)):
        slim = prune(model, inputs, widths)
        out = call_model(slim, inputs)
        assert type(out) is type(dense) and (not isinstance(out, dict) or out.keys() == dense.keys())
        assert [t.shape for t in tensors(out)] == [t.shape for t in tensors(dense)]
        masked = call_model(mask(model, inputs, widths), inputs)
        assert all(
            torch.allclose(a, b, atol=1e-5) for a, b in zip(tensors(out), tensors(masked), strict=True)
        )
        assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    assert set(channel_importance(model, inputs)) == set(MULTI_INPUT_GROUPS[name])
    _assert_unchanged(model, state)


def test_a_pruned_model_with_keyword_inputs_that_cannot_run_names_the_layer():
    model, inputs = DictDetector(), detector_inputs()
    _check_forward(model, inputs)  # runs on one sample of every input
    broken = copy.deepcopy(model)
    broken.body[0] = nn.Conv2d(5, 12, 3, 2, 1)  # reads 5 channels, the stem gives 8
    with pytest.raises(NasPruneError, match="fails in body.0"):
        _check_forward(broken, inputs)
