"""A tiny non-classification task for the tests: a two-head regressor with a dict output.

``two_head_net`` predicts a heat map of where an image is bright (a 1x1-conv head) and its mean
brightness (a linear head) and returns ``{"heat": ..., "level": ...}``; the score is the negative mean
squared error (higher is better), named ``neg_mse``. The factories below are what ``--task`` and
``--model`` import; the broken variants are the bad inputs a user can give.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from nas_prune.task import OutputMatching, Task

SIZE = 12


class TwoHeadNet(nn.Module):
    """conv-BN-ReLU x 3 trunk, then a heat-map head (1x1 conv) and a level head (pool + linear)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.body = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        )  # fmt: skip
        self.heat = nn.Conv2d(width, 1, 1)
        self.level = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(self.stem(x))
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)
        return {"heat": self.heat(features), "level": self.level(pooled).squeeze(1)}


def two_head_net() -> TwoHeadNet:
    return TwoHeadNet()


def _split(count: int, seed: int) -> TensorDataset:
    """Images with one bright square each; targets: the square's mask and the image's mean."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(count, 1, SIZE, SIZE, generator=gen)
    heat = torch.zeros(count, 1, SIZE, SIZE)
    corners = torch.randint(0, SIZE - 4, (count, 2), generator=gen)
    for i, (r, c) in enumerate(corners.tolist()):
        images[i, :, r : r + 4, c : c + 4] += 1.0
        heat[i, :, r : r + 4, c : c + 4] = 1.0
    return TensorDataset(images, heat, images.mean(dim=(1, 2, 3)))


def regression_step(model: nn.Module, batch) -> torch.Tensor:
    """Mean squared error of both heads."""
    x, heat, level = batch
    out = model(x)
    return F.mse_loss(out["heat"], heat) + F.mse_loss(out["level"], level)


def neg_mse(model: nn.Module, batches) -> float:
    """Minus the mean squared error of both heads over the batches (higher is better)."""
    total, count = 0.0, 0
    for x, heat, level in batches:
        out = model(x)
        total += float(F.mse_loss(out["heat"], heat, reduction="sum")) / heat[0].numel()
        total += float(F.mse_loss(out["level"], level, reduction="sum"))
        count += len(x)
    return -total / max(count, 1)


def regression_task(**changes) -> Task:
    """The task: 160 training images (16 of them carved out for validation), 48 test images."""
    task = Task(
        train=_split(160, 0), test=_split(48, 1), training_step=regression_step, score=neg_mse,
        score_name="neg_mse", example_inputs=torch.zeros(2, 1, SIZE, SIZE), distill_loss=OutputMatching(),
        name="regression",
    )  # fmt: skip
    return dataclasses.replace(task, **changes) if changes else task


# -- bad inputs --------------------------------------------------------------------------------------


def not_a_task() -> dict:
    return {"train": "this is not a Task"}


def vector_loss_task() -> Task:
    return regression_task(training_step=lambda model, batch: model(batch[0])["level"])


def nan_loss_task() -> Task:
    return regression_task(training_step=lambda model, batch: regression_step(model, batch) * float("nan"))


def raising_score_task() -> Task:
    def score(model, batches):
        raise RuntimeError("the metric library is not installed")

    return regression_task(score=score)


def text_score_task() -> Task:
    return regression_task(score=lambda model, batches: "high")


def wrong_batch_task() -> Task:
    """Batches of 3-channel images: the 1-channel model cannot take them."""
    images = torch.randn(32, 3, SIZE, SIZE)
    data = TensorDataset(images, torch.zeros(32, 1, SIZE, SIZE), torch.zeros(32))
    return regression_task(train=data)


def bad_example_task() -> Task:
    return regression_task(example_inputs=torch.zeros(2, 5, SIZE, SIZE))


def narrow_fails_task() -> Task:
    """A score that raises for narrow models only: it shows during the ladder, not before."""

    def score(model, batches):
        if sum(p.numel() for p in model.parameters()) < 7000:
            raise ValueError("too few parameters for this metric")
        return neg_mse(model, batches)

    return regression_task(score=score)
