"""``search()``: one width search from settings to run directory (see the package docstring)."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..config import SearchConfig, read_config_extras, write_config
from ..cost import CostModel
from ..errors import NasPruneError
from ..objective import CandidateEvaluator, TrialSettings
from ..results import public_trials, read_trials
from ..space import Budget, WidthSpace
from ..task import Task, check_task, data_label, resolve_task, task_given
from ..train import evaluate, resolve_device
from .driver import Driver
from .inputs import (
    build_space,
    default_output,
    dense_model,
    fresh_model,
    make_budget,
    prepare_run_dir,
    require_reachable,
    resume_config,
    validate,
)
from .journal import Journal
from .ladder import Ladder
from .latency import LatencyGuard, latency_guard, measure_latencies
from .projection import Projector
from .report import band_share, fidelity_report, print_summary, write_outputs
from .seeding import budget_sampler, load_or_make_seeds, load_or_train_supernet
from .study import Proposals
from .workers import WorkerPool, start_ray

__all__ = ["search"]


def _settings(config, resume, changes, objects: _Objects) -> tuple[SearchConfig, Path]:
    if resume is not None:
        run_dir = Path(resume)
        cfg = resume_config(run_dir, changes)
        objects.check_resume(run_dir)
    else:
        cfg = (config or SearchConfig()).replace(**changes)
    if objects.model is not None:  # the run is named after the model's class
        cfg = cfg.replace(model=type(objects.model).__name__)
    cfg = validate(cfg, objects.model is not None, objects.task is not None)
    if resume is None:
        task_name = objects.task.name if objects.task is not None else None
        run_dir = Path(cfg.output) if cfg.output else default_output(cfg, make_budget(cfg), task_name)
        cfg = cfg.replace(output=str(run_dir))
    prepare_run_dir(run_dir, resume is not None)
    return cfg, run_dir


@dataclass
class _Objects:
    """A model and a task given as Python objects (None: from names in the settings)."""

    model: torch.nn.Module | None = None
    task: Task | None = None

    @classmethod
    def split(cls, settings: dict) -> _Objects:
        """Take ``model`` (an ``nn.Module``) and ``task`` (a :class:`Task`) out of ``settings``; names
        and paths stay there as settings."""
        objects = cls()
        if isinstance(settings.get("model"), torch.nn.Module):
            objects.model = settings.pop("model")
        if isinstance(settings.get("task"), Task):
            objects.task = settings.pop("task")
        return objects

    def given(self, cfg: SearchConfig) -> dict[str, str]:
        """How the model and the task were given, as config.yaml records it for ``--resume``."""
        return {
            "model": "object" if self.model is not None else "name",
            "task": task_given(self.task if self.task is not None else cfg.task),
        }

    def check_resume(self, run_dir: Path) -> None:
        """A run whose model or task was an object resumes only with that object passed again."""
        doc = read_config_extras(run_dir / "config.yaml")
        for what in ("model", "task"):
            if (doc.get("given") or {}).get(what) == "object" and getattr(self, what) is None:
                raise NasPruneError(
                    f"{run_dir} was searched with its {what} given as a Python object; resume it from Python "
                    f"with nas_prune.search(resume=..., model=<the model>, task=<the task>)"
                )


def _levels(cfg, projector: Projector, quiet: bool) -> tuple[float, ...]:
    """The cost levels the space can reach (the budget itself always, by require_reachable)."""
    smallest = projector.space.smallest()
    levels = tuple(
        v for v in sorted(set(cfg.cost_levels), reverse=True) if projector.usage(smallest, v) <= 1.0
    )
    dropped = sorted(set(cfg.cost_levels) - set(levels))
    if dropped and not quiet:
        print(f"note: cost levels {dropped} are below the smallest architecture; searching {list(levels)}")
    return levels or (1.0,)


def _ladder(cfg, run_dir, journal, ladder, setup, evaluator, runtime_env, quiet):
    """Run the ladder on Ray workers; returns the session's time accounting."""
    import ray

    projector, levels, seeds, settings = setup.projector, setup.levels, setup.seeds, setup.settings
    if not quiet:
        print(
            f"Fidelity ladder: rung epochs {[round(e, 4) for e in ladder.epochs]}, reduction factor {ladder.reduction}"
        )
    proposals = Proposals(
        run_dir, projector.space, levels, cfg.sampler, cfg.seed, cfg.startup_trials, cfg.budget_band
    )
    proposals.repair({t: journal.score(t, 0) for (t, rung) in journal.results if rung == 0})
    started = start_ray(cfg.ray_address, runtime_env)
    try:
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        per_worker = max(1, cpus // cfg.workers)
        settings = dataclasses.replace(settings, threads=per_worker)
        pool = WorkerPool(cfg.workers, settings, evaluator, per_worker, cfg.gpus_per_trial)
        try:
            return Driver(cfg, journal, ladder, projector, proposals, levels, seeds, pool, quiet).run()
        finally:
            pool.close()
    finally:
        if started:
            ray.shutdown()


def search(
    config: SearchConfig | None = None,
    /,
    *,
    resume: str | os.PathLike | None = None,
    evaluator: Callable[[TrialSettings], Callable] = CandidateEvaluator,
    ray_runtime_env: dict | None = None,
    latency_fn: Callable | None = None,
    quiet: bool = False,
    **settings: Any,
) -> pd.DataFrame:
    """Run (or ``resume``) a width search and return its trials as a DataFrame.

    Args:
        config: a :class:`SearchConfig`; or give its fields as keyword arguments.
        resume: a run directory to continue; its config.yaml is used, with ``trials``, ``workers``,
            ``time_budget``, ``device`` and ``ray_address`` taken from the keyword arguments when given.
            A run whose model or task was given as an object needs the same objects passed again.
        evaluator: ``evaluator(settings) -> score(widths, epochs, seed) -> {"val_accuracy", "epochs"}``,
            built once per Ray worker (default :class:`~nas_prune.objective.CandidateEvaluator`; tests
            inject fakes).
        ray_runtime_env: passed to ``ray.init`` when this call starts Ray.
        latency_fn: ``(model, example_inputs, device, batch) -> ms`` instead of timing (tests inject one,
            so tests of latency logic never depend on timing noise).
        quiet: no progress bar or tables.
        **settings: :class:`SearchConfig` fields, and also ``model=<trained nn.Module>`` (its own weights
            are the dense model) and ``task=<nas_prune.Task>`` (or ``task="pkg.module:factory"``).

    Returns:
        trials.csv as a DataFrame (the run directory is ``df.attrs["run_dir"]``); its score column is
        ``val_accuracy`` for classification and ``val_score`` for any other task's score.
    """
    objects = _Objects.split(settings)
    cfg, run_dir = _settings(config, resume, settings, objects)
    setup = _prepare(cfg, run_dir, resume is not None, latency_fn, quiet, objects)
    journal = Journal.open(run_dir / "evaluations.jsonl")
    ladder = Ladder.build(cfg.epochs_per_trial, cfg.rungs, cfg.reduction_factor)
    stats, interrupted = None, False
    try:
        stats = _ladder(cfg, run_dir, journal, ladder, setup, evaluator, ray_runtime_env, quiet)
    except KeyboardInterrupt:
        interrupted = True
        print(
            f"\ninterrupted: finished evaluations are kept; continue with --resume {run_dir}", file=sys.stderr
        )
    trials = journal.write_trials(run_dir, setup.cost, ladder.top, setup.task.score_key)
    trials = measure_latencies(
        run_dir,
        trials,
        setup.dense,
        setup.example,
        setup.model,
        cfg,
        setup.guard,
        setup.latency_device,
        latency_fn,
    )
    fidelity = fidelity_report(journal, ladder, stats, cfg.workers, supernet=cfg.supernet_epochs > 0)
    fidelity["budget_band_share"] = band_share(journal, setup.projector, cfg.budget_band)
    front = write_outputs(
        run_dir, trials, fidelity, cfg, setup.budget, setup.dense, setup.space, setup.guard,
        setup.task.score_name, data_label(cfg.task, cfg.dataset, setup.task.name),
    )  # fmt: skip
    if not quiet:
        print_summary(run_dir, trials, front, fidelity, cfg, fidelity["budget_band_share"])
    if interrupted:
        raise KeyboardInterrupt
    trials = public_trials(read_trials(run_dir / "trials.csv"))
    trials.attrs["run_dir"] = str(run_dir)
    return trials


@dataclass
class _Setup:
    """Everything a run prepares before the ladder: task, budget, space, costs, dense model, seeds."""

    task: Task
    budget: Budget
    space: WidthSpace
    cost: CostModel
    example: Any
    guard: LatencyGuard | None
    latency_device: torch.device
    model: torch.nn.Module
    dense: dict
    settings: TrialSettings
    seeds: list
    projector: Projector
    levels: tuple[float, ...]


def _prepare(
    cfg: SearchConfig, run_dir: Path, resume: bool, latency_fn, quiet: bool, objects: _Objects
) -> _Setup:
    """Task, space and cost (a budget below the smallest architecture fails before any training; so do a
    task and model that cannot work together), the latency guard, the dense model, config.yaml, the
    seeds and the projection."""
    budget = make_budget(cfg)
    device = resolve_device(cfg.device)
    task = resolve_task(objects.task or cfg.task, cfg.dataset, cfg.data_dir, cfg.subset)
    example = task.example()
    skeleton = fresh_model(cfg, task, objects.model)
    check_task(task, skeleton, device)
    _, space, cost = build_space(cfg, skeleton, example)
    require_reachable(budget, space, cost)
    latency_device = torch.device("cpu") if device.type == "cpu" else device
    guard = latency_guard(
        cfg, budget, skeleton, example, space, run_dir, latency_device, latency_fn, resume, quiet
    )
    model, spec = dense_model(cfg, task, run_dir, device, objects.model)
    val_loader = task.loader("val", 512, train=False, device=device)
    dense_val = evaluate(model.to(device), val_loader, device=device, task=task)[task.score_key]
    model = model.cpu().eval()
    dense = {"macs": cost.dense[0], "params": cost.dense[1], "val_accuracy": dense_val}
    info = {"groups": len(space.choices), "size": space.size, "fixed": space.fixed}
    write_config(
        run_dir / "config.yaml", cfg, dense=dict(dense), space=info, score_name=task.score_name,
        given=objects.given(cfg),
    )  # fmt: skip
    seeds = load_or_make_seeds(cfg, model, example, space, cost, budget, task, device, run_dir, guard, quiet)
    latency = None if guard is None else (lambda w: guard.violation(w)[0], guard.aim_ms())
    projector = Projector(space, cost, budget, latency, latency_binding=guard is not None and guard.trusted)
    levels = _levels(cfg, projector, quiet)
    supernet = load_or_train_supernet(
        cfg, model, example, space, task, run_dir, device, quiet, budget_sampler(projector, levels)
    )
    dense_state = {k: v.cpu() for k, v in model.state_dict().items()}
    settings = TrialSettings(
        spec=spec,
        dense_state=supernet.state_dict if supernet else dense_state,
        ranking=supernet.ranking if supernet else None,
        judge_state=dense_state if supernet else None,
        fine_tune_from=cfg.fine_tune_from,
        rung0_judge=cfg.rung0_judge,
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        subset=cfg.subset,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        importance=cfg.importance,
        device="cuda" if cfg.gpus_per_trial > 0 else "cpu",  # Ray hides GPUs from GPU-less workers
        seed=cfg.seed,
        task=objects.task or cfg.task,
        model=objects.model,
    )
    if not quiet:
        print(
            f"Run directory: {run_dir}  ({len(space.choices)} searched groups, {space.size:.3g} architectures; "
            f"dense: {dense['macs'] / 1e6:.1f} MMACs, val {task.score_name} {dense_val:.4f}); cost levels {list(levels)}"
        )
    return _Setup(
        task,
        budget,
        space,
        cost,
        example,
        guard,
        latency_device,
        model,
        dense,
        settings,
        seeds,
        projector,
        levels,
    )
