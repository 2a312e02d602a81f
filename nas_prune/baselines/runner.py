"""Run one baseline method to its FLOPs budget: :func:`run_baseline`, resumable, reported like a retrain."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from ..atomic import atomic_write_text
from ..batch import to_device
from ..checkpoint import save_pruned, settings_mismatch
from ..cli import ensure_output_dir
from ..cost import measure_latency
from ..errors import NasPruneError
from ..final import final_figures, metrics_record, write_metrics
from ..task import Task, check_task, data_label, model_spec_for, resolve_task
from ..train import resolve_device, seed_everything
from .config import BaselineConfig
from .context import PHASES, Context, Outcome, load_dense
from .methods import RUNNERS, UNSTRUCTURED

__all__ = ["run_baseline"]

_REMEDY = "pass --force to start over or --output DIR"


def _resume_key(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that must match for a rerun to reuse a run's results (not its display or folder; a
    ``task`` left unset matches runs made before the setting existed)."""
    return {
        k: v
        for k, v in settings.items()
        if k not in ("progress", "output") and not (k == "task" and v is None)
    }


def _claim(out: Path, key: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The finished run's metrics if ``out`` holds one with these settings; else prepare ``out``.

    Without ``force``, a finished or interrupted run with other settings is an error (nothing is
    overwritten); with it, the old results and checkpoints are deleted.
    """
    metrics_path, state = out / "metrics.json", out / PHASES / "settings.json"
    if force:
        metrics_path.unlink(missing_ok=True)
        shutil.rmtree(out / PHASES, ignore_errors=True)
    if metrics_path.is_file():
        try:
            done = json.loads(metrics_path.read_text())
            old = _resume_key(done["settings"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise NasPruneError(f"{metrics_path} is unreadable; pass --force to redo the run") from None
        if old != key:
            raise NasPruneError(settings_mismatch(out, "a finished run", old, key, _REMEDY))
        return done
    if state.is_file() and any((out / PHASES).glob("*/checkpoint.pt")):  # work that must not be mixed
        try:
            old = json.loads(state.read_text())
        except (OSError, ValueError):
            old = {}
        if old != key:
            raise NasPruneError(settings_mismatch(out, "an interrupted run", old, key, _REMEDY))
    atomic_write_text(state, json.dumps(key, indent=2) + "\n")
    return None


def run_baseline(
    config: BaselineConfig,
    *,
    model: nn.Module | None = None,
    task: Task | None = None,
    latency_fn: Callable[..., float] | None = None,
    quiet: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Run one baseline method to its FLOPs budget and write ``metrics.json`` and ``model.pt``.

    A run interrupted in a training phase continues from its last finished epoch when called again with
    the same settings; a finished one is not recomputed (its metrics are returned).

    Args:
        config: the method and its settings (validated here, before any heavy work).
        model: a trained model object to prune (its own weights are the dense model's, unless
            ``config.checkpoint``); default: ``config.model`` by name.
        task: a :class:`~nas_prune.task.Task` object; default: ``config.task`` or ``config.dataset``.
        latency_fn: ``fn(model, example, device=, batch=, **kw) -> ms`` (default
            :func:`nas_prune.measure_latency`); tests inject a fake.
        quiet: print nothing.
        force: delete the output folder's results and checkpoints and start over.

    Returns:
        The content of ``metrics.json`` plus ``output`` (the folder).
    """
    if model is not None:
        config = dataclasses.replace(config, model=type(model).__name__)
    s = config.validate(model_object=model is not None)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    device = resolve_device(s.device)
    out = ensure_output_dir(s.output_dir())
    done = _claim(out, _resume_key(asdict(s)), force)
    if done is not None:
        say(f"{out} already holds this run (metrics.json); not recomputing it (--force to redo).")
        return {**done, "output": str(out)}
    task = resolve_task(task if task is not None else s.task, s.dataset, s.data_dir, s.subset)
    spec = model_spec_for(s.model, task)
    if model is not None:
        spec["given"] = "object"
    example = to_device(task.example(), device)
    ctx = Context(s, task, spec, example, device, say, quiet, model)
    check_task(task, model if model is not None else ctx.fresh_model(), device)
    if s.method == "lottery-ticket" and s.checkpoint:
        note = (
            f"--checkpoint {s.checkpoint} is ignored: lottery-ticket trains its own dense model from the "
            "initialisation theta0 its ticket is reset to"
        )
        warnings.warn(note, stacklevel=2)
        ctx.notes.append(note)
    try:
        if s.method != "lottery-ticket":
            load_dense(ctx)
        start = time.perf_counter()
        seed_everything(s.seed)
        outcome = RUNNERS[s.method](ctx)
    except KeyboardInterrupt:
        if not quiet:
            print(
                f"Interrupted: rerun the same command to continue from the last finished epoch "
                f"({ctx.phases}).",
                file=sys.stderr,
            )
        raise
    return _report(ctx, outcome, out, latency_fn or measure_latency, time.perf_counter() - start)


def _report(
    ctx: Context, outcome: Outcome, out: Path, latency_fn: Callable[..., float], wall: float
) -> dict[str, Any]:
    """Final figures (the only use of the test split), the budget check, model.pt and metrics.json."""
    s = ctx.s
    slim = outcome.model.to(ctx.device).eval()
    ctx.say("Measuring test accuracy and latency of the dense and the pruned model ...")
    figures = final_figures(
        ctx.dense, slim, ctx.task, ctx.example, ctx.device, latency_fn, s.latency_batch,
        int(s.latency_batch_large), s.batch_size,
    )  # fmt: skip
    if s.method not in UNSTRUCTURED and not (s.method == "lottery-ticket" and s.unstructured):
        if figures.flops_ratio > s.budget_flops + 1e-9:
            raise RuntimeError(
                f"{s.method} left {figures.flops_ratio:.4f} of the FLOPs, over the budget {s.budget_flops}"
            )
    save_pruned(out / "model.pt", slim.cpu(), outcome.widths, ctx.spec, "l2")  # spec: example inputs too
    extra = outcome.extra
    choice = {"widths": outcome.widths, "steps": extra.pop("steps", 1), "sparsity": extra.pop("sparsity", None),
              "nonzero_macs": extra.pop("nonzero_macs", None), "budget_flops": s.budget_flops}  # fmt: skip
    rest = {"model": s.model, "dataset": data_label(s.task, s.dataset, task_name=ctx.task.name),
            "score_name": ctx.task.score_name, **extra, "notes": ctx.notes, "model_file": "model.pt",
            "wall_s": wall, "history": outcome.history}  # fmt: skip
    metrics = metrics_record(
        out.name, figures, epochs=outcome.epochs, init=outcome.init, seed=s.seed, dense_epochs=ctx.dense_epochs,
        first={"method": s.method}, choice=choice, rest=rest, settings=asdict(s),
    )  # fmt: skip
    if metrics["nonzero_macs"] is not None:
        metrics["nonzero_flops_ratio"] = metrics["nonzero_macs"] / figures.dense["macs"]
    write_metrics(out / "metrics.json", metrics)
    shutil.rmtree(ctx.phases, ignore_errors=True)
    ratio = metrics.get("nonzero_flops_ratio", figures.flops_ratio)
    key, name = ctx.task.score_key, ctx.task.score_name
    ctx.say(
        f"{s.method}: test {name} {_shown(figures.slim[f'test_{key}'])} (dense {_shown(figures.dense[f'test_{key}'])}), "
        f"{'non-zero ' if 'nonzero_flops_ratio' in metrics else ''}FLOPs ratio {ratio:.3f}, "
        f"speed-up {metrics['speedup']:.2f}x -> {out}/"
    )
    return {**metrics, "output": str(out)}


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
