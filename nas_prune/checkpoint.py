"""Model files: training checkpoints (dense weights + spec) and pruned models (weights + widths + spec).

Every file holds only tensors and plain data, so ``torch.load(path, weights_only=True)`` reads it; every
problem reading one (missing, corrupt, foreign, misfitting weights) is one :class:`NasPruneError` line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_torch_save
from .batch import tensors, zeros_batch
from .errors import NasPruneError
from .models import build_from_spec
from .plain import check_plain
from .prune import prune
from .results import parse_widths

__all__ = [
    "checked_widths",
    "CHECKPOINT_SCHEMA_VERSION",
    "example_from_spec",
    "MODEL_SCHEMA_VERSION",
    "load_checkpoint",
    "load_pruned",
    "load_state_dict_into",
    "load_weights",
    "save_checkpoint",
    "save_pruned",
    "settings_mismatch",
]

CHECKPOINT_SCHEMA_VERSION = 1
MODEL_SCHEMA_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: dict[str, Any], **extra: Any) -> Path:
    """Write ``{"schema_version": 1, "state_dict", "spec", **extra}`` to ``path`` atomically.

    ``extra`` must be plain data (numbers, strings, lists, dicts); the file loads with
    ``torch.load(path, weights_only=True)``. Parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"schema_version": CHECKPOINT_SCHEMA_VERSION, "state_dict": state_dict, "spec": spec, **extra}
    check_plain(payload, "checkpoint", tensors=True)
    return atomic_torch_save(payload, path)


