"""Readers that turn a dataset into ``(x, y)`` tensors: idx files, CIFAR pickles, synthetic gratings,
and a user's ``pkg.module:factory``.

Images come back as N x C x H x W, ``uint8`` where the source is (idx, CIFAR, synthetic), labels as
``int64``. File reads are cached in-process, keyed on path, mtime and size: repeated loads of the same
files are cheap, a rewritten file is read again.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_prune.errors import NasPruneError
from nas_prune.factory import import_factory

FileKey = tuple[str, int, int]
"""``(resolved path, mtime_ns, size)``: the cache key of one file."""

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def file_key(path: Path) -> FileKey:
    """The cache key of ``path``: a rewritten file gets a new key."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


# ---------------------------------------------------------------------------------------------------
# idx files (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an idx file (``*-ubyte`` or ``*-ubyte.gz``) into a tensor of its stored dtype and shape.

    Raises:
        NasPruneError: The file is not a valid idx file.
    """
    return read_idx_cached(*file_key(Path(path))).clone()


@functools.lru_cache(maxsize=16)
def read_idx_cached(path: str, mtime_ns: int, size: int) -> torch.Tensor:
    """:func:`read_idx` without the defensive copy: callers must not modify the result."""
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


# ---------------------------------------------------------------------------------------------------
# CIFAR python pickle batches
# ---------------------------------------------------------------------------------------------------


def read_cifar_batches(paths: Sequence[str | os.PathLike], label_key: str = "labels"):
    """Read CIFAR python pickle batches into ``(x uint8 N x 3 x 32 x 32, y int64)``.

    ``label_key`` is ``"labels"`` for CIFAR-10 and ``"fine_labels"`` for CIFAR-100. The files are
    unpickled: read only files you trust (the official archives).
    """
    x, y = read_cifar_cached(tuple(file_key(Path(p)) for p in paths), label_key)
    return x.clone(), y.clone()


@functools.lru_cache(maxsize=4)
def read_cifar_cached(keys: tuple[FileKey, ...], label_key: str):
    """:func:`read_cifar_batches` on file keys, without the defensive copy."""
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
# Synthetic data
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


# ---------------------------------------------------------------------------------------------------
# A user's pkg.module:factory
# ---------------------------------------------------------------------------------------------------


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


def read_factory(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Call the ``"pkg.module:factory"`` at ``path``; return ``(train_x, train_y, test_x, test_y)``.

    The factory returns ``(train, test)``, each an ``(x, y)`` pair of tensors/arrays or a map-style
    ``Dataset`` of ``(image, label)`` items.
    """
    result = import_factory(path, "dataset")()
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise NasPruneError(
            f"dataset factory {path!r} must return (train, test), got {type(result).__name__}"
        )
    return (*_materialise(result[0], f"{path} train"), *_materialise(result[1], f"{path} test"))
