"""Export a trained (pruned) model for deployment and check that the export computes the same outputs.

ONNX is written through ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter,
which needs ``onnx`` and ``onnxscript``) with a dynamic batch axis, as one self-contained file. Without
those packages, or when the ONNX export fails, the model is saved with ``torch.export`` as ``model.pt2``
(load it with ``torch.export.load(path).module()``). TorchScript is deprecated in torch 2.13 and is not
used. Each export is run once more (onnxruntime for ONNX when it is installed, ``torch.export.load`` for
``.pt2``) on batches of 1 and 8 and compared with the PyTorch model. Inputs and outputs may be a tensor,
a tuple or a dict of tensors (:mod:`nas_prune.batch`).

Example:
    >>> info = export_model(slim, torch.zeros(2, 1, 28, 28), "out/")
    >>> info["export"], info["export_max_abs_diff"]
    ('model.onnx', 3.7e-09)
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .batch import as_call_args, batch_size, call_model, detach_cpu, randomized, resize_batch, tensors

__all__ = ["EXPORT_ATOL", "export_model", "onnx_available"]

EXPORT_ATOL = 1e-4
"""Largest absolute output difference between the export and the PyTorch model still called a match."""

_CHECK_BATCHES = (1, 8)


def onnx_available() -> bool:
    """True when ``onnx`` and ``onnxscript`` (needed by torch's ONNX exporter) can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' deprecation warnings, progress lines and 'torchvision not installed' logs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_inputs(example: Any) -> list[Any]:
    """Random inputs of ``example``'s structure at each check batch (floating values drawn, others kept)."""
    gen = torch.Generator().manual_seed(0)
    return [randomized(resize_batch(example, b), gen) for b in _CHECK_BATCHES]


def _dynamic(inputs: Any, batch: Any) -> Any:
    """``dynamic_shapes`` mirroring ``inputs``: dim 0 of every tensor is the batch, the rest is fixed."""
    if isinstance(inputs, torch.Tensor):
        return {0: batch} if inputs.ndim else None
    if isinstance(inputs, Mapping):
        return {k: _dynamic(v, batch) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(_dynamic(v, batch) for v in inputs)
    return None


def _dynamic_batch(example: Any) -> Any:
    """Per positional input (a tuple) or per keyword input (a dict), as ``torch.export`` takes them."""
    args, kwargs = as_call_args(example)
    batch = torch.export.Dim("batch", min=1, max=65536)
    return _dynamic(kwargs, batch) if kwargs else _dynamic(args, batch)


def _names(obj: Any, single: str, prefix: str) -> list[str]:
    """One name per tensor of ``obj`` in :func:`~nas_prune.batch.tensors` order: ``single`` for a lone
    tensor, else dict keys and ``prefix_<position>`` joined by dots (``boxes``, ``input_0``)."""
    if isinstance(obj, torch.Tensor):
        return [single]

    def paths(value: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        if isinstance(value, torch.Tensor):
            return [path]
        if isinstance(value, Mapping):
            items = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, (tuple, list)):
            items = [(f"{prefix}_{i}" if not path else str(i), v) for i, v in enumerate(value)]
        else:
            return []
        return [p for key, v in items for p in paths(v, (*path, key))]

    return [".".join(p) for p in paths(obj, ())]


def _input_names(example: Any) -> list[str]:
    args, kwargs = as_call_args(example)
    return _names(kwargs if kwargs else (args[0] if len(args) == 1 else args), "input", "input")


def _max_diff(got: Any, want: Any) -> float:
    """Largest absolute difference over every output tensor (a tensor, tuple or dict of them)."""
    got, want = tensors(got), tensors(want)
    if len(got) != len(want):
        raise ValueError(f"the export gives {len(got)} output tensors, the model {len(want)}")
    return max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want, strict=True))


