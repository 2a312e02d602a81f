"""Export a trained (pruned) model for deployment and check that the export computes the same outputs.

ONNX is written through ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter,
which needs ``onnx`` and ``onnxscript``) with a dynamic batch axis, as one self-contained file. Without
those packages, or when the ONNX export fails, the model is saved with ``torch.export`` as ``model.pt2``
(load it with ``torch.export.load(path).module()``). TorchScript is deprecated in torch 2.13 and is not
used. Each export is run once more (onnxruntime for ONNX when it is installed, ``torch.export.load`` for
``.pt2``) on batches of 1 and 8 and compared with the PyTorch model.

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


def _check_inputs(example: torch.Tensor) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn((b, *example.shape[1:]), generator=gen, dtype=example.dtype) for b in _CHECK_BATCHES]


def _dynamic_batch() -> tuple[dict[int, Any], ...]:
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> float | None:
    """Write ``path`` (ONNX, single file); return the max abs difference from onnxruntime (None without it)."""
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=_dynamic_batch(),
            input_names=["input"],
            output_names=["logits"],
            verbose=False,
        )
    if importlib.util.find_spec("onnxruntime") is None:
        import onnx

        onnx.checker.check_model(str(path))
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    diff = 0.0
    with torch.inference_mode():
        for x in _check_inputs(example):
            got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
            diff = max(diff, float((got.float() - model(x).float()).abs().max()))
    return diff


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> float:
    """Write ``path`` with ``torch.export``; return the max abs difference of the reloaded program."""
    with _quiet():
        program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
    diff = 0.0
    with torch.inference_mode():
        for x in _check_inputs(example):
            diff = max(diff, float((loaded(x).float() - model(x).float()).abs().max()))
    return diff


def export_model(
    model: nn.Module, example: torch.Tensor, directory: str | os.PathLike, *, name: str = "model"
) -> dict[str, Any]:
    """Export a CPU, eval-mode copy of ``model`` to ``directory/<name>.onnx`` (or ``<name>.pt2``).

    The batch axis is dynamic; ``example`` (a batch of at least 2, e.g. zeros) fixes the rest of the
    input shape. The model itself is not modified. A failing ONNX export falls back to ``torch.export``;
    when that fails too, the error is returned rather than raised, so a finished training is never lost
    to an export problem.

    Returns:
        ``export`` (file name relative to ``directory``, or None), ``export_format`` ("onnx" | "pt2" |
        None), ``export_max_abs_diff`` (max over batches of 1 and 8; None when onnxruntime is absent),
        ``export_verified`` (difference <= :data:`EXPORT_ATOL`; None when unchecked) and
        ``export_error`` (None, or why an exporter failed).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probe = copy.deepcopy(model).cpu().eval()
    example = example.detach().cpu()
    if example.shape[0] < 2:  # torch.export specialises a batch of 1 to a constant
        example = example.expand(2, *example.shape[1:]).contiguous()
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
