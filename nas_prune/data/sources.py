"""The dataset names: where each file-based set lives, how it is read, and name canonicalisation.

``fashion-mnist``, ``mnist`` (idx files) and ``cifar10``/``cifar100`` (python pickle batches) are read
from files; ``synthetic`` is generated; ``"pkg.module:factory"`` names a user's callable;
``folder:PATH`` is a class-per-folder image tree, read as a task (:mod:`nas_prune.data.folder`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nas_prune.errors import NasPruneError


@dataclass(frozen=True)
class FileDataset:
    """Where a file-based dataset lives and how it is read."""

    kind: str  # "idx" or "cifar"
    files: tuple[str, ...]  # file names that must all be present (idx: without ".gz")
    subdirs: tuple[str, ...]  # usual archive layouts below a root or a <name> folder
    urls: tuple[str, ...]  # idx: base URLs (mirrors); cifar: the tar.gz
    hflip: bool
    install_hint: str
    label_key: str = "labels"


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

FILE_DATASETS: dict[str, FileDataset] = {
    "fashion-mnist": FileDataset(
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
    "mnist": FileDataset(
        kind="idx",
        files=_IDX_FILES,
        subdirs=("MNIST/raw",),
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        hflip=False,
        install_hint="the four idx .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "cifar10": FileDataset(
        kind="cifar",
        files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
        subdirs=("cifar-10-batches-py",),
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        hflip=True,
        install_hint="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpacked)",
    ),
    "cifar100": FileDataset(
        kind="cifar",
        files=("train", "test"),
        subdirs=("cifar-100-python",),
        urls=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        hflip=True,
        install_hint="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (unpacked)",
        label_key="fine_labels",
    ),
}
"""File-based datasets by canonical name."""

_ALIASES = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}

FOLDER_PREFIX = "folder:"
"""``folder:PATH``: a class-per-folder image tree, streamed from disk as a task, never loaded whole."""


def dataset_names() -> list[str]:
    """Names :func:`~nas_prune.data.load_dataset` accepts besides ``"pkg.module:factory"``."""
    return [*FILE_DATASETS, "synthetic"]


def _choices() -> str:
    return ", ".join(dataset_names()) + ", folder:PATH or pkg.module:factory"


def check_dataset_name(name: str) -> str:
    """Return the canonical dataset name (``"FashionMNIST"`` -> ``"fashion-mnist"``).

    A ``"pkg.module:factory"`` is returned unchanged (it is imported only when loading), and so is
    ``"folder:PATH"`` (the tree is checked when its task is built, :func:`nas_prune.data.folder.folder_task`).

    Raises:
        NasPruneError: The name is neither a known dataset, nor ``folder:PATH`` with a path, nor of the
            form ``pkg.module:factory``.
    """
    if name.startswith(FOLDER_PREFIX):
        if not name[len(FOLDER_PREFIX) :].strip():
            raise NasPruneError(
                f"dataset {name!r} names no folder: give folder:PATH (a class-per-folder tree)"
            )
        return name
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
