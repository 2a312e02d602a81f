"""Tiny hand-built models, one per channel-coupling kind, shared by the tests."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class TwoLayer(nn.Module):
    """conv(1->8) -> BN -> ReLU -> conv(8->4) -> pool -> linear(4->10): costs are easy to count by hand."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Residual(nn.Module):
    """Two residual blocks sharing one channel group, plus a 1x1-projection stage."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.a1, self.a2 = (
            conv_bn(8, 6),
            nn.Sequential(nn.Conv2d(6, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)),
        )
        self.b1, self.b2 = (
            conv_bn(8, 6),
            nn.Sequential(nn.Conv2d(6, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)),
        )
        self.down = nn.Sequential(nn.Conv2d(8, 12, 1, 2, bias=False), nn.BatchNorm2d(12))
        self.c1, self.c2 = (
            conv_bn(8, 12, stride=2),
            nn.Sequential(nn.Conv2d(12, 12, 3, 1, 1), nn.BatchNorm2d(12)),
        )
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = F.relu(x + self.b2(self.b1(x)))
        x = F.relu(self.down(x) + self.c2(self.c1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseConcat(nn.Module):
    """DenseNet-style: pre-activation layers concatenated onto their input, with a transition between."""

    def __init__(self, growth=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block1 = nn.ModuleList([self._layer(8 + i * growth, growth) for i in range(2)])
        self.transition = nn.Sequential(
            nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 10, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = nn.ModuleList([self._layer(10 + i * growth, growth) for i in range(2)])
        self.norm = nn.BatchNorm2d(18)
        self.fc = nn.Linear(18, 6)

    @staticmethod
    def _layer(cin, growth):
        return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, padding=1, bias=False))

    def forward(self, x):
        x = self.stem(x)
        for layer in self.block1:
            x = torch.cat([x, layer(x)], 1)
        x = self.transition(x)
        for layer in self.block2:
            x = torch.cat([x, layer(x)], 1)
        x = F.relu(self.norm(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    """conv -> SE (pool, fc, ReLU, fc, sigmoid, channel-wise multiply) -> conv -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn(3, 16)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.conv2 = conv_bn(16, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv1(x)
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(x, 1)))))
        x = self.conv2(x * s)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Depthwise(nn.Module):
    """MobileNet-style: pointwise expand, depthwise 3x3, pointwise project with a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.expand = conv_bn(8, 24, k=1)
        self.dw = conv_bn(24, 24, groups=24)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Grouped(nn.Module):
    """ResNeXt-style bottleneck with a grouped 3x3 conv (groups=4)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.reduce = conv_bn(16, 16, k=1)
        self.grouped = conv_bn(16, 16, groups=4)
        self.expand = conv_bn(16, 12, k=1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.expand(self.grouped(self.reduce(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: channel split, one branch convolved, concat, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.branch = nn.Sequential(conv_bn(8, 8, k=1), conv_bn(8, 8, groups=8), conv_bn(8, 8, k=1))
        self.head = conv_bn(16, 12, k=1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat([x1, self.branch(x2)], 1)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = self.head(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def pytorchcv_channel_shuffle(x, groups):
    """pytorchcv's ``channel_shuffle``: view as (groups, channels per group), transpose, view back."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, channels, height, width)


def pytorchcv_channel_shuffle2(x, groups):
    """pytorchcv's ``channel_shuffle2`` ("the alternative version"): view as (channels per group, groups)."""
    batch, channels, height, width = x.size()
    x = x.view(batch, channels // groups, groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, channels, height, width)


class PytorchcvChannelShuffle(nn.Module):
    """pytorchcv's ``ChannelShuffle`` module (``shuffle`` picks the variant)."""

    def __init__(self, channels, groups, shuffle=pytorchcv_channel_shuffle):
        super().__init__()
        if channels % groups != 0:
            raise ValueError("channels must be divisible by groups")
        self.groups, self.shuffle = groups, shuffle

    def forward(self, x):
        return self.shuffle(x, self.groups)


class PytorchcvConvBlock(nn.Module):
    """pytorchcv's ``conv1x1_block`` / ``conv3x3_block``: conv, BatchNorm, ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activ = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activ(self.bn(self.conv(x)))


class PytorchcvShuffleUnit(nn.Module):
    """pytorchcv's ShuffleNetV2 ``ShuffleUnit`` (without its optional SE block and residual): a downsample
    unit runs a left branch (depthwise 3x3 stride 2, 1x1) beside the right one on the whole input; the
    others chunk the input and run the right branch (1x1, depthwise 3x3, 1x1) on the second half; then
    ``cat((y1, y2))`` and a channel shuffle of 2 groups. One ReLU module serves every activation."""

    def __init__(self, in_channels, out_channels, downsample, shuffle=pytorchcv_channel_shuffle):
        super().__init__()
        self.downsample = downsample
        mid_channels = out_channels // 2
        self.compress_conv1 = nn.Conv2d(
            in_channels if downsample else mid_channels, mid_channels, 1, bias=False
        )
        self.compress_bn1 = nn.BatchNorm2d(mid_channels)
        stride = 2 if downsample else 1
        self.dw_conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride, 1, groups=mid_channels, bias=False)
        self.dw_bn2 = nn.BatchNorm2d(mid_channels)
        self.expand_conv3 = nn.Conv2d(mid_channels, mid_channels, 1, bias=False)
        self.expand_bn3 = nn.BatchNorm2d(mid_channels)
        if downsample:
            self.dw_conv4 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
            self.dw_bn4 = nn.BatchNorm2d(in_channels)
            self.expand_conv5 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
            self.expand_bn5 = nn.BatchNorm2d(mid_channels)
        self.activ = nn.ReLU(inplace=True)
        self.c_shuffle = PytorchcvChannelShuffle(out_channels, 2, shuffle)

    def forward(self, x):
        if self.downsample:
            y1 = self.dw_bn4(self.dw_conv4(x))
            y1 = self.activ(self.expand_bn5(self.expand_conv5(y1)))
            x2 = x
        else:
            y1, x2 = torch.chunk(x, chunks=2, dim=1)
        y2 = self.activ(self.compress_bn1(self.compress_conv1(x2)))
        y2 = self.dw_bn2(self.dw_conv2(y2))
        y2 = self.activ(self.expand_bn3(self.expand_conv3(y2)))
        x = torch.cat((y1, y2), dim=1)
        return self.c_shuffle(x)


class PytorchcvShuffleNetV2(nn.Module):
    """ShuffleNetV2 as pytorchcv's ``shufflenetv2_w1`` writes it, tiny: an init block (3x3 stride-2 conv
    block, 3x3 stride-2 max-pool), stages of ``ShuffleUnit`` (the first of each downsamples), a 1x1 final
    block, average pooling to 1x1 and a linear classifier. Stage 1 has four units (as in ``w1``), so chunks
    and shuffles tie its channels all together; stage 2 has two."""

    def __init__(
        self,
        channels=((16,) * 4, (32,) * 2),
        init_block_channels=8,
        final_block_channels=64,
        in_channels=3,
        in_size=32,
        num_classes=10,
        shuffle=pytorchcv_channel_shuffle,
    ):
        super().__init__()
        self.features = nn.Sequential()
        init_block = nn.Sequential()
        init_block.add_module("conv", PytorchcvConvBlock(in_channels, init_block_channels, 3, stride=2))
        init_block.add_module("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True))
        self.features.add_module("init_block", init_block)
        in_channels = init_block_channels
        for i, channels_per_stage in enumerate(channels):
            stage = nn.Sequential()
            for j, out_channels in enumerate(channels_per_stage):
                stage.add_module(
                    f"unit{j + 1}", PytorchcvShuffleUnit(in_channels, out_channels, j == 0, shuffle)
                )
                in_channels = out_channels
            self.features.add_module(f"stage{i + 1}", stage)
        self.features.add_module("final_block", PytorchcvConvBlock(in_channels, final_block_channels, 1))
        self.features.add_module("final_pool", nn.AvgPool2d(in_size // 2 ** (2 + len(channels)), stride=1))
        self.output = nn.Linear(final_block_channels, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.output(x)


class Chunked(nn.Module):
    """A chunk without a shuffle: the halves of one conv's output feed two different convs, then add."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.left, self.right = conv_bn(8, 12, k=1), conv_bn(8, 12, k=1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x1, x2 = self.stem(x).chunk(2, dim=1)
        x = self.left(x1) + self.right(x2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConvClassifier(nn.Module):
    """All-convolutional: the classifier is a 1x1 conv followed by global pooling (no Linear)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8), conv_bn(8, 16, stride=2))
        self.classifier = nn.Conv2d(16, 7, 1)

    def forward(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.classifier(self.features(x)), 1), 1)


class GroupedResidual(nn.Module):
    """Grouped convs on a residual stream: the stream feeds a groups=4 conv and is fed by a groups=2 one."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.g1 = conv_bn(16, 8, groups=4)
        self.g2 = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1, groups=2, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.g2(self.g1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MaskedConv2d(nn.Conv2d):
    """Expander-style conv: a fixed 0/1 ``mask`` parameter of the weight's shape multiplies the weight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mask = (torch.arange(self.weight.numel()) % 3 != 0).float().view_as(self.weight)
        self.mask = nn.Parameter(mask, requires_grad=False)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


class MaskedConvNet(nn.Module):
    """Two masked convs (with BN) and a linear head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = MaskedConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = MaskedConv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ChannelScale(nn.Module):
    """A per-channel scale parameter of the model itself, used as ``x * self.scale`` in forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))
        self.conv2 = conv_bn(8, 12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.conv2(self.conv1(x) * self.scale)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ChannelScaleView(ChannelScale):
    """The same scale stored as a vector and viewed as ``(1, C, 1, 1)`` in forward."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x):
        x = self.conv2(self.conv1(x) * self.scale.view(1, -1, 1, 1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Inplace(nn.Module):
    """In-place activations and an in-place residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(True))
        self.conv = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU6(inplace=True), nn.Conv2d(6, 8, 1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv(x)
        y += x
        x = F.relu_(y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


COUPLING_MODELS = {
    "two_layer": (TwoLayer, (1, 8, 8)),
    "residual": (Residual, (3, 16, 16)),
    "dense_concat": (DenseConcat, (3, 16, 16)),
    "squeeze_excite": (SqueezeExcite, (3, 16, 16)),
    "depthwise": (Depthwise, (3, 16, 16)),
    "grouped": (Grouped, (3, 16, 16)),
    "shuffle": (ShuffleUnit, (3, 16, 16)),
    "shufflenetv2_pytorchcv": (PytorchcvShuffleNetV2, (3, 32, 32)),
    "shufflenetv2_pytorchcv_shuffle2": (
        partial(PytorchcvShuffleNetV2, shuffle=pytorchcv_channel_shuffle2),
        (3, 32, 32),
    ),
    "chunked": (Chunked, (3, 16, 16)),
    "conv_classifier": (ConvClassifier, (3, 16, 16)),
    "grouped_residual": (GroupedResidual, (3, 16, 16)),
    "masked_conv": (MaskedConvNet, (3, 16, 16)),
    "channel_scale": (ChannelScale, (3, 16, 16)),
    "channel_scale_view": (ChannelScaleView, (3, 16, 16)),
    "inplace": (Inplace, (3, 16, 16)),
}


class DictDetector(nn.Module):
    """Keyword inputs ``image`` and a per-sample ``scale``, a shared backbone, and two heads returned as a
    dict: ``boxes`` (a conv straight off the backbone) and ``scores`` (a hidden layer, a conv, a sigmoid)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.body = conv_bn(8, 12, stride=2)
        self.boxes = nn.Conv2d(12, 4, 1)
        self.scores = nn.Sequential(conv_bn(12, 6), nn.Conv2d(6, 3, 1))

    def forward(self, image, scale):
        x = self.body(self.stem(image * scale.view(-1, 1, 1, 1)))
        return {"boxes": self.boxes(x), "scores": self.scores(x).sigmoid()}


class TwoStream(nn.Module):
    """Positional inputs ``(x, y)`` joined by an add (coupling both stems), returning a tuple: the feature
    map ``feat`` (an output the network also reads on) and the class logits."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 8), conv_bn(1, 8)
        self.mid = conv_bn(8, 10)
        self.feat = nn.Conv2d(10, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x, y):
        f = self.feat(self.mid(self.a(x) + self.b(y)))
        return f, self.fc(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))


def detector_inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"image": torch.randn(batch, 3, 16, 16), "scale": torch.rand(batch) + 0.5}


def two_stream_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, 16, 16), torch.randn(batch, 1, 16, 16)


MULTI_INPUT_MODELS = {
    "dict_detector": (DictDetector, detector_inputs),
    "two_stream": (TwoStream, two_stream_inputs),
}
"""Models whose forward takes several inputs (a dict, a tuple) and returns several outputs."""
# Their channel groups: the heads' and returned feature map's channels are outputs, never groups.
MULTI_INPUT_GROUPS = {
    "dict_detector": {"stem.0": 8, "body.0": 12, "scores.0.0": 6},
    "two_stream": {"a.0": 8, "mid.0": 10},
}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as a trained model has."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


def random_widths(groups, seed: int) -> dict[str, int]:
    """Random widths of every prunable group, from one channel (or one per group of a grouped conv,
    which keeps whole positions: multiples of ``multiple``) to all of them."""
    gen = torch.Generator().manual_seed(seed)
    return {
        g.name: g.multiple * int(torch.randint(1, g.channels // g.multiple + 1, (1,), generator=gen))
        for g in groups
        if g.prunable
    }


@pytest.fixture(params=sorted(COUPLING_MODELS))
def coupling_model(request):
    """(name, model in eval mode with random BN statistics, example input batch)."""
    torch.manual_seed(0)
    factory, shape = COUPLING_MODELS[request.param]
    return request.param, randomize_bn(factory()).eval(), torch.randn(2, *shape)


@pytest.fixture(params=sorted(MULTI_INPUT_MODELS))
def multi_input_model(request):
    """(name, model in eval mode with random BN statistics, example inputs: a dict or a tuple)."""
    torch.manual_seed(0)
    factory, inputs = MULTI_INPUT_MODELS[request.param]
    return request.param, randomize_bn(factory()).eval(), inputs()


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for one test module, with ``tests/`` on the workers' path (they import the fakes)."""
    from nas_prune.search.workers import start_ray  # before Ray: nas_prune.search sets its environment

    here = Path(__file__).parent  # the fakes, and the nas_prune under test (not another install's)
    path = os.pathsep.join([str(here), str(here.parent)])
    started = start_ray(None, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    if started:
        import ray

        ray.shutdown()
