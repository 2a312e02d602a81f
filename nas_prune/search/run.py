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

from ..config import SearchConfig, write_config
from ..cost import CostModel
from ..data import load_dataset
from ..models import create_model
from ..objective import CandidateEvaluator, TrialSettings
from ..results import read_trials
from ..space import Budget, WidthSpace
from ..train import evaluate, resolve_device
from .driver import Driver
from .inputs import (
    build_space,
    default_output,
    dense_model,
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
from .report import fidelity_report, print_summary, write_outputs
from .seeding import load_or_make_seeds
from .study import Proposals
from .workers import WorkerPool, start_ray

__all__ = ["search"]


def _settings(config, resume, changes) -> tuple[SearchConfig, Path]:
    if resume is not None:
        run_dir = Path(resume)
        cfg = validate(resume_config(run_dir, changes))
    else:
        cfg = validate((config or SearchConfig()).replace(**changes))
        run_dir = Path(cfg.output) if cfg.output else default_output(cfg, make_budget(cfg))
        cfg = cfg.replace(output=str(run_dir))
    prepare_run_dir(run_dir, resume is not None)
    return cfg, run_dir


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


def _band_share(journal: Journal, projector: Projector, band: float) -> float | None:
    """Share of the budget-level candidates that sit within ``band`` under the budget."""
    usage = [
        projector.usage(c["widths"])
        for c in journal.candidates.values()
        if c["level"] == 1.0 and not c.get("infeasible")
    ]
    return sum(1.0 - band <= u <= 1.0 + 1e-9 for u in usage) / len(usage) if usage else None


def _ladder(cfg, run_dir, journal, ladder, setup, evaluator, runtime_env, quiet):
    """Run the ladder on Ray workers; returns the session's time accounting."""
    import ray

    projector, levels, seeds, settings = setup.projector, setup.levels, setup.seeds, setup.settings
    if not quiet:
        print(
            f"Fidelity ladder: rung epochs {[round(e, 4) for e in ladder.epochs]}, reduction factor {ladder.reduction}"
        )
    proposals = Proposals(run_dir, projector.space.names, levels, cfg.sampler, cfg.seed, cfg.startup_trials)
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
        evaluator: ``evaluator(settings) -> score(widths, epochs, seed) -> {"val_accuracy", "epochs"}``,
            built once per Ray worker (default :class:`~nas_prune.objective.CandidateEvaluator`; tests
            inject fakes).
        ray_runtime_env: passed to ``ray.init`` when this call starts Ray.
        latency_fn: ``(model, example_inputs, device, batch) -> ms`` instead of timing (tests inject one,
            so tests of latency logic never depend on timing noise).
        quiet: no progress bar or tables.

    Returns:
        trials.csv as a DataFrame (the run directory is ``df.attrs["run_dir"]``).
    """
    cfg, run_dir = _settings(config, resume, settings)
    setup = _prepare(cfg, run_dir, resume is not None, latency_fn, quiet)
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
    trials = journal.write_trials(run_dir, setup.cost, ladder.top)
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
    fidelity = fidelity_report(journal, ladder, stats, cfg.workers)
    fidelity["budget_band_share"] = _band_share(journal, setup.projector, cfg.budget_band)
    front = write_outputs(run_dir, trials, fidelity, cfg, setup.budget, setup.dense, setup.space, setup.guard)
    if not quiet:
        print_summary(run_dir, trials, front, fidelity, cfg, fidelity["budget_band_share"])
    if interrupted:
        raise KeyboardInterrupt
    trials = read_trials(run_dir / "trials.csv")
    trials.attrs["run_dir"] = str(run_dir)
    return trials


@dataclass
class _Setup:
    """Everything a run prepares before the ladder: budget, space, costs, dense model, seeds."""

    budget: Budget
    space: WidthSpace
    cost: CostModel
    example: torch.Tensor
    guard: LatencyGuard | None
    latency_device: torch.device
    model: torch.nn.Module
    dense: dict
    settings: TrialSettings
    seeds: list
    projector: Projector
    levels: tuple[float, ...]


def _prepare(cfg: SearchConfig, run_dir: Path, resume: bool, latency_fn, quiet: bool) -> _Setup:
    """Data, space and cost (a budget below the smallest architecture fails before any training), the
    latency guard, the dense model, config.yaml, the seeds and the projection."""
    budget = make_budget(cfg)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_dir, seed=0, subset=cfg.subset)
    example = torch.zeros(2, *data.input_shape)
    skeleton = create_model(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes)
    _, space, cost = build_space(cfg, skeleton, example)
    require_reachable(budget, space, cost)
    latency_device = torch.device("cpu") if device.type == "cpu" else device
    guard = latency_guard(
        cfg, budget, skeleton, example, space, run_dir, latency_device, latency_fn, resume, quiet
    )
    model, spec = dense_model(cfg, data, run_dir, device)
    dense_val = evaluate(model.to(device), data.loader("val", 512, train=False), device=device)["accuracy"]
    model = model.cpu().eval()
    dense = {"macs": cost.dense[0], "params": cost.dense[1], "val_accuracy": dense_val}
    info = {"groups": len(space.choices), "size": space.size, "fixed": space.fixed}
    write_config(run_dir / "config.yaml", cfg, dense=dict(dense), space=info)
    seeds = load_or_make_seeds(cfg, model, example, space, cost, budget, data, device, run_dir, guard, quiet)
    latency = None if guard is None else (lambda w: guard.violation(w)[0], guard.aim_ms())
    projector = Projector(space, cost, budget, latency, latency_binding=guard is not None and guard.trusted)
    levels = _levels(cfg, projector, quiet)
    settings = TrialSettings(
        spec=spec,
        dense_state={k: v.cpu() for k, v in model.state_dict().items()},
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        subset=cfg.subset,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        importance=cfg.importance,
        device="cuda" if cfg.gpus_per_trial > 0 else "cpu",  # Ray hides GPUs from GPU-less workers
        seed=cfg.seed,
    )
    if not quiet:
        print(
            f"Run directory: {run_dir}  ({len(space.choices)} searched groups, {space.size:.3g} architectures; "
            f"dense: {dense['macs'] / 1e6:.1f} MMACs, val accuracy {dense_val:.4f}); cost levels {list(levels)}"
        )
    return _Setup(
        budget, space, cost, example, guard, latency_device, model, dense, settings, seeds, projector, levels
    )
