"""The search's command line: ``python -m nas_prune.search --budget-flops 0.3``; ``--help`` explains every flag."""

from __future__ import annotations

from collections.abc import Sequence

from ..cli import ArgumentParser, config_flags, given_flags
from ..config import SearchConfig
from ..seeds import SeedContext, make_seeds
from ..task import data_label, resolve_task
from .inputs import (
    build_space,
    fresh_model,
    load_dense_weights,
    make_budget,
    require_reachable,
    validate,
)
from .run import search

__all__ = ["main", "parser"]


def parser() -> ArgumentParser:
    """The search's argument parser, generated from :class:`SearchConfig` (its fields' help and defaults)."""
    p = ArgumentParser(
        prog="python -m nas_prune.search",
        description="Search per-layer channel widths of a CNN under FLOP/parameter/latency budgets and "
        "write the Pareto front (the task's score vs FLOPs vs latency) to a run directory. The task is "
        "classification on --dataset, or your own with --task pkg.module:factory (data, training step, "
        "named score: a detector's mAP, a segmenter's mIoU).",
        epilog="Example: python -m nas_prune.search --budget-flops 0.3   (Fashion-MNIST, convnet, ~10 min on "
        "2 CPU cores). Scale up with --trials, --epochs-per-trial, --workers, --device cuda, --ray-address.",
    )
    p.add_argument("--resume", help="continue the run in this directory (finished trials are kept)")
    p.add_argument(
        "--dry-run", action="store_true", help="print groups, space size, dense cost and seeds; exit"
    )
    return config_flags(p, SearchConfig)


def _dry_run(cfg: SearchConfig) -> None:
    cfg = validate(cfg)
    budget = make_budget(cfg)
    task = resolve_task(cfg.task, cfg.dataset, cfg.data_dir, cfg.subset)
    example = task.example()
    model = fresh_model(cfg, task)
    if cfg.checkpoint:
        load_dense_weights(model, cfg.checkpoint, cfg.model)
    groups, space, cost = build_space(cfg, model, example)
    require_reachable(budget, space, cost)
    print(
        f"{cfg.model} on {data_label(cfg.task, cfg.dataset, task.name)}: {cost.dense[0] / 1e6:.2f} MMACs ({2 * cost.dense[0] / 1e6:.2f} MFLOPs), "
        f"{cost.dense[1] / 1e6:.3f} M params; budget {budget.label()}"
    )
    for g in groups:
        choice = space.choices.get(g.name)
        print(
            f"  {g.name:40s} {g.channels:5d} ch  "
            + (f"choices {choice}" if choice else f"fixed ({g.reason or 'frozen'})")
        )
    print(f"space: {space.size:.3g} architectures")
    if budget.latency_ms or budget.latency_fraction:
        print("latency budget: judged by the latency LUT during the search; the seeds below ignore it")
    print(
        f"ladder: rung 0 = slim + adaptive BN; {cfg.rungs} fine-tune rungs up to {cfg.epochs_per_trial:g} epochs, "
        f"the best 1/{cfg.reduction_factor} of each cost level {list(cfg.cost_levels)} promoted"
    )
    ctx = SeedContext(model, example, space, cost, budget, cfg.importance, None)
    for name, widths in make_seeds(ctx, tuple(s for s in cfg.seeds if s != "sensitivity")).items():
        macs, _ = cost.cost(widths)
        note = (
            " (ranked on untrained weights: give --checkpoint)" if name == "l2" and not cfg.checkpoint else ""
        )
        print(f"seed {name}: flops ratio {macs / cost.dense[0]:.3f}{note} {widths}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    given = given_flags(args, SearchConfig)
    if args.resume:
        search(resume=args.resume, **given)
    elif args.dry_run:
        _dry_run(SearchConfig(**given))
    else:
        search(SearchConfig(**given))
