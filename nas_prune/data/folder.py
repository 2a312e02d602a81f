"""A class-per-folder image tree as a classification task: ``--dataset folder:PATH``.

This is how most users keep their own classification data, so it is read where it lies: the datasets
hold only file paths and labels, and every item is opened with Pillow, converted, resized and
normalised when the :class:`~torch.utils.data.DataLoader` asks for it (nothing is held in memory whole).

Layout: ``PATH/train/<class>/<image>`` with optional ``PATH/val/<class>/...`` and
``PATH/test/<class>/...``, or the class folders directly under ``PATH`` (then that is the training set).
Images are files ending in one of :data:`IMAGE_EXTENSIONS` (any case), in a class folder or below it.

The rules, decided once from the tree (see :func:`folder_task`):

* classes: the sorted names of the training class folders; a ``val``/``test`` class must be one of
  them (classes missing there are fine);
* channels: 1 (Pillow mode ``L``) when every probed image is grayscale, else 3 (``RGB``); the probe is
  the first image of every class folder plus 32 training images drawn with seed 0;
* size: ``size`` if given, else the most common size among the probed training images; other images
  are resized to it (bilinear);
* normalisation: per-channel mean and std of up to 256 training images (drawn with seed 0);
* augmentation (training split only): zero-pad and random crop (4 px, 2 px up to 28 x 28) and a random
  horizontal flip, as :class:`~nas_prune.data.TensorLoader` does, drawn from torch's global generator
  (the DataLoader seeds its workers from the loader's seed);
* without ``val/``, 10% of the training images (``val_fraction``, seed 0) are held out, un-augmented;
  without ``test/``, final reports have no test score.

Example:
    >>> task = folder_task("~/data/flowers")       # or resolve_task(dataset="folder:~/data/flowers")
    >>> x, y = next(iter(task.loader("train", 32, train=True)))
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..task.base import TaskError
from ..task.classification import ClassificationTask
from .loader import default_crop_padding

__all__ = ["IMAGE_EXTENSIONS", "FolderTree", "ImageFolderDataset", "folder_task", "load_image", "scan_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
PROBE_IMAGES = 32  # training images whose headers decide the size and the mode
STATS_IMAGES = 256  # training images the mean and std are computed from
SEED = 0  # the probe, the statistics sample and the validation carve-out
LAYOUT = (
    "expected PATH/train/<class>/<image> (optionally PATH/val/<class>/... and PATH/test/<class>/...) "
    "or PATH/<class>/<image>, images ending in " + ", ".join(IMAGE_EXTENSIONS)
)


@dataclass(frozen=True)
class FolderTree:
    """What :func:`scan_folder` found: the classes and, per split present, image paths and labels."""

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[str]]  # split ("train", "val", "test") -> sorted image paths
    labels: dict[str, list[int]]  # split -> class index of each image


# -- scanning the tree ------------------------------------------------------------------------------


def _split_dirs(root: Path) -> dict[str, Path]:
    """The folder of each split present: ``train/``, ``val/``, ``test/``, or ``root`` itself as train."""
    if not root.exists():
        raise TaskError(f"folder dataset {root} does not exist; {LAYOUT}")
    if not root.is_dir():
        raise TaskError(f"folder dataset {root} is not a directory; {LAYOUT}")
    found = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    if "train" in found:
        return found
    if found:
        raise TaskError(f"folder dataset {root} has {'/ and '.join(found)}/ but no train/ folder; {LAYOUT}")
    return {"train": root}


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _class_images(split_dir: Path) -> dict[str, list[str]]:
    """Class folder name -> its sorted image paths (searched recursively); one-line errors for a folder
    without class folders, without any image, or with an empty class folder."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = any(_is_image(p) for p in split_dir.iterdir())
        where = "images lie directly in" if loose else "no class folders in"
        raise TaskError(f"folder dataset: {where} {split_dir}; {LAYOUT}")
    images = {c: sorted(str(p) for p in (split_dir / c).rglob("*") if _is_image(p)) for c in classes}
    if not any(images.values()):
        raise TaskError(f"folder dataset: no images in the class folders of {split_dir}; {LAYOUT}")
    empty = [c for c in classes if not images[c]]
    if empty:
        raise TaskError(
            f"folder dataset: class folder {split_dir / empty[0]} has no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); every class folder needs at least one"
        )
    return images


