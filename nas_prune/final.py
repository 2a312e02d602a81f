"""The final report of a trained pruned model, shared by retrain and the baselines.

The task's test and validation scores (the test split's only use; accuracy for classification), MACs, FLOPs, params, latency at two batch
sizes with the paired dense speed-up, the dense model's same figures, and ``metrics.json``: one record
shape, so retrained architectures and baselines compare column by column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write_text
from .batch import to_device
from .config import device_label
from .cost import count_macs, measure_speedup
from .data import DataSplits
from .task import Task, as_task
from .train import evaluate

__all__ = [
    "METRICS_SCHEMA_VERSION",
    "SPEEDUP_ROUNDS",
    "FinalFigures",
    "cached_accuracy",
    "final_accuracy",
    "final_costs",
    "final_figures",
    "metrics_record",
    "write_metrics",
]

METRICS_SCHEMA_VERSION = 1


def final_accuracy(
    model: nn.Module, data: Task | DataSplits, device: torch.device, batch_size: int
) -> dict[str, float | None]:
    """The task's validation and test scores: the test split's only use, once per model at the very end.

    Classification gives ``test_accuracy``, ``test_loss`` and ``val_accuracy``; another task
    ``test_score`` and ``val_score`` (``test_score`` is None without a test split).
    """
    task = as_task(data)
    key = task.score_key
    model = model.to(device).eval()
    val = evaluate(
        model, task.loader("val", batch_size, train=False, device=device), device=device, task=task
    )
    figures: dict[str, float | None] = {f"test_{key}": None}
    if task.size("test"):
        loader = task.loader("test", batch_size, train=False, device=device)
        test = evaluate(model, loader, device=device, task=task)
        figures = {f"test_{k}": v for k, v in test.items() if k != "samples"}
    return {**figures, f"val_{key}": val[key]}


SPEEDUP_ROUNDS = 5
"""Rounds of dense-then-pruned timings behind every reported speed-up (see :func:`final_costs`)."""


def final_costs(
    dense: nn.Module,
    slim: nn.Module,
    counts: tuple[tuple[int, int], tuple[int, int]],
    example: Any,
    device: torch.device,
    latency_fn: Callable[..., float],
    batch: int,
    large: int,
    rounds: int = SPEEDUP_ROUNDS,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """MACs, FLOPs, params and latency of the dense and the pruned model, and the speed-up.

    Both latencies come from one :func:`~nas_prune.cost.measure_speedup` per batch size: dense and
    pruned timed interleaved for ``rounds`` rounds, each model's latency the median of its rounds, the
    speed-up the median of the rounds' ratios with their range (``_low``/``_high``).

    Args:
        counts: ``(dense, slim)`` ``(macs, params)`` from :func:`count_macs`.
        latency_fn: ``fn(model, example, device=, batch=, **kw) -> ms``.
        batch, large: the two batch sizes (latency, throughput).

    Returns:
        ``(dense figures, slim figures, speed-up figures)``.
    """
    dense, slim = dense.to(device).eval(), slim.to(device).eval()
    example = to_device(example, device)
    small = measure_speedup(dense, slim, example, device, batch, rounds, latency_fn)
    big = measure_speedup(dense, slim, example, device, large, rounds, latency_fn, warmup=3, repeats=20)
    figures = []
    for (macs, params), ms, large_ms in zip(
        counts, (small.dense_ms, small.pruned_ms), (big.dense_ms, big.pruned_ms), strict=True
    ):
        figures.append(
            {
                "macs": int(macs),
                "flops": 2 * int(macs),
                "params": int(params),
                "latency_ms": ms,
                "latency_batch": int(batch),
                "latency_large_ms": large_ms,
                "latency_large_batch": int(large),
                "latency_device": device_label(device),
            }
        )
    speed = {
        "speedup": small.ratio,
        "speedup_low": small.low,
        "speedup_high": small.high,
        "speedup_large": big.ratio,
        "speedup_large_low": big.low,
        "speedup_large_high": big.high,
        "speedup_rounds": int(rounds),
    }
    return figures[0], figures[1], speed


@dataclass(frozen=True)
class FinalFigures:
    """Accuracy and costs of the dense and the pruned model, and the paired speed-ups."""

    dense: dict[str, Any]
    slim: dict[str, Any]
    speed: dict[str, Any]

    @property
    def flops_ratio(self) -> float:
        return self.slim["flops"] / self.dense["flops"]


def final_figures(
    dense: nn.Module,
    slim: nn.Module,
    data: Task | DataSplits,
    example: Any,
    device: torch.device,
    latency_fn: Callable[..., float],
    batch: int,
    large: int,
    batch_size: int,
    dense_accuracy: Mapping[str, float] | None = None,
) -> FinalFigures:
    """Costs (:func:`final_costs`) and accuracy (:func:`final_accuracy`) of both models; pass
    ``dense_accuracy`` when it is already known (:func:`cached_accuracy`)."""
    example = to_device(example, device)
    dense, slim = dense.to(device).eval(), slim.to(device).eval()
    counts = (count_macs(dense, example), count_macs(slim, example))
    dense_costs, slim_costs, speed = final_costs(
        dense, slim, counts, example, device, latency_fn, batch, large
    )
    if dense_accuracy is None:
        dense_accuracy = final_accuracy(dense, data, device, batch_size)
    slim_accuracy = final_accuracy(slim, data, device, batch_size)
    return FinalFigures({**dense_accuracy, **dense_costs}, {**slim_accuracy, **slim_costs}, speed)


def cached_accuracy(
    model: nn.Module,
    data: Task | DataSplits,
    device: torch.device,
    batch_size: int,
    source: Path,
    cache: Path,
) -> dict[str, float]:
    """:func:`final_accuracy` of ``model``, measured once per version (size, mtime) of its file
    ``source`` and kept in ``cache`` (JSON)."""
    stat = source.stat()
    key = {"dense_pt_size": stat.st_size, "dense_pt_mtime_ns": stat.st_mtime_ns}
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["accuracy"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    accuracy = final_accuracy(model, data, device, batch_size)
    atomic_write_text(cache, json.dumps({"key": key, "accuracy": accuracy}, indent=2) + "\n")
    return accuracy


def metrics_record(
    name: str,
    figures: FinalFigures,
    *,
    epochs: float,
    init: str,
    seed: int,
    dense_epochs: float | None,
    dense_seed: int | None = None,
    first: Mapping[str, Any] | None = None,
    choice: Mapping[str, Any] | None = None,
    rest: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``metrics.json`` record: ``first`` (e.g. the method), the pruned model's figures, training,
    ``choice`` (what was pruned and how), FLOPs and params ratios, speed-ups, ``rest``, the dense
    model's figures (trained ``dense_epochs`` with ``dense_seed``, default ``seed``) and the
    ``settings`` a rerun must match."""
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "name": name,
        **(first or {}),
        **figures.slim,
        "epochs": epochs,
        "init": init,
        "seed": seed,
        **(choice or {}),
        "flops_ratio": figures.flops_ratio,
        "params_ratio": figures.slim["params"] / figures.dense["params"],
        **figures.speed,
        **(rest or {}),
        "dense": {
            **figures.dense,
            "epochs": dense_epochs,
            "init": "dense",
            "seed": seed if dense_seed is None else dense_seed,
        },
        "settings": dict(settings),
    }


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` atomically (a reader never sees half a file)."""
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return Path(path)
