"""Datasets as in-memory tensors: readers, a fixed train/val/test split and a batched loader.

Supported names (see :func:`dataset_names`): ``fashion-mnist`` (the default), ``mnist`` (idx files,
gzipped or raw), ``cifar10`` and ``cifar100`` (the python pickle batches), ``synthetic`` (a tiny
generated set for tests and smoke runs) and ``"pkg.module:factory"``: a callable returning
``(train, test)``, each an ``(x, y)`` pair of tensors/arrays or a map-style ``Dataset``.

Images stay ``uint8`` in memory (N x C x H x W); :class:`TensorLoader` converts, augments and
normalises one batch at a time. The validation split is a fixed-seed random carve-out of the training
set; the test set is never split.

Files are searched, in order, in ``data_dir``, ``$NAS_PRUNE_DATA``, ``./data`` and
``/usr/share/datasets``, each directly and in a ``<name>`` subfolder (plus the usual archive layouts
such as ``cifar-10-batches-py/`` or torchvision's ``FashionMNIST/raw/``).

Example:
    >>> data = load_dataset("fashion-mnist", subset=2000)
    >>> for x, y in data.loader("train", 128, train=True):
    ...     pass
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import shutil
import tarfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nas_prune.atomic import atomic_open
from nas_prune.errors import NasPruneError
from nas_prune.factory import import_factory

__all__ = [
    "TensorSplit",
    "DataSplits",
    "TensorLoader",
    "dataset_names",
    "check_dataset_name",
    "load_dataset",
    "make_loader",
    "make_synthetic",
    "read_idx",
    "read_cifar_batches",
    "SYSTEM_DATA_DIR",
    "DOWNLOAD_TIMEOUT_S",
]

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
"""Last place searched; Debian's ``dataset-fashion-mnist`` package installs there."""

DOWNLOAD_TIMEOUT_S = 15.0
"""Socket timeout for each download attempt (seconds)."""


