"""The search's command line: ``python -m nas_prune.search --budget-flops 0.3``; ``--help`` explains every flag."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..cli import ArgumentParser
from ..config import SearchConfig
from ..data import load_dataset
from ..models import create_model
from ..seeds import SeedContext, make_seeds
from .inputs import build_space, load_dense_weights, make_budget, require_reachable, validate
from .run import search

__all__ = ["main", "parser"]


def parser() -> ArgumentParser:
    """The search's argument parser (every default shown comes from :class:`SearchConfig`)."""
    d = SearchConfig()
    p = ArgumentParser(
        prog="python -m nas_prune.search",
        description="Search per-layer channel widths of a CNN under FLOP/parameter/latency budgets and "
        "write the Pareto front (accuracy vs FLOPs vs latency) to a run directory.",
        epilog="Example: python -m nas_prune.search --budget-flops 0.3   (Fashion-MNIST, convnet, ~10 min on "
        "2 CPU cores). Scale up with --trials, --epochs-per-trial, --workers, --device cuda, --ray-address.",
    )
    _budget_flags(p.add_argument_group("budgets (at least one; all given must hold)"), d)
    _model_flags(p.add_argument_group("model and data"), d)
    _ladder_flags(p.add_argument_group("search"), d)
    o = p.add_argument_group("output")
    o.add_argument("--output", help="run directory (default results/<model>-<dataset>-<budget>-<timestamp>)")
    o.add_argument("--resume", help="continue the run in this directory (finished trials are kept)")
    o.add_argument(
        "--dry-run", action="store_true", help="print groups, space size, dense cost and seeds; exit"
    )
    return p


def _budget_flags(b, d: SearchConfig) -> None:
    b.add_argument(
        "--budget-flops", type=float, help="keep at most this fraction of the dense FLOPs, in (0, 1]"
    )
    b.add_argument("--budget-params", type=float, help="keep at most this fraction of the dense parameters")
    b.add_argument(
        "--budget-latency", help="0.8 = fraction of the dense model's measured latency; 12ms = absolute"
    )
    b.add_argument(
        "--latency-batch", type=int, help=f"batch size latency is measured at (default {d.latency_batch})"
    )
    b.add_argument(
        "--lut-dir",
        help=f"cache of the per-layer latency lookup table, one file per device (default {d.lut_dir})",
    )
    b.add_argument(
        "--lut-samples",
        type=int,
        help=f"random architectures the LUT is validated on before it may reject (default {d.lut_samples})",
    )


def _model_flags(m, d: SearchConfig) -> None:
    m.add_argument(
        "--model", help="zoo name or pkg.module:factory (default: convnet for 28x28 data, else resnet20)"
    )
    m.add_argument("--checkpoint", help="dense weights (nas_prune checkpoint); default: train them first")
    m.add_argument(
        "--pretrain-epochs",
        type=float,
        help=f"epochs to train the dense model (default {d.pretrain_epochs:g})",
    )
    m.add_argument(
        "--dataset",
        help=f"fashion-mnist, mnist, cifar10, cifar100, synthetic or pkg.module:factory "
        f"(default {d.dataset})",
    )
    m.add_argument("--data-dir", help="folder searched first for the dataset files")
    m.add_argument("--subset", type=int, help="use a fixed random subset of N training images (quick runs)")


