"""TinyYolo: a YOLOv3-shaped one-stage detector small enough to train, search and retrain on a CPU.

Its shape is the seed case's (a YOLOv3 hand detector) at laptop size, so pruning meets the same
structures: a residual backbone (Darknet blocks: 1x1 reduce, 3x3 expand, add) whose adds couple
channels, a neck that upsamples the stride-16 features and concatenates them with the stride-8 ones,
and two 1x1 detection heads. ``forward`` returns the raw head maps in a dict, ``{"p8": ..., "p16":
...}``, each ``[B, anchors * (5 + classes), H / stride, W / stride]``; decoding lives in
:mod:`examples.detection.loss`, so the network ends in convolutions (no reshape to freeze channels).

Example:
    >>> model = TinyYolo(num_classes=10, width=16)
    >>> {k: tuple(v.shape) for k, v in model(torch.zeros(2, 1, 64, 64)).items()}
    {'p8': (2, 45, 8, 8), 'p16': (2, 45, 4, 4)}
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ANCHORS", "STRIDES", "ConvBN", "Residual", "TinyYolo"]

STRIDES = {"p8": 8, "p16": 16}
"""Output name -> stride in pixels of its grid."""

ANCHORS = {
    "p8": ((10.0, 23.0), (13.0, 26.0), (27.0, 15.0)),
    "p16": ((16.0, 29.0), (21.0, 26.0), (27.0, 30.0)),
}
"""Anchor boxes (width, height) in pixels per output: IoU k-means over the canvas items' tight boxes
(Fashion-MNIST items scaled 0.75-1.25x), the three smallest at stride 8."""


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm + LeakyReLU(0.1), Darknet's unit."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.1, inplace=True),
        )


class Residual(nn.Module):
    """Darknet residual block: ``x + expand3x3(reduce1x1(x))``; the add couples its input and output
    channels (one channel group), the reduced middle is a group of its own."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = ConvBN(channels, channels // 2, 1)
        self.expand = ConvBN(channels // 2, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.reduce(x))


class TinyYolo(nn.Module):
    """A two-scale YOLO detector for grayscale canvases whose sides are multiples of 16.

    Args:
        num_classes: classes predicted per anchor.
        width: channels of the stride-2 stem; stages double it (``w, 2w, 4w, 8w`` at strides 2-16).
        in_channels: image channels.
        anchors: boxes ``(w, h)`` per output, as :data:`ANCHORS`.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        in_channels: int = 1,
        anchors: dict[str, tuple[tuple[float, float], ...]] = ANCHORS,
    ):
        super().__init__()
        w = int(width)
        self.num_classes = int(num_classes)
        self.num_anchors = {name: len(boxes) for name, boxes in anchors.items()}
        outputs = {name: n * (5 + self.num_classes) for name, n in self.num_anchors.items()}
        self.stem = ConvBN(in_channels, w, 3, 2)  # stride 2
        self.stage4 = nn.Sequential(ConvBN(w, 2 * w, 3, 2), Residual(2 * w))  # stride 4
        self.stage8 = nn.Sequential(ConvBN(2 * w, 4 * w, 3, 2), Residual(4 * w))  # stride 8
        self.stage16 = nn.Sequential(ConvBN(4 * w, 8 * w, 3, 2), Residual(8 * w))  # stride 16
        self.lateral = ConvBN(8 * w, 4 * w, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(ConvBN(8 * w, 4 * w, 1), ConvBN(4 * w, 4 * w, 3))
        self.head16 = nn.Conv2d(8 * w, outputs["p16"], 1)
        self.head8 = nn.Conv2d(4 * w, outputs["p8"], 1)
        self._init_heads()

    def _init_heads(self) -> None:
        """Objectness and class biases start at a prior of 1% (RetinaNet's focal-loss init), so the
        first steps are not spent pushing down thousands of background predictions."""
        prior = -torch.log(torch.tensor(99.0))
        for head, name in ((self.head8, "p8"), (self.head16, "p16")):
            bias = head.bias.detach().view(self.num_anchors[name], 5 + self.num_classes)
            bias[:, 4:] = prior

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c8 = self.stage8(self.stage4(self.stem(x)))
        c16 = self.stage16(c8)
        p8 = self.fuse(torch.cat([self.upsample(self.lateral(c16)), c8], dim=1))
        return {"p8": self.head8(p8), "p16": self.head16(c16)}