def _read(path: str | os.PathLike, what: str, keys: tuple[str, ...], newest: int) -> dict[str, Any]:
    """The dict a nas_prune ``what`` file holds (on the CPU, ``weights_only=True``), checked for ``keys``
    and a ``schema_version`` this version reads (up to ``newest``); every problem is one NasPruneError."""
    path = Path(path)
    if not path.is_file():
        raise NasPruneError(f"{what} {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip, truncated file, pickled objects beyond plain data, ...
        raise NasPruneError(
            f"{what} {path} is unreadable or not a plain-tensor torch file ({type(err).__name__})"
        ) from err
    if not isinstance(content, dict):
        raise NasPruneError(f"{what} {path} is not a nas_prune {what} (it holds a {type(content).__name__})")
    for key in keys:
        if key not in content:
            raise NasPruneError(f"{what} {path} is not a nas_prune {what} (no {key!r})")
    version = content.get("schema_version", newest)
    if not isinstance(version, int) or version > newest:
        raise NasPruneError(
            f"{what} {path} has schema_version {version!r}; this nas_prune reads up to {newest}"
        )
    return content


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (on the CPU, ``weights_only=True``).

    Raises:
        NasPruneError: Missing, unreadable or corrupt file, or a file without ``state_dict``/``spec``.
    """
    ckpt = _read(path, "checkpoint", ("state_dict", "spec"), CHECKPOINT_SCHEMA_VERSION)
    return ckpt


def load_weights(model: nn.Module, state_dict: dict[str, Any], where: str, detail: str = "") -> None:
    """Load ``state_dict`` into ``model`` strictly; the first missing, unexpected or misshapen key is
    one clear :class:`NasPruneError` naming ``where`` (and ``detail``, e.g. the widths)."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            raise NasPruneError(f"{where} does not fit the model: it has no {key!r}")
        got = state_dict[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(tensor.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise NasPruneError(
                f"{where} does not fit the model: {key!r} is {shape} in the file but "
                f"{tuple(tensor.shape)} in the model{detail}"
            )
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise NasPruneError(f"{where} does not fit the model: unexpected key {unexpected[0]!r}")
    model.load_state_dict(state_dict, strict=True)


def load_state_dict_into(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load weights from a nas_prune checkpoint or a plain ``state_dict`` file into ``model``.

    Prefixes added by ``nn.DataParallel`` (``module.``) or ``torch.compile`` (``_orig_mod.``) are
    stripped when every key has them.

    Returns:
        The file's contents (a plain state_dict comes back as ``{"state_dict": ...}``).

    Raises:
        NasPruneError: Unreadable file, or keys or shapes that do not match the model (naming the
            first mismatching key).
    """
    ckpt = _read(path, "checkpoint", (), CHECKPOINT_SCHEMA_VERSION)
    if isinstance(ckpt.get("state_dict"), dict):
        state_dict = ckpt["state_dict"]
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state_dict, ckpt = ckpt, {"state_dict": ckpt}
    else:
        raise NasPruneError(f"{path} holds neither a nas_prune checkpoint nor a state_dict")
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}

    load_weights(model, state_dict, f"checkpoint {path}")
    return ckpt


def save_pruned(
    path: str | os.PathLike,
    model: nn.Module,
    widths: Mapping[str, int],
    spec: Mapping[str, Any],
    importance: str | None = None,
    example_inputs: Any = None,
) -> Path:
    """Write ``{"schema_version": 1, "state_dict", "widths", "spec"[, "importance"]}`` atomically.

    The file holds only tensors and plain data: ``torch.load(path, weights_only=True)`` reads it, and
    :func:`load_pruned` rebuilds the model from it. ``spec`` is ``{"model", "kwargs", "input_shape"}``;
    a model whose forward takes a tuple or a dict of inputs passes ``example_inputs`` (or has them in
    ``spec["example_inputs"]``): they are stored in the spec as zeros of the same structure, shapes and
    dtypes at batch 2, and ``input_shape`` may then be left out.
    """
    example = example_inputs if example_inputs is not None else spec.get("example_inputs")
    saved: dict[str, Any] = {"model": str(spec["model"]), "kwargs": dict(spec.get("kwargs") or {})}
    if spec.get("given"):  # "object": a model given as a Python object, rebuilt only from it
        saved["given"] = str(spec["given"])
    if example is None or spec.get("input_shape") is not None:
        saved["input_shape"] = [int(d) for d in spec["input_shape"]]
    if example is not None:
        saved["example_inputs"] = _stored_example(example)
    payload: dict[str, Any] = {
        "schema_version": MODEL_SCHEMA_VERSION,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "widths": {str(k): int(v) for k, v in widths.items()},
        "spec": saved,
    }
    if importance is not None:
        payload["importance"] = str(importance)
    check_plain(payload, "pruned model", tensors=True)
    return atomic_torch_save(payload, Path(path))


def _stored_example(inputs: Any) -> Any:
    """``inputs`` as a pruned-model file keeps them: zero tensors at batch 2 (dtypes kept) in plain dicts,
    lists and tuples (``weights_only`` loading keeps tuples as tuples; a NamedTuple becomes a tuple)."""
    if isinstance(inputs, torch.Tensor):
        return zeros_batch(inputs, 2)
    if isinstance(inputs, Mapping):
        return {k: _stored_example(v) for k, v in inputs.items()}
    if isinstance(inputs, list):
        return [_stored_example(v) for v in inputs]
    if isinstance(inputs, tuple):
        return tuple(_stored_example(v) for v in inputs)
    return inputs


def example_from_spec(spec: Mapping[str, Any], where: str = "spec") -> Any:
    """A batch of 2 the spec's model takes: its stored ``example_inputs`` (a tensor, a tuple or a dict of
    them), else zeros of ``input_shape``. What a model is rebuilt (pruned to its widths) on.

    Raises:
        NasPruneError: neither valid example inputs nor a valid ``input_shape`` (naming ``where``).
    """
    example = spec.get("example_inputs")
    if example is not None:
        if not tensors(example):
            raise NasPruneError(
                f"{where}: spec's 'example_inputs' hold no tensor (got {type(example).__name__})"
            )
        return zeros_batch(example, 2)
    shape = spec.get("input_shape")
    if (
        not isinstance(shape, (list, tuple))
        or not shape
        or not all(isinstance(d, int) and d > 0 for d in shape)
    ):
        raise NasPruneError(f"{where}: spec has no valid 'input_shape' (got {shape!r})")
    return torch.zeros(2, *shape)


def checked_widths(value: Any, where: str) -> dict[str, int]:
    """``{group: channels}`` parsed from a dict or its JSON text; bad widths are a NasPruneError naming ``where``."""
    try:
        return parse_widths(value)
    except ValueError as err:
        raise NasPruneError(f"{where}: {err}") from err


def _structure(spec: Mapping[str, Any], widths: Mapping[str, int], where: str) -> nn.Module:
    """The dense model of ``spec`` pruned to ``widths`` (fresh weights: only the shapes matter)."""
    example = example_from_spec(spec, where)
    dense = build_from_spec({k: v for k, v in spec.items() if k != "example_inputs"})
    return prune(dense, example, dict(widths), "l1")


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (or ``python -m nas_prune.retrain``), in eval mode.

    The dense model is rebuilt from the spec, pruned to the widths (structure only) and the state_dict
    loaded strictly, so outputs equal the saved model's.

    Raises:
        NasPruneError: missing, unreadable or corrupt file, a dict that is not a pruned model, or
            weights whose keys or shapes do not fit the architecture.
    """
    content = _read(path, "pruned model", ("state_dict", "widths", "spec"), MODEL_SCHEMA_VERSION)
    spec, state_dict = content["spec"], content["state_dict"]
    if not isinstance(spec, dict) or not isinstance(state_dict, dict):
        raise NasPruneError(f"{path} is not a nas_prune pruned model ('spec' or 'state_dict' is not a dict)")
    if spec.get("given") == "object":
        raise NasPruneError(
            f"{path} was pruned from a model given as a Python object ({spec['model']}), which no name "
            "rebuilds: load the export beside it (model.onnx or model.pt2: torch.export.load(...).module()), "
            "or nas_prune.prune(<your model>, example, widths) and load_state_dict"
        )
    model = _structure(spec, checked_widths(content["widths"], str(path)), str(path))
    load_weights(model, state_dict, str(path), detail=f" for widths {content['widths']}")
    return model.eval()


def settings_mismatch(where: Path, what: str, old: Any, new: Mapping[str, Any], remedy: str) -> str:
    """One line saying that ``where`` holds ``what`` made with other settings than ``new`` (up to three
    differences), and ``remedy``: a rerun may continue or reuse earlier work only as it was begun."""
    if not isinstance(old, Mapping):
        return f"{where} holds {what} this version cannot read; {remedy}"
    diff = [k for k in new if old.get(k) != new[k]]
    detail = ", ".join(f"{k} {old.get(k)!r} there vs {new[k]!r} now" for k in diff[:3])
    return f"{where} holds {what} with other settings ({detail}); {remedy}"
