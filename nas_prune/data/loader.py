"""One in-memory split and the batched loader over it.

Images stay ``uint8`` in memory (N x C x H x W); :class:`TensorLoader` converts, augments (random
crop, horizontal flip) and normalises one batch at a time, on the device the split was moved to.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True, eq=False)  # eq=False: compare by identity, not tensor by tensor
class TensorSplit:
    """One split: images ``x`` (N x C x H x W, uint8 or float32) and labels ``y`` (int64).

    ``indices`` are the rows of the source set (the full training or test set) this split holds.
    """

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)


def default_crop_padding(height: int, width: int) -> int:
    """Zero padding of the random crop: 2 px for images up to 28 x 28, 4 px for larger ones."""
    return 2 if max(height, width) <= 28 else 4


@dataclass
class TensorLoader:
    """Iterates ``(x, y)`` batches of an in-memory split: x float32 normalised, y int64.

    With ``train=True`` each pass draws a new order from a generator seeded once with ``seed`` (so the
    sequence of epochs is reproducible), and with ``augment`` applies a random crop with
    ``crop_padding`` zero pixels and (if ``hflip``) a random horizontal flip, batched on tensors.
    The split is moved to ``device`` once; batches are built there.
    """

    split: TensorSplit
    batch_size: int
    train: bool
    mean: Sequence[float]
    std: Sequence[float]
    augment: bool = True
    seed: int = 0
    device: str | torch.device = "cpu"
    drop_last: bool = False
    crop_padding: int = 2
    hflip: bool = True
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.device = torch.device(self.device)
        self._x = self.split.x.to(self.device)
        self._y = self.split.y.to(self.device)
        self._scale = 255.0 if self._x.dtype == torch.uint8 else 1.0
        stat = {"device": self.device, "dtype": torch.float32}
        self._mean = torch.as_tensor(self.mean, **stat).view(1, -1, 1, 1)
        self._std = torch.as_tensor(self.std, **stat).view(1, -1, 1, 1)
        self._gen = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        n = len(self._y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self._y)
        order = torch.randperm(n, generator=self._gen) if self.train else torch.arange(n)
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self._x[idx]
            if self.train and self.augment:
                x = self._augment(x)
            x = (x.float() / self._scale - self._mean) / self._std
            yield x, self._y[idx]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop after zero padding, then random horizontal flip; one draw per image."""
        b, c, h, w = x.shape
        p = self.crop_padding
        if p > 0:
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=self._gen).to(self.device)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=self._gen).to(self.device)
            rows = (dy[:, None] + torch.arange(h, device=self.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=self.device))[:, None, None, :]
            batch = torch.arange(b, device=self.device)[:, None, None, None]
            chans = torch.arange(c, device=self.device)[None, :, None, None]
            x = padded[batch, chans, rows, cols]
        if self.hflip:
            flip = (torch.rand(b, generator=self._gen) < 0.5).to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


def make_loader(
    split: TensorSplit,
    batch_size: int,
    *,
    train: bool,
    augment: bool = True,
    seed: int = 0,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    crop_padding: int | None = None,
    hflip: bool = True,
) -> TensorLoader:
    """Build a :class:`TensorLoader` (see there). ``crop_padding`` defaults to
    :func:`default_crop_padding`; prefer :meth:`~nas_prune.data.DataSplits.loader`, which knows the
    dataset's augmentation (no flips for MNIST and synthetic data)."""
    if crop_padding is None:
        crop_padding = default_crop_padding(split.x.shape[2], split.x.shape[3])
    return TensorLoader(
        split=split,
        batch_size=batch_size,
        train=train,
        mean=mean,
        std=std,
        augment=augment,
        seed=seed,
        device=device,
        drop_last=drop_last,
        crop_padding=crop_padding,
        hflip=hflip,
    )
