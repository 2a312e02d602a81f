"""Checks that data is plain: safe in YAML model specs and in ``torch.load(weights_only=True)`` files."""

from __future__ import annotations

from typing import Any

__all__ = ["check_plain"]

_SCALARS = (str, int, float, bool)


def check_plain(value: Any, where: str, tensors: bool = False) -> None:
    """Raise ``TypeError`` unless ``value`` is plain data.

    Plain: None, exact str/int/float/bool (subclasses such as ``torch.__version__`` do not load with
    ``weights_only``), lists and str-keyed dicts of plain data. With ``tensors=True`` (a checkpoint)
    tensors, tuples and int keys are plain too.
    """
    if value is None or type(value) in _SCALARS:
        return
    if tensors and _is_tensor(value):
        return
    if isinstance(value, list) or (tensors and isinstance(value, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]", tensors)
        return
    if isinstance(value, dict):
        keys = (str, int) if tensors else (str,)
        for key, item in value.items():
            if type(key) not in keys:
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}")
            check_plain(item, f"{where}[{key!r}]", tensors)
        return
    held = "tensors and plain data" if tensors else "plain data"
    raise TypeError(f"{where} is a {type(value).__name__}; it may hold only {held}")


def _is_tensor(value: Any) -> bool:
    import torch  # only checkpoints hold tensors; specs are checked without torch

    return isinstance(value, torch.Tensor)
