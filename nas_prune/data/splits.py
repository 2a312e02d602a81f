"""``load_dataset``: read a dataset, carve a fixed train/val/test split, and describe it for a model.

The validation split is a fixed-seed random carve-out of (an optional fixed-seed subset of) the
training set; the test set is never split, only optionally subsampled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from nas_prune.errors import NasPruneError

from .files import locate
from .loader import TensorLoader, TensorSplit, default_crop_padding, make_loader
from .readers import file_key, make_synthetic, read_cifar_cached, read_factory, read_idx_cached
from .sources import FILE_DATASETS, FOLDER_PREFIX, check_dataset_name


@dataclass(frozen=True, eq=False)  # eq=False: compare by identity, not tensor by tensor
class DataSplits:
    """A dataset ready for training: train/val/test splits plus what a model and loader need.

    ``mean`` and ``std`` are per channel, computed on the train split, on the scale the loader feeds
    the model before normalising (uint8 images are divided by 255 first).
    """

    name: str
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    hflip: bool = False
    source: str = ""

    @property
    def input_shape(self) -> list[int]:
        """One sample's shape ``[C, H, W]`` (as stored in a model spec)."""
        return [self.in_channels, *self.input_size]

    def loader(self, split: str, batch_size: int, train: bool, **kwargs: Any) -> TensorLoader:
        """A :class:`TensorLoader` over ``split`` ("train", "val" or "test") with this set's statistics.

        Keyword arguments go to :func:`make_loader` (``augment``, ``seed``, ``device``, ``drop_last``).
        """
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        kwargs.setdefault("crop_padding", self.crop_padding)
        kwargs.setdefault("hflip", self.hflip)
        return make_loader(
            getattr(self, split), batch_size, train=train, mean=self.mean, std=self.std, **kwargs
        )


class _FullSets(NamedTuple):
    """The whole training and test sets as read, before any split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # the folder read, "generated" or the factory path
    hflip: bool  # whether horizontal flips are a valid augmentation


def _read_full_sets(name: str, data_dir: str | os.PathLike | None, download: bool) -> _FullSets:
    """Read the dataset ``name`` (canonical) whole; file reads come from the readers' cache."""
    if name == "synthetic":
        (train_x, train_y), (test_x, test_y) = make_synthetic()
        return _FullSets(train_x, train_y, test_x, test_y, "generated", False)
    if ":" in name:
        return _FullSets(*read_factory(name), name, False)
    files = locate(name, data_dir, download)
    dataset = FILE_DATASETS[name]
    if dataset.kind == "idx":
        train_x, train_y, test_x, test_y = (read_idx_cached(*file_key(f)) for f in files)
        tensors = (train_x.unsqueeze(1), train_y.long(), test_x.unsqueeze(1), test_y.long())
    else:
        train = read_cifar_cached(tuple(file_key(f) for f in files[:-1]), dataset.label_key)
        test = read_cifar_cached((file_key(files[-1]),), dataset.label_key)
        tensors = (*train, *test)
    return _FullSets(*tensors, str(files[0].parent), dataset.hflip)


def _split_indices(
    name: str, n_train: int, n_test: int, val_fraction: float, subset: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted ``(train, val, test)`` row indices: an optional subset of the training set, then the
    validation carve-out, then (with ``subset``) a test subsample; all from one generator."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_train, generator=gen)
    if subset is not None:
        order = order[:subset]
    n_val = round(len(order) * val_fraction)
    if len(order) - n_val < 1:
        raise NasPruneError(f"{name}: no training images left after holding out {n_val} for validation")
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    test_idx = torch.arange(n_test)
    if subset is not None and subset < n_test:
        test_idx = torch.randperm(n_test, generator=gen)[:subset].sort().values
    return train_idx, val_idx, test_idx


def _take(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> TensorSplit:
    return TensorSplit(x[idx], y[idx], idx)  # indexing copies: the cached arrays stay untouched


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the loader's scale (uint8 / 255), in float64 chunks."""
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in x.split(4096):
        c = chunk.to(torch.float64) / scale
        total += c.sum(dim=(0, 2, 3))
        total_sq += (c * c).sum(dim=(0, 2, 3))
    count = max(1, x.shape[0] * x.shape[2] * x.shape[3])
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = True,
    subset: int | None = None,
) -> DataSplits:
    """Load a dataset and split it into train / val / test.

    Args:
        name: One of :func:`dataset_names` or ``"pkg.module:factory"``.
        data_dir: Searched first for the files (see :mod:`nas_prune.data.files` for the full order).
        val_fraction: Share of the (subset of the) training set held out for validation, in [0, 1).
        seed: Seed of the split and of the subset draw; training seeds are separate.
        download: Fetch missing files from the official URLs into ``data_dir`` or ``./data``.
        subset: Keep a fixed random ``subset`` of the training set (before the validation
            carve-out) and at most ``subset`` test images; for tests and CPU benchmarks.

    Raises:
        NasPruneError: Unknown name, missing data, unreadable files or a bad argument; ``folder:PATH``,
            which is streamed as a task, never read into memory (use :func:`nas_prune.task.resolve_task`).
    """
    name = check_dataset_name(name)
    if name.startswith(FOLDER_PREFIX):
        raise NasPruneError(
            f"dataset {name!r} is an image folder, streamed as a task, not loaded into memory: build it with "
            f"nas_prune.task.resolve_task(dataset={name!r}) (or nas_prune.data.folder.folder_task)"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise NasPruneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if subset is not None and subset < 1:
        raise NasPruneError(f"subset must be a positive number of images, got {subset}")
    full = _read_full_sets(name, data_dir, download)
    if full.train_x.shape[1:] != full.test_x.shape[1:]:
        raise NasPruneError(
            f"{name}: train images are {tuple(full.train_x.shape[1:])} but test images {tuple(full.test_x.shape[1:])}"
        )
    train_idx, val_idx, test_idx = _split_indices(
        name, len(full.train_y), len(full.test_y), val_fraction, subset, seed
    )
    train = _take(full.train_x, full.train_y, train_idx)
    mean, std = _channel_stats(train.x)
    height, width = int(full.train_x.shape[2]), int(full.train_x.shape[3])
    return DataSplits(
        name=name,
        train=train,
        val=_take(full.train_x, full.train_y, val_idx),
        test=_take(full.test_x, full.test_y, test_idx),
        num_classes=int(max(int(full.train_y.max()), int(full.test_y.max()))) + 1,
        in_channels=int(full.train_x.shape[1]),
        input_size=(height, width),
        mean=mean,
        std=std,
        crop_padding=default_crop_padding(height, width),
        hflip=full.hflip,
        source=full.source,
    )