def _ladder_flags(s, d: SearchConfig) -> None:
    s.add_argument(
        "--trials",
        type=int,
        help=f"candidates scored at rung 0 in total, seeds included, also on resume (default {d.trials})",
    )
    s.add_argument(
        "--epochs-per-trial",
        type=float,
        help=f"fine-tuning epochs at the top rung of the fidelity ladder; rung r of K gets this / "
        f"reduction-factor^(K-r), fractions allowed (default {d.epochs_per_trial:g})",
    )
    s.add_argument(
        "--rungs",
        type=int,
        help=f"fine-tune rungs above rung 0 (slim + adaptive BN, no fine-tuning); 0 = rung 0 only "
        f"(default {d.rungs})",
    )
    s.add_argument(
        "--reduction-factor",
        type=int,
        help=f"successive halving: the best 1/this of each cost level go up a rung (default {d.reduction_factor})",
    )
    s.add_argument(
        "--cost-levels",
        type=float,
        nargs="+",
        help=f"fractions of the budget that proposals are projected onto, so the front is a curve; two of "
        f"every three candidates are at 1.0 (default {' '.join(f'{v:g}' for v in d.cost_levels)})",
    )
    s.add_argument(
        "--budget-band",
        type=float,
        help=f"proposals aim within this fraction under the budget (default {d.budget_band:g})",
    )
    _run_flags(s, d)


def _run_flags(s, d: SearchConfig) -> None:
    s.add_argument(
        "--workers", type=int, help=f"Ray workers evaluating candidates in parallel (default {d.workers})"
    )
    s.add_argument("--gpus-per-trial", type=float, help="GPUs per worker, fractions allowed (default 0)")
    s.add_argument("--device", help="auto, cpu or cuda for the dense model and latency (default auto)")
    s.add_argument("--ray-address", help="join an existing Ray cluster (default: a local Ray on 127.0.0.1)")
    s.add_argument("--seed", type=int, help="seed of the sampler, seeds and fine-tuning (default 0)")
    s.add_argument(
        "--time-budget",
        type=float,
        help="seconds for the ladder (after the dense model and seeds): rung 0 stops early enough for the "
        "planned fine-tunes to finish in time",
    )
    s.add_argument("--importance", help="channel importance when slimming: l2 (default), l1, bn_scale")
    s.add_argument(
        "--round-to", type=int, help="widths are multiples of this (default: the model's search space)"
    )
    s.add_argument(
        "--min-fraction", type=float, help="narrowest width per group as a fraction (default: search space)"
    )
    s.add_argument("--freeze", nargs="+", help="channel groups (names from --dry-run) kept at full width")
    s.add_argument(
        "--seeds", nargs="*", help=f"seed architectures evaluated first (default: {' '.join(d.seeds)})"
    )
    s.add_argument(
        "--sampler",
        help="tpe (default: Optuna's multivariate TPE, one study per cost level, learning rung-0 scores) or "
        "random (uniform random keep scores, projected and laddered the same way: the control a search "
        "must beat)",
    )
    s.add_argument(
        "--gate-epochs",
        type=float,
        help=f"epochs of the ProxylessNAS-style gate supernet whose best architectures seed the search "
        f"(source gates; default {d.gate_epochs:g}, 0 disables it)",
    )
    s.add_argument(
        "--gate-seeds", type=int, help=f"architectures the gate supernet seeds (default {d.gate_seeds})"
    )
    s.add_argument("--lr", type=float, help=f"fine-tuning learning rate (default {d.lr:g})")


def _dry_run(cfg: SearchConfig) -> None:
    cfg = validate(cfg)
    budget = make_budget(cfg)
    data = load_dataset(cfg.dataset, cfg.data_dir, subset=cfg.subset)
    example = torch.zeros(2, *data.input_shape)
    model = create_model(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes)
    if cfg.checkpoint:
        load_dense_weights(model, cfg.checkpoint, cfg.model)
    groups, space, cost = build_space(cfg, model, example)
    require_reachable(budget, space, cost)
    print(
        f"{cfg.model} on {cfg.dataset}: {cost.dense[0] / 1e6:.2f} MMACs ({2 * cost.dense[0] / 1e6:.2f} MFLOPs), "
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
    args = vars(parser().parse_args(argv))
    resume, dry_run = args.pop("resume"), args.pop("dry_run")
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items() if v is not None}
    if resume:
        search(resume=resume, **given)
    elif dry_run:
        _dry_run(SearchConfig(**given))
    else:
        search(SearchConfig(**given))
