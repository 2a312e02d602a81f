"""Models written the way other zoos write them, for benchmarking ``pkg.module:factory`` models.

``python scripts/benchmark_lut.py --models foreign_models:cifar_resnet56`` (scripts/ is on the path of a
script run from it). Nothing in nas_prune knows these models: their channel groups, search space and
latency table come from the same code paths a user's model takes.
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    """A CIFAR ResNet block as pytorch-cifar-models writes it: the shortcut is a 1x1 convolution and a
    BatchNorm where the shape changes (option B), not zero padding as nas_prune's zoo resnets do."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    """Three stages of ``blocks`` BasicBlocks at 16, 32 and 64 channels (6 * blocks + 2 layers)."""

    def __init__(self, blocks: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            layers = [BasicBlock(inplanes, planes, stride)]
            layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def cifar_resnet56(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-56 for 32x32 images with 1x1-convolution shortcuts (pytorch-cifar-models' layout)."""
    return CifarResNet(9, in_channels, num_classes)