def _export_onnx(model: nn.Module, example: Any, path: Path) -> float | None:
    """Write ``path`` (ONNX, single file); return the max abs difference from onnxruntime (None without it).

    The graph's inputs are the flattened tensors of ``example`` in order, named by :func:`_input_names`.
    """
    args, kwargs = as_call_args(example)
    with torch.no_grad():
        outputs = call_model(model, example)
    names = _input_names(example)
    with _quiet():
        torch.onnx.export(
            model,
            args,
            str(path),
            kwargs=kwargs or None,
            dynamo=True,
            external_data=False,
            dynamic_shapes=_dynamic_batch(example),
            input_names=names,
            output_names=_names(outputs, "logits", "output"),
            verbose=False,
        )
    if importlib.util.find_spec("onnxruntime") is None:
        import onnx

        onnx.checker.check_model(str(path))
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}  # an input the graph does not read is dropped
    diff = 0.0
    with torch.inference_mode():
        for x in _check_inputs(example):
            feed = {n: t.numpy() for n, t in zip(names, tensors(x), strict=True) if n in wanted}
            got = [torch.from_numpy(a) for a in session.run(None, feed)]
            diff = max(diff, _max_diff(got, call_model(model, x)))
    return diff


def _export_pt2(model: nn.Module, example: Any, path: Path) -> float:
    """Write ``path`` with ``torch.export``; return the max abs difference of the reloaded program."""
    args, kwargs = as_call_args(example)
    with _quiet():
        program = torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=_dynamic_batch(example))
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
    diff = 0.0
    with torch.inference_mode():
        for x in _check_inputs(example):
            diff = max(diff, _max_diff(call_model(loaded, x), call_model(model, x)))
    return diff


def export_model(
    model: nn.Module, example: Any, directory: str | os.PathLike, *, name: str = "model"
) -> dict[str, Any]:
    """Export a CPU, eval-mode copy of ``model`` to ``directory/<name>.onnx`` (or ``<name>.pt2``).

    ``example`` is what the model's forward takes: a tensor, a tuple of them (positional inputs) or a
    dict (keyword inputs). The batch axis of every input tensor is dynamic; the example (a batch of at
    least 2, e.g. zeros; a smaller one is repeated) fixes the rest of the shapes. Outputs may be a
    tensor, a tuple or a dict of them: every output tensor is compared. ONNX inputs are the flattened
    input tensors in order, named ``input`` for one tensor, else by their keys (``image``) or positions
    (``input_0``); outputs likewise (``logits``, or keys, or ``output_0``...). The model itself is not
    modified. A failing ONNX export falls back to ``torch.export``; when that fails too, the error is
    returned rather than raised, so a finished training is never lost to an export problem.

    Returns:
        ``export`` (file name relative to ``directory``, or None), ``export_format`` ("onnx" | "pt2" |
        None), ``export_max_abs_diff`` (max over batches of 1 and 8; None when onnxruntime is absent),
        ``export_verified`` (difference <= :data:`EXPORT_ATOL`; None when unchecked) and
        ``export_error`` (None, or why an exporter failed).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probe = copy.deepcopy(model).cpu().eval()
    example = detach_cpu(example)
    if batch_size(example) < 2:  # torch.export specialises a batch of 1 to a constant
        example = resize_batch(example, 2)
    errors = []
    attempts = [("onnx", _export_onnx)] if onnx_available() else []
    attempts.append(("pt2", _export_pt2))
    for fmt, exporter in attempts:
        path = directory / f"{name}.{fmt}"
        try:
            diff = exporter(probe, example, path)
        except Exception as err:  # an unsupported op etc.: try the next format, report the reason
            errors.append(
                f"{fmt}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
            )
            path.unlink(missing_ok=True)
            continue
        return {
            "export": path.name,
            "export_format": fmt,
            "export_max_abs_diff": diff,
            "export_verified": None if diff is None else bool(diff <= EXPORT_ATOL),
            "export_error": "; ".join(errors) or None,
        }
    return {
        "export": None,
        "export_format": None,
        "export_max_abs_diff": None,
        "export_verified": None,
        "export_error": "; ".join(errors),
    }
