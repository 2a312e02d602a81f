"""Detection data with boxes known: 1-4 real Fashion-MNIST items placed on a larger canvas.

Each canvas is drawn from its own generator, seeded by ``seed + index``, so item ``i`` is the same in
every process (a Ray worker rebuilds the set and sees the same images) and nothing is held in memory
but the 28x28 source items. An item is scaled 0.75-1.25x, placed where it covers at most
``max_overlap`` of another item's box (and vice versa), and drawn with ``max`` so overlaps stay
visible; its box is tight around its visible pixels, ``xyxy`` in pixels.

Source items: canvases of ``train`` and ``val`` take items from Fashion-MNIST's training set, split
as :func:`nas_prune.data.load_dataset` splits it (10% held out with seed 0, so validation canvases
show items the training canvases never do); ``test`` canvases take items from t10k.

Example:
    >>> data = CanvasSplit("train", 100, canvas=64)()
    >>> image, target = data[0]          # [1, 64, 64] float, {"boxes": [n, 4], "labels": [n]}
    >>> images, targets = collate([data[0], data[1]])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nas_prune.data import DataSplits, load_dataset

__all__ = ["MEAN", "STD", "SPLIT_SEEDS", "CanvasSplit", "FashionCanvas", "collate", "source_items"]

MEAN, STD = 0.135, 0.275
"""Normalisation of the canvases (about their pixel mean and std: mostly black background)."""

SPLIT_SEEDS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
"""Base seeds of the canvases per split, far apart so no two splits share a canvas generator."""

PIXEL_ON = 10
"""A pixel belongs to an item's box when brighter than this (of 255): ignores faint halo values."""


def source_items(split: str, data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST items of ``split`` as ``(uint8 [N, 28, 28], int64 [N])``: ``train`` and ``val``
    are load_dataset's fixed carve-out of the training set (10%, seed 0), ``test`` is t10k."""
    part = getattr(_fashion_mnist(data_dir), split)
    return part.x[:, 0], part.y


@functools.lru_cache(maxsize=2)
def _fashion_mnist(data_dir: str | None) -> DataSplits:
    """Fashion-MNIST's splits, read once per process."""
    return load_dataset("fashion-mnist", data_dir, val_fraction=0.1, seed=0)


class FashionCanvas(Dataset):
    """``count`` canvases of 1-4 Fashion-MNIST items with their boxes and labels.

    Args:
        items, labels: the source items (uint8 ``[N, 28, 28]``) and their classes.
        count: canvases in the set.
        canvas: side of the square canvas in pixels.
        seed: canvas ``i`` is drawn from ``numpy.random.default_rng(seed + i)``.
        max_items: at most this many items per canvas (at least 1).
        scale: range of the item's random scale.
        max_overlap: the largest share of an item's box another item may cover.

    Items are ``(image float [1, canvas, canvas] normalised with MEAN/STD, {"boxes": float [n, 4] xyxy
    pixels, "labels": int64 [n]})``.
    """

    def __init__(
        self,
        items: torch.Tensor,
        labels: torch.Tensor,
        count: int,
        canvas: int = 64,
        seed: int = 0,
        max_items: int = 4,
        scale: tuple[float, float] = (0.75, 1.25),
        max_overlap: float = 0.3,
    ):
        if canvas < 28 * scale[1] + 1:
            raise ValueError(f"a canvas of {canvas} px cannot hold an item scaled {scale[1]}x")
        self.items, self.labels = items, labels
        self.count, self.canvas, self.seed = int(count), int(canvas), int(seed)
        self.max_items, self.scale, self.max_overlap = int(max_items), scale, float(max_overlap)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not 0 <= index < self.count:
            raise IndexError(f"canvas {index} of {self.count}")
        rng = np.random.default_rng(self.seed + index)
        image = torch.zeros(self.canvas, self.canvas)
        boxes: list[list[float]] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(1, self.max_items + 1))):
            source = int(rng.integers(len(self.items)))
            item = self._scaled(self.items[source], float(rng.uniform(*self.scale)))
            placed = self._place(item, boxes, rng)
            if placed is None:  # no room left: fewer items on this canvas
                continue
            (top, left), box = placed
            h, w = item.shape
            window = image[top : top + h, left : left + w]
            torch.maximum(window, item, out=window)
            boxes.append(box)
            labels.append(int(self.labels[source]))
        image = (image / 255.0 - MEAN) / STD
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        return image.unsqueeze(0), target

    @staticmethod
    def _scaled(item: torch.Tensor, factor: float) -> torch.Tensor:
        """The 28x28 item resized by ``factor`` (bilinear), trimmed to its visible pixels."""
        side = max(8, round(28 * factor))
        out = F.interpolate(item[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)
        out = out[0, 0].clamp(0, 255)
        on = out > PIXEL_ON
        rows, cols = on.any(1).nonzero().flatten(), on.any(0).nonzero().flatten()
        if len(rows) == 0:  # an all-dark item (none in Fashion-MNIST): keep it whole
            return out
        return out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    def _place(
        self, item: torch.Tensor, boxes: list[list[float]], rng: np.random.Generator, tries: int = 20
    ) -> tuple[tuple[int, int], list[float]] | None:
        """A random top-left corner where ``item`` overlaps no placed box by more than ``max_overlap``
        of either box, with its tight box; None after ``tries`` misses."""
        h, w = item.shape
        for _ in range(tries):
            top = int(rng.integers(0, self.canvas - h + 1))
            left = int(rng.integers(0, self.canvas - w + 1))
            box = [float(left), float(top), float(left + w), float(top + h)]
            if all(_overlap(box, other) <= self.max_overlap for other in boxes):
                return (top, left), box
        return None


def _overlap(a: list[float], b: list[float]) -> float:
    """The larger of the two shares of each box that their intersection covers."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / smaller


def collate(batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, list[dict]]:
    """Images stacked ``[B, 1, H, W]``; targets kept as a list (their box counts differ)."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


@dataclass(frozen=True)
class CanvasSplit:
    """A zero-argument factory of one split's :class:`FashionCanvas`: a task holding these pickles in
    a few bytes, and each process (e.g. a Ray worker) builds the set from the files itself."""

    split: str
    count: int
    canvas: int = 64
    data_dir: str | None = None

    def __call__(self) -> FashionCanvas:
        items, labels = source_items(self.split, self.data_dir)
        return FashionCanvas(items, labels, self.count, self.canvas, seed=SPLIT_SEEDS[self.split])

    def describe(self) -> dict[str, Any]:
        """Plain data for reports."""
        return {"split": self.split, "count": self.count, "canvas": self.canvas}