# ---------------------------------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Registry of file-based datasets
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Where a file-based dataset lives and how it is read."""

    kind: str  # "idx" or "cifar"
    files: tuple[str, ...]  # file names that must all be present (idx: without ".gz")
    subdirs: tuple[str, ...]  # usual archive layouts below a root or a <name> folder
    urls: tuple[str, ...]  # idx: base URLs (mirrors); cifar: the tar.gz
    hflip: bool
    install_hint: str
    label_key: str = "labels"
    archive_dir: str = ""


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_SOURCES: dict[str, _Source] = {
    "fashion-mnist": _Source(
        kind="idx",
        files=_IDX_FILES,
        subdirs=("FashionMNIST/raw",),
        urls=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        hflip=True,
        install_hint="`apt-get install dataset-fashion-mnist`",
    ),
    "mnist": _Source(
        kind="idx",
        files=_IDX_FILES,
        subdirs=("MNIST/raw",),
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        hflip=False,
        install_hint="the four idx .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "cifar10": _Source(
        kind="cifar",
        files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
        subdirs=("cifar-10-batches-py",),
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        hflip=True,
        install_hint="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpacked)",
        archive_dir="cifar-10-batches-py",
    ),
    "cifar100": _Source(
        kind="cifar",
        files=("train", "test"),
        subdirs=("cifar-100-python",),
        urls=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        hflip=True,
        install_hint="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (unpacked)",
        label_key="fine_labels",
        archive_dir="cifar-100-python",
    ),
}

_ALIASES = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}


def dataset_names() -> list[str]:
    """Names :func:`load_dataset` accepts besides ``"pkg.module:factory"``."""
    return [*_SOURCES, "synthetic"]


def _choices() -> str:
    return ", ".join(dataset_names()) + " or pkg.module:factory"


def check_dataset_name(name: str) -> str:
    """Return the canonical dataset name (``"FashionMNIST"`` -> ``"fashion-mnist"``).

    A ``"pkg.module:factory"`` is returned unchanged (it is imported only when loading).

    Raises:
        NasPruneError: The name is neither a known dataset nor of the form ``pkg.module:factory``.
    """
    if ":" in name:
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise NasPruneError(
                f"dataset {name!r} is not of the form pkg.module:factory; choose {_choices()}"
            )
        return name
    key = name.lower().replace("-", "").replace("_", "")
    for canonical in dataset_names():
        if key == canonical.replace("-", ""):
            return canonical
    if key in _ALIASES:
        return _ALIASES[key]
    raise NasPruneError(f"unknown dataset {name!r}; choose {_choices()}")


# ---------------------------------------------------------------------------------------------------
# File readers (cached in-process: repeated loads of the same files are cheap)
# ---------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an idx file (``*-ubyte`` or ``*-ubyte.gz``) into a tensor of its stored dtype and shape.

    Raises:
        NasPruneError: The file is not a valid idx file.
    """
    return _read_idx_cached(*_file_key(Path(path))).clone()


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> torch.Tensor:
    del mtime_ns, size  # part of the cache key only: a rewritten file is read again
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise NasPruneError(f"cannot read idx file {path} ({type(err).__name__}: {err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise NasPruneError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise NasPruneError(f"idx file {path} has {len(raw)} bytes, its header promises {expected}")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def read_cifar_batches(paths: Sequence[str | os.PathLike], label_key: str = "labels"):
    """Read CIFAR python pickle batches into ``(x uint8 N x 3 x 32 x 32, y int64)``.

    ``label_key`` is ``"labels"`` for CIFAR-10 and ``"fine_labels"`` for CIFAR-100. The files are
    unpickled: read only files you trust (the official archives).
    """
    x, y = _read_cifar_cached(tuple(_file_key(Path(p)) for p in paths), label_key)
    return x.clone(), y.clone()


@functools.lru_cache(maxsize=4)
def _read_cifar_cached(keys: tuple[tuple[str, int, int], ...], label_key: str):
    xs, ys = [], []
    for path, _, _ in keys:
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = batch.get(b"data", batch.get("data"))
            labels = batch.get(label_key.encode(), batch.get(label_key))
        except Exception as err:  # unpickling errors come in many types
            raise NasPruneError(f"cannot read CIFAR batch {path} ({type(err).__name__})") from err
        if data is None or labels is None:
            raise NasPruneError(f"CIFAR batch {path} has no 'data' or {label_key!r} entry")
        xs.append(torch.as_tensor(np.asarray(data, dtype=np.uint8)).reshape(-1, 3, 32, 32))
        ys.append(torch.as_tensor(np.asarray(labels, dtype=np.int64)))
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------------------------------------------
# Finding (and, if allowed, downloading) the files
# ---------------------------------------------------------------------------------------------------


def _roots(data_dir: str | os.PathLike | None) -> list[Path]:
    roots = [Path(data_dir)] if data_dir else []
    if os.environ.get("NAS_PRUNE_DATA"):
        roots.append(Path(os.environ["NAS_PRUNE_DATA"]))
    roots += [Path("data"), SYSTEM_DATA_DIR]
    return roots


def _candidate_dirs(name: str, roots: list[Path]) -> Iterator[Path]:
    """For each root: ``root/<name>`` (and archive layouts below it), then the root itself."""
    subdirs = _SOURCES[name].subdirs
    for root in roots:
        for base in (root / name, root):
            yield from (base / sub for sub in subdirs)
            yield base


def _files_in(name: str, folder: Path) -> list[Path] | None:
    """The dataset's files in ``folder`` (idx files raw or gzipped), or None if any is missing."""
    source = _SOURCES[name]
    found = []
    for file in source.files:
        options = [folder / file, folder / f"{file}.gz"] if source.kind == "idx" else [folder / file]
        hit = next((p for p in options if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _find(name: str, roots: list[Path]) -> list[Path] | None:
    for folder in _candidate_dirs(name, roots):
        files = _files_in(name, folder)
        if files is not None:
            return files
    return None


def _download_file(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically: a killed download never leaves half a file."""
    with atomic_open(dest, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        shutil.copyfileobj(response, out)


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK)


def _download(name: str, data_dir: str | os.PathLike | None) -> Path:
    """Fetch the dataset into ``<data_dir or ./data>/<name>``; return that folder."""
    source = _SOURCES[name]
    bases = [Path(data_dir)] if data_dir else []
    bases.append(Path("data"))
    base = next((b for b in bases if _writable(b)), None)
    if base is None:
        raise OSError(f"none of {', '.join(map(str, bases))} is writable")
    target = base / name
    new_dirs = [d for d in (target, base) if not d.exists()]
    try:
        _fetch_into(source, target)
    except BaseException:
        for folder in new_dirs:  # leave no empty folders behind after a failed download
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return target


def _fetch_into(source: _Source, target: Path) -> None:
    if source.kind == "idx":
        for file in source.files:
            dest = target / f"{file}.gz"
            if dest.is_file():
                continue
            errors = []
            for mirror in source.urls:
                try:
                    _download_file(mirror + f"{file}.gz", dest)
                    break
                except OSError as err:
                    errors.append(err)
            else:
                raise errors[0]
    else:
        archive = target / Path(source.urls[0]).name
        _download_file(source.urls[0], archive)
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(target)
        archive.unlink()


def _locate(name: str, data_dir: str | os.PathLike | None, download: bool) -> list[Path]:
    """Find the dataset's files, downloading them if allowed; one-sentence error otherwise."""
    roots = _roots(data_dir)
    files = _find(name, roots)
    if files is not None:
        return files
    problem = "downloading is off"
    if download:
        try:
            target = _download(name, data_dir)
            files = _find(name, [target])
            if files is not None:
                return files
            problem = f"the download into {target} did not produce the expected files"
        except Exception as err:  # network, disk, a corrupt archive: all end in the same advice
            first_line = (str(err).splitlines() or [""])[0]
            problem = f"the download failed ({type(err).__name__}: {first_line})"
    source = _SOURCES[name]
    searched = ", ".join(str(r) if r.is_absolute() else f"./{r}" for r in roots)
    raise NasPruneError(
        f"{name} data not found in {searched} (directly or in a '{name}' subfolder) and {problem}; "
        f"get it with {source.install_hint}, or put the files in a directory and pass --data-dir DIR"
    )


# ---------------------------------------------------------------------------------------------------
# Synthetic data and factories
# ---------------------------------------------------------------------------------------------------


def make_synthetic(
    num_train: int = 512,
    num_test: int = 128,
    num_classes: int = 10,
    shape: Sequence[int] = (1, 28, 28),
    seed: int = 0,
):
    """A deterministic toy set of noisy gratings, learnable by a small CNN within an epoch or two.

    Class ``k`` is a sinusoidal grating whose orientation (``ceil(num_classes / 2)`` choices) and
    period (4 or 8 pixels) depend on ``k``; phase, contrast and noise vary per image. Usable as a
    factory: it returns ``((x_train, y_train), (x_test, y_test))`` with uint8 images.
    """
    gen = torch.Generator().manual_seed(seed)
    channels, height, width = (int(s) for s in shape)
    orientations = max(1, math.ceil(num_classes / 2))

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=gen)]
        angle = (y % orientations).double() * math.pi / orientations
        period = torch.where(y < orientations, 4.0, 8.0).double()
        rows = torch.arange(height, dtype=torch.float64).view(1, -1, 1)
        cols = torch.arange(width, dtype=torch.float64).view(1, 1, -1)
        phase = torch.rand(n, 1, 1, generator=gen, dtype=torch.float64) * 2 * math.pi
        along = cols * angle.cos().view(-1, 1, 1) + rows * angle.sin().view(-1, 1, 1)
        wave = torch.sin(2 * math.pi * along / period.view(-1, 1, 1) + phase)
        contrast = 0.25 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float64)
        x = 0.5 + contrast * wave.unsqueeze(1).expand(n, channels, height, width)
        x = x + 0.1 * torch.randn(n, channels, height, width, generator=gen, dtype=torch.float64)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), y.long()

    return images(num_train), images(num_test)