def scan_folder(path: str | os.PathLike) -> FolderTree:
    """List the images and labels of a class-per-folder tree (module docstring: the layout).

    Raises:
        TaskError: ``path`` empty, missing or not a directory, no class folders, no images, an empty class
            folder, fewer than two training classes, or a val/test class that train does not have.
    """
    if not str(path).strip():
        raise TaskError(f"folder dataset: no path given (folder:PATH); {LAYOUT}")
    root = Path(path).expanduser()
    dirs = _split_dirs(root)
    per_split = {split: _class_images(folder) for split, folder in dirs.items()}
    classes = tuple(per_split["train"])
    if len(classes) < 2:
        raise TaskError(
            f"folder dataset: {dirs['train']} has one class folder ({classes[0]}); classification needs "
            f"at least two; {LAYOUT}"
        )
    index = {c: i for i, c in enumerate(classes)}
    files, labels = {}, {}
    for split, images in per_split.items():
        unknown = [c for c in images if c not in index]
        if unknown:
            raise TaskError(
                f"folder dataset: {split} class folder(s) {', '.join(unknown)} in {dirs[split]} are not "
                f"training classes ({', '.join(classes)})"
            )
        files[split] = [f for c in images for f in images[c]]
        labels[split] = [index[c] for c in images for _ in images[c]]
    return FolderTree(root, classes, files, labels)


# -- reading images ---------------------------------------------------------------------------------


def _header(path: str) -> tuple[str, tuple[int, int]]:
    """The Pillow mode and (height, width) of ``path``, after a cheap integrity check (``verify``)."""
    try:
        with Image.open(path) as image:
            mode, (width, height) = image.mode, image.size
            image.verify()
    except Exception as err:  # UnidentifiedImageError, truncated or corrupt data, decompression bomb
        raise TaskError(f"folder dataset: cannot read image {path} ({type(err).__name__}: {err})") from err
    return mode, (height, width)


def load_image(path: str, mode: str, size: tuple[int, int]) -> torch.Tensor:
    """The image at ``path`` as a ``uint8`` tensor C x H x W in Pillow ``mode`` (``L`` or ``RGB``),
    resized bilinearly to ``size`` (height, width) if it differs. A file Pillow cannot read is a
    one-line TaskError naming it."""
    height, width = size
    try:
        with Image.open(path) as image:
            image.draft(mode, (width, height))  # JPEG only: decode at a reduced scale >= size (fast)
            image = image.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.array(image, dtype=np.uint8)
    except Exception as err:
        raise TaskError(f"folder dataset: cannot read image {path} ({type(err).__name__}: {err})") from err
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _probe(tree: FolderTree, train_order: Sequence[int]) -> tuple[str, tuple[int, int]]:
    """Check the first image of every class folder and a seed-0 sample of training images; return the
    tree's mode (``L`` if all of them are grayscale, else ``RGB``) and the most common training size."""
    modes, sizes = set(), Counter()
    for split, files in tree.files.items():
        firsts: dict[int, str] = {}
        for label, file in zip(tree.labels[split], files, strict=True):
            firsts.setdefault(label, file)
        picked = list(firsts.values())
        if split == "train":
            picked += [files[i] for i in train_order[:PROBE_IMAGES]]
        for path in picked:
            mode, size = _header(path)
            modes.add(mode)
            if split == "train":
                sizes[size] += 1
    return ("L" if modes <= GRAY_MODES else "RGB"), sizes.most_common(1)[0][0]


