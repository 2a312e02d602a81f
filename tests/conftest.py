"""Tiny hand-built models, one per channel-coupling kind, shared by the tests."""

from __future__ import annotations

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