def _as_images(x: Any, where: str) -> torch.Tensor:
    """Images as N x C x H x W, uint8 (kept) or float32; N x H x W gets a channel axis."""
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim == 4 and x.shape[1] > 4 and x.shape[-1] in (1, 3, 4):  # N x H x W x C
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4:
        raise NasPruneError(
            f"{where} images must be N x C x H x W (or N x H x W), got shape {tuple(x.shape)}"
        )
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.is_floating_point():
        return x.float().contiguous()
    if x.dtype != torch.bool and x.numel() and 0 <= int(x.min()) and int(x.max()) <= 255:
        return x.to(torch.uint8).contiguous()
    raise NasPruneError(f"{where} images must be uint8, float, or integers in 0..255; got {x.dtype}")


def _materialise(part: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of tensors/arrays, or a map-style Dataset of ``(image, label)`` items -> tensors."""
    if isinstance(part, (tuple, list)) and len(part) == 2 and not isinstance(part[0], (tuple, list)):
        x, y = part
    elif hasattr(part, "__getitem__") and hasattr(part, "__len__"):
        items = [part[i] for i in range(len(part))]
        if not items:
            raise NasPruneError(f"{where} dataset is empty")
        x = torch.stack([torch.as_tensor(np.asarray(item[0])) for item in items])
        y = [int(item[1]) for item in items]
    else:
        raise NasPruneError(f"{where} must be an (x, y) pair or a Dataset, got {type(part).__name__}")
    x = _as_images(x, where)
    y = torch.as_tensor(np.asarray(y)).reshape(-1).long()
    if len(x) != len(y):
        raise NasPruneError(f"{where} has {len(x)} images but {len(y)} labels")
    return x, y


def _from_factory(path: str):
    result = import_factory(path, "dataset")()
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise NasPruneError(
            f"dataset factory {path!r} must return (train, test), got {type(result).__name__}"
        )
    return (*_materialise(result[0], f"{path} train"), *_materialise(result[1], f"{path} test"))


# ---------------------------------------------------------------------------------------------------
# load_dataset
# ---------------------------------------------------------------------------------------------------


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
        data_dir: Searched first for the files (see the module docstring for the full order).
        val_fraction: Share of the (subset of the) training set held out for validation, in [0, 1).
        seed: Seed of the split and of the subset draw; training seeds are separate.
        download: Fetch missing files from the official URLs into ``data_dir`` or ``./data``.
        subset: Keep a fixed random ``subset`` of the training set (before the validation
            carve-out) and at most ``subset`` test images; for tests and CPU benchmarks.

    Raises:
        NasPruneError: Unknown name, missing data, unreadable files or a bad argument.
    """
    name = check_dataset_name(name)
    if not 0.0 <= val_fraction < 1.0:
        raise NasPruneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if subset is not None and subset < 1:
        raise NasPruneError(f"subset must be a positive number of images, got {subset}")

    crop_padding, hflip, source = None, False, ""
    if name == "synthetic":
        train_x, train_y, test_x, test_y = (t for part in make_synthetic() for t in part)
        source = "generated"
    elif ":" in name:
        train_x, train_y, test_x, test_y = _from_factory(name)
        source = name
    else:
        files = _locate(name, data_dir, download)
        source, hflip = str(files[0].parent), _SOURCES[name].hflip
        if _SOURCES[name].kind == "idx":
            train_x, train_y, test_x, test_y = (_read_idx_cached(*_file_key(f)) for f in files)
            train_x, test_x = train_x.unsqueeze(1), test_x.unsqueeze(1)
            train_y, test_y = train_y.long(), test_y.long()
        else:
            label_key = _SOURCES[name].label_key
            train_x, train_y = _read_cifar_cached(tuple(_file_key(f) for f in files[:-1]), label_key)
            test_x, test_y = _read_cifar_cached((_file_key(files[-1]),), label_key)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise NasPruneError(
            f"{name}: train images are {tuple(train_x.shape[1:])} but test images {tuple(test_x.shape[1:])}"
        )

    # Fixed-seed split: an optional subset of the training set, then the validation carve-out.
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_y), generator=gen)
    if subset is not None:
        order = order[:subset]
    n_val = round(len(order) * val_fraction)
    if len(order) - n_val < 1:
        raise NasPruneError(f"{name}: no training images left after holding out {n_val} for validation")
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    test_idx = torch.arange(len(test_y))
    if subset is not None and subset < len(test_y):
        test_idx = torch.randperm(len(test_y), generator=gen)[:subset].sort().values

    def take(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> TensorSplit:
        return TensorSplit(x[idx], y[idx], idx)  # indexing copies: the cached arrays stay untouched

    train = take(train_x, train_y, train_idx)
    mean, std = _channel_stats(train.x)
    height, width = int(train_x.shape[2]), int(train_x.shape[3])
    if crop_padding is None:
        crop_padding = 2 if max(height, width) <= 28 else 4
    num_classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
    return DataSplits(
        name=name,
        train=train,
        val=take(train_x, train_y, val_idx),
        test=take(test_x, test_y, test_idx),
        num_classes=num_classes,
        in_channels=int(train_x.shape[1]),
        input_size=(height, width),
        mean=mean,
        std=std,
        crop_padding=crop_padding,
        hflip=hflip,
        source=source,
    )


# ---------------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------------


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
    """Build a :class:`TensorLoader` (see there). ``crop_padding`` defaults to 2 px for images up to
    28 x 28 and 4 px for larger ones; prefer :meth:`DataSplits.loader`, which knows the dataset's
    augmentation (no flips for MNIST and synthetic data)."""
    if crop_padding is None:
        crop_padding = 2 if max(split.x.shape[2], split.x.shape[3]) <= 28 else 4
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
