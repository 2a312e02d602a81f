"""The zoo's grouped- and depthwise-convolution models: CIFAR MobileNetV2, ResNeXt-20 and ShuffleNetV2.

Their channel couplings are the hard cases for pruning (depthwise convs tie input to output, grouped
convs lose the same positions from each group, a channel shuffle cuts the halves it mixes alike). Their
factories (``mobilenetv2``, ``resnext20``, ``shufflenetv2``) register on import.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Classifier, ConvBNAct, init_weights
from .registry import register_model

# ---------------------------------------------------------------------------------------------------
# MobileNetV2 (CIFAR)
# ---------------------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ``expand_ratio == 1``), 3x3 depthwise, 1x1 linear projection.

    The input is added back when ``stride == 1`` and ``in_ch == out_ch``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand = ConvBNAct(in_ch, hidden, 1, act=nn.ReLU6) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6)
        self.project = ConvBNAct(hidden, out_ch, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 (Sandler et al. 2018), width 1.0.

    As in common CIFAR ports (e.g. kuangliu/pytorch-cifar), the stem and the first stride-2 stage
    (24 channels) use stride 1, so 32x32 inputs reach the head at 4x4 (28x28 at 4x4 too).
    """

    # (expand ratio t, output channels c, blocks n, first stride s)
    CFG: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),  # stride 2 -> 1 for CIFAR
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = ConvBNAct(in_channels, 32, 3, 1, act=nn.ReLU6)  # stride 2 -> 1 for CIFAR
        blocks: list[nn.Module] = []
        ch = 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                blocks.append(InvertedResidual(ch, c, s if i == 0 else 1, t))
                ch = c
        self.blocks = nn.Sequential(*blocks)
        self.conv_last = ConvBNAct(ch, 1280, 1, act=nn.ReLU6)
        self.head = Classifier(1280, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv_last(self.blocks(self.stem(x))))


# ---------------------------------------------------------------------------------------------------
# ResNeXt (CIFAR)
# ---------------------------------------------------------------------------------------------------


class ResNeXtBlock(nn.Module):
    """1x1 reduce, 3x3 grouped conv (``cardinality`` groups), 1x1 expand; identity or 1x1 shortcut."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, cardinality: int):
        super().__init__()
        self.reduce = ConvBNAct(in_ch, width, 1)
        self.grouped = ConvBNAct(width, width, 3, stride, groups=cardinality)
        self.expand = ConvBNAct(width, out_ch, 1, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = ConvBNAct(in_ch, out_ch, 1, stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.expand(self.grouped(self.reduce(x))) + self.shortcut(x))


class ResNeXt(nn.Module):
    """CIFAR ResNeXt (Xie et al. 2017) at depth 20: a 3x3 stem of 32, three stages of two bottleneck blocks
    with 8 groups of 4/8/16 channels (widths 32/64/128) and outputs of 64/128/256 channels."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, cardinality: int = 8, group_width: int = 4
    ):
        super().__init__()
        self.stem = ConvBNAct(in_channels, 32, 3)
        blocks: list[nn.Module] = []
        ch = 32
        for stage in range(3):
            width, out = cardinality * group_width * 2**stage, 64 * 2**stage
            for i in range(2):
                blocks.append(ResNeXtBlock(ch, width, out, 2 if i == 0 and stage > 0 else 1, cardinality))
                ch = out
        self.blocks = nn.Sequential(*blocks)
        self.head = Classifier(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


# ---------------------------------------------------------------------------------------------------
# ShuffleNetV2 (CIFAR)
# ---------------------------------------------------------------------------------------------------


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleave the channels of ``groups`` equal slices."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or two branches (stride 2), concat, channel shuffle."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        half = out_ch // 2
        self.stride = stride
        self.branch1: nn.Module = nn.Identity()
        if stride > 1:
            self.branch1 = nn.Sequential(
                ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, act=None), ConvBNAct(in_ch, half, 1)
            )
        cin = in_ch if stride > 1 else half
        self.branch2 = nn.Sequential(
            ConvBNAct(cin, half, 1),
            ConvBNAct(half, half, 3, stride, groups=half, act=None),
            ConvBNAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out)


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNetV2 (Ma et al. 2018), width 0.5 (stages of 48/96/192), two units per stage, a 3x3
    stride-1 stem of 24 without max-pool, and a 1x1 conv of 512 before the head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = ConvBNAct(in_channels, 24, 3)
        units: list[nn.Module] = []
        ch = 24
        for out in (48, 96, 192):
            units += [ShuffleUnit(ch, out, 2), ShuffleUnit(out, out, 1)]
            ch = out
        self.units = nn.Sequential(*units)
        self.conv_last = ConvBNAct(ch, 512, 1)
        self.head = Classifier(512, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv_last(self.units(self.stem(x))))


# ---------------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------------


@register_model
def mobilenetv2(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR MobileNetV2, width 1.0."""
    return MobileNetV2(in_channels, num_classes)


@register_model
def resnext20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNeXt-20 (8x4d): grouped 3x3 convolutions, searchable on multiples of 8 channels."""
    return ResNeXt(in_channels, num_classes)


@register_model
def shufflenetv2(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ShuffleNetV2 0.5x (two units per stage): branch widths and stage outputs (in pairs) are searched."""
    return ShuffleNetV2(in_channels, num_classes)
