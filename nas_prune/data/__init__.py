"""Datasets as in-memory tensors: readers, a fixed train/val/test split and a batched loader.

Supported names (see :func:`dataset_names`): ``fashion-mnist`` (the default), ``mnist`` (idx files,
gzipped or raw), ``cifar10`` and ``cifar100`` (the python pickle batches), ``synthetic`` (a tiny
generated set for tests and smoke runs) and ``"pkg.module:factory"``: a callable returning
``(train, test)``, each an ``(x, y)`` pair of tensors/arrays or a map-style ``Dataset``. A
class-per-folder image tree, ``folder:PATH``, is not loaded into memory: ``folder`` streams it as a task.

Modules, in reading order:

- ``sources``: the dataset names and where each file-based set lives;
- ``files``: finding the files on disk (``data_dir``, ``$NAS_PRUNE_DATA``, ``./data``,
  ``/usr/share/datasets``) and downloading them;
- ``readers``: idx files, CIFAR pickles, synthetic gratings and a user's factory -> tensors;
- ``loader``: one in-memory split and the batched, augmenting :class:`TensorLoader`;
- ``splits``: :func:`load_dataset`, which ties them together into :class:`DataSplits`;
- ``folder``: ``folder:PATH``, a class-per-folder image tree read with Pillow item by item, as a
  :class:`~nas_prune.task.ClassificationTask` (imported on use: it depends on the task package).

Example:
    >>> data = load_dataset("fashion-mnist", subset=2000)
    >>> for x, y in data.loader("train", 128, train=True):
    ...     pass
"""

from .loader import TensorLoader, TensorSplit, make_loader
from .readers import make_synthetic, read_cifar_batches, read_idx
from .sources import check_dataset_name, dataset_names
from .splits import DataSplits, load_dataset

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
]
