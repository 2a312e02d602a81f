"""``retrain --top K``: the K best top-rung architectures of a run, retrained as parallel Ray Tune trials.

Each finalist is one Tune trial that runs the single-architecture retrain (:func:`.run.train_job`, the
one training path) into its usual folder ``RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID>/`` and
reports every epoch to Tune (``val_score``, ``epoch``, the losses) with the epoch's checkpoint. Tune's
results live in ``RUN_DIR/retrain/tune/<variant>-top<K>[-asha]/``; rerunning the same command restores the
experiment (errored trials included), and a restored trial continues from its last checkpoint, so no
finished epoch is trained again. When every trial is done, the driver reports the finalists one at a
time (test score, latency, export: latencies are never timed in parallel), picks the best by validation
score and writes ``RUN_DIR/retrain/top.json``; ``summary.csv`` marks it in ``top_pick``.

Ray is imported only in this module's functions (the one place outside :mod:`nas_prune.search`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write_text
from ..errors import NasPruneError
from ..search.workers import (  # imports Ray after nas_prune.search sets its environment
    ship_by_value,
    start_ray,
)
from ..task import Task
from ..train import resumed_epochs
from . import run as run_module
from .choose import Architecture, choose_top, output_name
from .config import RetrainConfig
from .run import CHECKPOINT, RetrainJob, finished_job, plan_job, previous_metrics, report_job, train_job
from .summary import TOP_FILE, write_summary

__all__ = ["METRIC", "TUNE_DIR", "retrain_top"]

TUNE_DIR = "tune"  # under RUN_DIR/retrain/
METRIC = "val_score"  # what each trial reports to Tune (and ASHA) as its validation score


def retrain_top(
    run_dir: str | os.PathLike,
    config: RetrainConfig,
    *,
    model: nn.Module | None = None,
    task: Task | str | None = None,
    quiet: bool = False,
    latency_fn: Callable[..., float] | None = None,
) -> dict[str, Any]:
    """Retrain the ``config.top`` best architectures as Ray Tune trials and pick one by validation score.

    Returns:
        The picked finalist's metrics (as :func:`~nas_prune.retrain.retrain` returns them), plus
        ``finalists`` (name, trial_id, validation and test score of each reported finalist) and ``top``
        (the path of ``top.json``).

    Raises:
        NasPruneError: bad settings or run directory (before Ray starts), or no finalist finished.
    """
    run_dir = Path(run_dir).resolve()  # Tune trials may run in another working directory
    archs = choose_top(run_dir, int(config.top))
    jobs = _plan_all(run_dir, config, archs, model, task, quiet)
    say = jobs[0].say
    start = time.perf_counter()
    variant = output_name(config.init, 0, config.distill, config.budget_matched).removesuffix("-trial0")
    name = f"{variant}-top{len(jobs)}{'-asha' if config.asha else ''}"
    say(f"Retraining the top {len(jobs)} architectures (trials {', '.join(str(a.trial_id) for a in archs)}) "
        f"as Ray Tune trials in {run_dir / 'retrain' / TUNE_DIR / name}")  # fmt: skip
    outcomes = _run_tuner(run_dir, config, jobs, name, model, quiet)
    finalists = []
    for job in jobs:
        metrics = _report(job, outcomes.get(job.arch.trial_id), latency_fn, start)
        if metrics is not None:
            finalists.append(metrics)
    if not finalists:
        raise NasPruneError(
            f"no finalist of --top {len(jobs)} finished; rerun the same command to resume them"
        )
    key = jobs[0].task.score_key
    picked = max(finalists, key=lambda m: m[f"val_{key}"])  # the first (better ranked) on a tie
    path = _write_top(run_dir / "retrain", variant, picked, finalists, key, config, bool(config.asha))
    write_summary(run_dir / "retrain")
    say(f"Picked {picked['name']} by validation {jobs[0].task.score_name} "
        f"{picked[f'val_{key}']:.4f} (test {_shown(picked.get(f'test_{key}'))}) of "
        f"{len(finalists)} finalists; {path}")  # fmt: skip
    rows = [_finalist_row(m, key) for m in finalists]
    return {**picked, "finalists": rows, "top": str(path)}


def _plan_all(
    run_dir: Path,
    config: RetrainConfig,
    archs: list[Architecture],
    model: nn.Module | None,
    task: Task | str | None,
    quiet: bool,
) -> list[RetrainJob]:
    """Every finalist's job, before Ray starts (bad settings and other settings' checkpoints fail here);
    the task is resolved once and shared."""
    jobs: list[RetrainJob] = []
    for arch in archs:
        given = jobs[0].task if jobs else task
        job = plan_job(run_dir, config, quiet=quiet, model=model, task=given, arch=arch)
        previous_metrics(job)  # a folder of other settings fails here
        jobs.append(job)
    return jobs


def _run_tuner(
    run_dir: Path,
    config: RetrainConfig,
    jobs: list[RetrainJob],
    name: str,
    model: nn.Module | None,
    quiet: bool,
) -> dict[int, dict[str, Any]]:
    """Run (or restore and finish) the Tune experiment; per trial_id its ``error`` and last ``metrics``."""
    import ray
    from ray import tune

    started = start_ray(config.ray_address)
    try:
        first = jobs[0]
        ship_by_value(first.task, model)
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        threads = max(1, cpus // len(jobs))
        gpus = 1.0 / len(jobs) if first.device.type == "cuda" else 0
        trainable = tune.with_resources(
            tune.with_parameters(
                _trial, run_dir=str(run_dir), config=config, task=first.task, archs={j.arch.trial_id: j.arch for j in jobs},
                model=model, threads=threads,
                cwd=os.getcwd(),
            ),
            {"cpu": threads, "gpu": gpus},
        )  # fmt: skip
        storage = run_dir / "retrain" / TUNE_DIR
        if tune.Tuner.can_restore(str(storage / name)):
            first.say(f"Resuming the Tune experiment {storage / name}")
            tuner = tune.Tuner.restore(str(storage / name), trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial_id": tune.grid_search([j.arch.trial_id for j in jobs])},
                tune_config=tune.TuneConfig(scheduler=_asha(jobs) if config.asha else None, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=name, storage_path=str(storage), verbose=0 if quiet else 1,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                ),
            )  # fmt: skip
        grid = tuner.fit()
        return {
            int(r.config["trial_id"]): {"error": r.error, "metrics": r.metrics or {}}
            for r in grid
            if r.config
        }
    finally:
        if started:
            ray.shutdown()


def _asha(jobs: list[RetrainJob]) -> Any:
    """ASHA on the validation score, rungs at 1, 2, 4, ... reported epochs, half promoted at each."""
    from ray.tune.schedulers import ASHAScheduler

    rounds = max(1, math.ceil(jobs[0].settings["epochs"] - 1e-9))  # reports per trial (fit's rounds)
    return ASHAScheduler(
        metric=METRIC, mode="max", time_attr="training_iteration", max_t=rounds, grace_period=1,
        reduction_factor=2,
    )  # fmt: skip


def _trial(
    trial_config: dict[str, Any],
    *,
    run_dir: str,
    config: RetrainConfig,
    task: Task,
    archs: dict[int, Architecture],
    model: nn.Module | None,
    threads: int,
    cwd: str,
) -> None:
    """One Tune trial: retrain one finalist into its folder, reporting each epoch with its checkpoint."""
    from ray import tune

    if os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in the task resolve as in the driver
    torch.set_num_threads(threads)
    arch = archs[int(trial_config["trial_id"])]
    job = plan_job(Path(run_dir), config, quiet=True, model=model, task=task, arch=arch)
    key = job.task.score_key
    if (job.out / "metrics.json").is_file():  # finished by an earlier retrain with these settings
        done = json.loads((job.out / "metrics.json").read_text())
        tune.report(
            {METRIC: done[f"val_{key}"], "epoch": done["epochs"], "resumed_from_epoch": done["epochs"]}
        )
        return
    _restore(tune.get_checkpoint(), job.out / CHECKPOINT)
    resumed = resumed_epochs(job.out / CHECKPOINT)

    def report(epoch: int, row: dict[str, Any]) -> None:
        metrics = {METRIC: row[f"val_{key}"], "epoch": row["epoch"], "train_loss": row["train_loss"],
                   "val_loss": row.get("val_loss"), "resumed_from_epoch": resumed}  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy2(job.out / CHECKPOINT, Path(folder) / CHECKPOINT)
            tune.report(
                {k: v for k, v in metrics.items() if v is not None},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    train_job(job, progress=False, quiet=True, on_epoch_end=report)


def _restore(checkpoint: Any, path: Path) -> None:
    """Put Tune's last checkpoint of this trial at ``path`` when it is further than the one there."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        saved = Path(folder) / CHECKPOINT
        if saved.is_file() and resumed_epochs(saved) > resumed_epochs(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(saved, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)


def _report(
    job: RetrainJob, outcome: dict[str, Any] | None, latency_fn: Callable[..., float] | None, start: float
) -> dict[str, Any] | None:
    """The finalist's metrics.json, written now (one model timed at a time); None when its trial failed
    or ASHA stopped it."""
    if outcome is not None and outcome["error"] is not None:
        first = str(outcome["error"]).strip().splitlines() or [type(outcome["error"]).__name__]
        warnings.warn(f"{job.out.name} failed in its Tune trial: {first[-1]}", stacklevel=3)
        return None
    metrics = (outcome or {}).get("metrics", {})
    if metrics.get("epoch", job.settings["epochs"]) < job.settings["epochs"] - 1e-6:
        job.say(f"{job.out.name}: stopped by ASHA after {metrics['epoch']:g} epochs; not reported")
        return None
    done = finished_job(job)
    if done is not None:
        return done
    silent = dataclasses.replace(job, say=lambda *a, **k: None)
    history, resumed = train_job(silent, progress=False, quiet=True)  # only loads the trained weights
    latency_fn = latency_fn or run_module.measure_latency
    return report_job(job, latency_fn, start, history, float(metrics.get("resumed_from_epoch", resumed)))


def _write_top(
    retrain_dir: Path,
    variant: str,
    picked: dict[str, Any],
    finalists: list[dict[str, Any]],
    key: str,
    config: RetrainConfig,
    asha: bool,
) -> Path:
    """``top.json``: per variant (``scratch``, ``inherit-distill``, ...) the picked finalist and all of them."""
    path = retrain_dir / TOP_FILE
    try:
        content = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        content = {}
    runs = content.get("runs") if isinstance(content.get("runs"), dict) else {}
    runs[variant] = {
        "picked": picked["name"],
        "picked_by": f"val_{key}",
        "top": int(config.top),
        "asha": asha,
        "finalists": [_finalist_row(m, key) for m in finalists],
    }
    atomic_write_text(path, json.dumps({"schema_version": 1, "runs": runs}, indent=2) + "\n")
    return path


def _finalist_row(metrics: dict[str, Any], key: str) -> dict[str, Any]:
    return {
        "name": metrics["name"],
        "trial_id": metrics.get("trial_id"),
        f"val_{key}": metrics.get(f"val_{key}"),
        f"test_{key}": metrics.get(f"test_{key}"),
    }


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