def _channel_stats(
    files: Sequence[str], mode: str, size: tuple[int, int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] over ``files`` (as the dataset reads them), in float64."""
    total = total_sq = None
    for path in files:
        x = load_image(path, mode, size).to(torch.float64).div_(255.0)
        s, sq = x.sum(dim=(1, 2)), (x * x).sum(dim=(1, 2))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
    count = len(files) * size[0] * size[1]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


class ImageFolderDataset(Dataset):
    """Images read from files when asked: item ``i`` is ``(x, y)``, x float32 C x H x W normalised with
    ``mean``/``std`` (after scaling to [0, 1]), y an int64 label.

    With ``augment``, each item is zero-padded by ``crop_padding`` and randomly cropped back, then
    flipped horizontally with probability 1/2 (if ``hflip``), drawn from torch's global generator, so
    DataLoader workers (seeded by the loader) and a seeded main process repeat their draws. Holds only
    the paths, labels and settings: cheap to pickle to workers.
    """

    def __init__(
        self,
        files: Sequence[str],
        labels: Sequence[int],
        *,
        mode: str,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        classes: Sequence[str] = (),
        augment: bool = False,
        hflip: bool = True,
        crop_padding: int | None = None,
    ):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files, self.labels, self.classes = list(files), list(labels), tuple(classes)
        self.mode, self.size, self.augment, self.hflip = mode, tuple(size), augment, hflip
        self.crop_padding = default_crop_padding(*self.size) if crop_padding is None else crop_padding
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = load_image(self.files[index], self.mode, self.size).float().div_(255.0)
        if self.augment:
            x = self._augment(x)
        return (x - self.mean) / self.std, torch.tensor(self.labels[index], dtype=torch.int64)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop after zero padding, then random horizontal flip (TensorLoader's, per image)."""
        p = self.crop_padding
        if p > 0:
            height, width = x.shape[1:]
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = F.pad(x, (p, p, p, p))[:, dy : dy + height, dx : dx + width]
        if self.hflip and bool(torch.rand(()) < 0.5):
            x = x.flip(2)
        return x


def _carve(n: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Sorted ``(train, val)`` positions: ``round(n * val_fraction)`` (at least 1) held out, seed 0
    (the rule :class:`~nas_prune.task.Task` applies to any task without a val split)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise TaskError(f"folder dataset: {n} training images are too few to hold out a validation split")
    return sorted(order[n_val:]), sorted(order[:n_val])


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise TaskError(f"folder dataset: size must be a positive int or (height, width), got {size!r}")
    return pair


def folder_task(
    path: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    size: int | Sequence[int] | None = None,
    hflip: bool = True,
    num_workers: int = 0,
) -> ClassificationTask:
    """Classification on a class-per-folder image tree (the module docstring has the layout and rules).

    Scans the tree, checks the first image of every class folder, decides mode and size from a probe
    and computes the normalisation from up to 256 training images: bad input fails here, in one line,
    before any training.

    Args:
        path: the tree's root (``~`` is expanded).
        val_fraction: share of the training images held out for validation (seed 0) when there is no
            ``val/`` folder.
        size: ``(height, width)`` or one int for square images; default: the most common probed size.
        hflip: random horizontal flips in training (off for data where left and right differ, digits).
        num_workers: DataLoader worker processes that read images (0: in the main process).

    Returns:
        A :class:`~nas_prune.task.ClassificationTask` named ``folder-<basename>`` with
        ``model_kwargs={"in_channels": C, "num_classes": K}`` and zeros of shape 2 x C x H x W as
        example inputs; its train, val and test are :class:`ImageFolderDataset` (test None if absent).

    Raises:
        TaskError: see :func:`scan_folder`; also an unreadable image among those checked, a bad ``size``
            or ``val_fraction``, or too few images to hold out a validation split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise TaskError(f"folder dataset: val_fraction must be in (0, 1), got {val_fraction}")
    wanted = _size(size)
    tree = scan_folder(path)
    train_files = tree.files["train"]
    order = torch.randperm(len(train_files), generator=torch.Generator().manual_seed(SEED)).tolist()
    mode, probed = _probe(tree, order)
    size_hw = wanted or probed
    if "val" in tree.files:
        keep, held = list(range(len(train_files))), None
    else:
        keep, held = _carve(len(train_files), val_fraction)
    kept = set(keep)
    sample = [train_files[i] for i in order if i in kept][:STATS_IMAGES]
    mean, std = _channel_stats(sample, mode, size_hw)
    common = {"mode": mode, "size": size_hw, "mean": mean, "std": std, "classes": tree.classes}

    def dataset(split: str, positions: Sequence[int] | None = None, augment: bool = False):
        files, labels = tree.files[split], tree.labels[split]
        if positions is not None:
            files, labels = [files[i] for i in positions], [labels[i] for i in positions]
        return ImageFolderDataset(files, labels, augment=augment, hflip=hflip, **common)

    channels = 1 if mode == "L" else 3
    return ClassificationTask(
        train=dataset("train", keep, augment=True),
        val=dataset("train", held) if held is not None else dataset("val"),
        test=dataset("test") if "test" in tree.files else None,
        val_fraction=val_fraction,
        num_workers=num_workers,
        name=f"folder-{tree.root.resolve().name}",
        model_kwargs={"in_channels": channels, "num_classes": len(tree.classes)},
        example_inputs=torch.zeros(2, channels, *size_hw),
    )
