"""The zoo's plain-convolution models: a small ConvNet, CIFAR ResNet-20/56 and VGG-11/16 with BatchNorm.

Their factories (``convnet``, ``resnet20``, ``resnet56``, ``vgg11_bn``, ``vgg16_bn``) register on import.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .layers import Classifier, ConvBNAct, init_weights
from .registry import register_model

# ---------------------------------------------------------------------------------------------------
# ConvNet
# ---------------------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """Small CPU-friendly CNN: 32-32-pool-64-64-pool-128 (3x3 conv-BN-ReLU), global pool, linear."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=ConvBNAct(in_channels, 32),
                conv2=ConvBNAct(32, 32),
                pool1=nn.MaxPool2d(2),
                conv3=ConvBNAct(32, 64),
                conv4=ConvBNAct(64, 64),
                pool2=nn.MaxPool2d(2),
                conv5=ConvBNAct(64, 128),
            )
        )
        self.head = Classifier(128, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------------------------------------------
# ResNet (CIFAR)
# ---------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity, or 1x1 conv + BN, shortcut (ResNet option B)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, Sec. 4.2): 3x3 stem of 16, stages of 16/32/64 channels, n blocks each.

    Downsampling shortcuts are 1x1 conv + BN ("option B") rather than the paper's zero-padded identity
    ("option A"): a padded identity ties channel indices across stages, whereas a projection keeps each
    stage's channels an independent, prunable group. It adds ~1-2% parameters.
    """

    def __init__(self, num_blocks: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, num_blocks, stride=1)
        self.layer2 = self._stage(16, 32, num_blocks, stride=2)
        self.layer3 = self._stage(32, 64, num_blocks, stride=2)
        self.head = Classifier(64, num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_ch, out_ch, stride)] + [BasicBlock(out_ch, out_ch) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head(x)


# ---------------------------------------------------------------------------------------------------
# VGG (CIFAR)
# ---------------------------------------------------------------------------------------------------

_VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm (torchvision configs) and a single linear head instead of 3 FC layers.

    Max-pools use ``ceil_mode=True`` so five halvings work on 28x28 (28-14-7-4-2-1) as on 32x32.
    """

    def __init__(self, cfg: list[int | str], in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v))]
                layers.append(nn.ReLU(inplace=True))
                ch = int(v)
        self.features = nn.Sequential(*layers)
        self.head = Classifier(ch, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------------


@register_model
def convnet(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Small 5-conv CNN, the CPU default (~36 s per Fashion-MNIST epoch, batch 128, 2 CPU cores)."""
    return ConvNet(in_channels, num_classes)


@register_model
def resnet20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-20 (3 blocks per stage, option-B shortcuts)."""
    return ResNet(3, in_channels, num_classes)


@register_model
def resnet56(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-56 (9 blocks per stage, option-B shortcuts)."""
    return ResNet(9, in_channels, num_classes)


@register_model
def vgg11_bn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR VGG-11 with BatchNorm and a single linear head."""
    return VGG(_VGG_CFGS["vgg11"], in_channels, num_classes)


@register_model
def vgg16_bn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR VGG-16 with BatchNorm and a single linear head."""
    return VGG(_VGG_CFGS["vgg16"], in_channels, num_classes)
