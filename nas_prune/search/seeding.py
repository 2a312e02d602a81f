"""The seeds of a search (the pruning heuristics' architectures and the gate supernet's) and the
width-shared supernet rung 0 slices: made once, kept in the run directory.

Seeds are computed before the ladder starts and kept in ``seeds.json`` (``[[source, widths], ...]``), so a
resumed run climbs the same seeds without recomputing them (the sensitivity analysis and the gate
supernet take minutes). Heuristic seeds are kept even when two agree (each is a labelled baseline); a
gate seed equal to an earlier seed is dropped.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write_text
from ..objective import adapt_batchnorm
from ..resumable import Resumable
from ..seeds import GATES, SeedContext, make_seeds
from ..space import Budget
from ..supernet import (
    Supernet,
    SupernetSettings,
    load_supernet,
    save_supernet,
    supernet_key,
    train_supernet,
)
from ..task import Task, TaskError
from ..train import evaluate
from .projection import KEEP_MIN, level_schedule

__all__ = ["budget_sampler", "load_or_make_seeds", "load_or_train_supernet"]


def _sensitivity_evaluator(task: Task, cfg, device) -> Callable:
    """The task's score of a (pruned) model on a fixed validation subset after adaptive BN."""
    n = min(cfg.sensitivity_samples, task.size("val"))
    subset = list(task.loader("val", 500, train=False, device=device, limit=n))
    train = task.loader("train", cfg.batch_size, train=True, seed=cfg.seed, device=device)

    def score(model):
        model = model.to(device)
        adapt_batchnorm(model, train, 10, device, task.inputs)
        return evaluate(model, subset, device=device, task=task)[task.score_key]

    return score


def gate_seeds(
    cfg, model, example, space, cost, budget, task: Task, device, run_dir: Path, guard, uniform, quiet
) -> list:
    """Train the gate supernet for ``--gate-epochs`` and return its seeds (source ``gates``).

    Its width distributions go to ``gates.csv`` (``gates.png`` is drawn from it). Weights step on the
    training split, architecture logits on the validation split (the search's split; never the test set).
    The supernet's cost term is expected FLOPs/parameters. With a latency budget it aims at the FLOPs of
    ``uniform``, the uniform seed fitted to the *measured* latency (a latency fraction is not a FLOPs
    fraction: at batch 1 a fixed overhead does not shrink), or the FLOPs budget if tighter; its seeds are
    then fitted to the measured latency like every seed.
    """
    from ..gates import GateSettings, train_gates

    target = None
    if guard is not None:  # the FLOPs that fit the latency: those of the measured uniform seed
        fits = uniform if uniform is not None else space.smallest()
        target = min(budget.flops or 1.0, cost.cost(fits)[0] / cost.dense[0])
    settings = GateSettings(
        epochs=cfg.gate_epochs,
        importance=cfg.importance,
        num_seeds=cfg.gate_seeds,
        device=str(device),
        seed=cfg.seed,
        progress=not quiet,
        target_flops=target,
    )
    batch = min(cfg.batch_size, task.size("train"), task.size("val"))  # tiny splits still give full batches
    train = task.loader("train", batch, train=True, seed=cfg.seed, drop_last=True, device=device)
    val = task.loader(
        "val", batch, train=True, augment=False, seed=cfg.seed + 1, drop_last=True, device=device
    )
    if not quiet:
        print(f"Training the gate supernet for {cfg.gate_epochs:g} epochs (--gate-epochs; 0 skips it) ...")
    trained_with = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("device", "progress")}
    key = {**trained_with, "batch_size": batch, "budget": dataclasses.asdict(budget)}
    resumable = Resumable(run_dir / "gates.partial.pt", key)  # a killed run continues the training
    result = train_gates(
        model, example, space, cost, budget, train, val, settings, task.training_step, resumable
    )
    result.history.to_csv(run_dir / "gates.csv", index=False)
    return result.seeds()


def _make_seeds(ctx: SeedContext, names) -> dict[str, dict]:
    """:func:`make_seeds`, with a seed whose scoring fails in the task (a score that raises on a pruned
    model) skipped with a warning: the search goes on, as it does for a candidate that fails."""
    made = {}
    for name in names:
        try:
            made.update(make_seeds(ctx, (name,)))
        except TaskError as err:
            warnings.warn(f"seed {name} skipped: {err}", stacklevel=2)
    return made


def _heuristic_seeds(cfg, model, example, space, cost, budget, evaluator, guard) -> list:
    """The heuristics' seeds. With a latency budget the uniform seed is fitted to the measured latency
    first, and the other heuristics allocate that seed's FLOPs (or the FLOPs budget, if tighter); each
    seed is then scaled down by measurement until it measures under the limit (issue 12: an untrusted LUT
    never rejects a seed, and a seed sits just under the budget)."""
    ctx = SeedContext(model, example, space, cost, budget, cfg.importance, evaluator)
    if guard is None:
        return list(_make_seeds(ctx, cfg.seeds).items())
    uniform = _make_seeds(ctx, ("uniform",)).get("uniform")
    uniform = guard.fit(uniform) if uniform is not None else None
    if uniform is None:
        return []
    share = cost.cost(uniform)[0] / cost.dense[0]
    ctx.budget = Budget(flops=min(budget.flops or 1.0, share), params=budget.params)
    made = _make_seeds(ctx, tuple(s for s in cfg.seeds if s != "uniform"))
    seeds = []
    for name in cfg.seeds:
        widths = uniform if name == "uniform" else made.get(name)
        fitted = guard.fit(widths) if widths is not None else None
        if fitted is not None:
            seeds.append((name, fitted))
    return seeds


def load_or_make_seeds(
    cfg, model, example, space, cost, budget, task: Task, device, run_dir: Path, guard, quiet
):
    """``[(source, widths)]``: from ``run_dir/seeds.json``, or made now (heuristics, then gate seeds)."""
    path = run_dir / "seeds.json"
    if path.is_file():
        return [(source, widths) for source, widths in json.loads(path.read_text())]
    if not quiet:
        print(f"Making the seeds ({', '.join(cfg.seeds) or 'none'}) ...")
    evaluator = _sensitivity_evaluator(task, cfg, device)
    seeds = _heuristic_seeds(cfg, model, example, space, cost, budget, evaluator, guard)
    if cfg.gate_epochs > 0:
        uniform = dict(seeds).get("uniform")
        gated = gate_seeds(
            cfg, model, example, space, cost, budget, task, device, run_dir, guard, uniform, quiet
        )
        if guard is not None:
            gated = [w for w in map(guard.fit, gated) if w is not None]
        seeds += [(GATES, w) for w in gated if all(w != known for _, known in seeds)]
    atomic_write_text(path, json.dumps(seeds))
    return seeds


def budget_sampler(projector, levels) -> Callable:
    """Random architectures projected onto the search's cost levels as often as the ladder samples each
    (:func:`level_schedule`), as ``--sampler random`` proposes them: the supernet's random students, so
    its shared weights are trained where the candidates are."""
    names = list(projector.space.choices)

    def sample(rng):
        scores = {name: rng.uniform(KEEP_MIN, 1.0) for name in names}
        widths = projector.project(scores, level_schedule(rng.randrange(3 * len(levels)), levels))
        return widths if widths is not None else projector.space.smallest()

    return sample


def load_or_train_supernet(
    cfg, model, example, space, task: Task, run_dir: Path, device, quiet, sample: Callable | None = None
) -> Supernet | None:
    """The width-shared supernet of ``--supernet-epochs`` (None for 0): ``run_dir/supernet.pt`` when it
    was trained with these settings, else trained now from the dense model and saved there (continuing
    an interrupted training from ``run_dir/supernet.partial.pt``). ``sample`` draws its random students
    (see :func:`budget_sampler`)."""
    if cfg.supernet_epochs <= 0:
        return None
    settings = SupernetSettings(
        epochs=cfg.supernet_epochs, random_widths=cfg.supernet_widths, lr=cfg.lr, batch_size=cfg.batch_size,
        grad_clip=cfg.supernet_grad_clip or None,
        importance=cfg.importance, seed=cfg.seed, device=str(device), progress=not quiet,
    )  # fmt: skip
    key = supernet_key(settings, "budget" if sample is not None else "grid")
    path = run_dir / "supernet.pt"
    found = load_supernet(path, key)
    if found is not None:
        return found
    if not quiet:
        print(
            f"Training the width-shared supernet for {cfg.supernet_epochs:g} epochs (largest, smallest and "
            f"{cfg.supernet_widths} random on-budget widths per step; --supernet-epochs 0 skips it) ..."
        )
    resumable = Resumable(run_dir / "supernet.partial.pt", key)
    supernet = train_supernet(model, example, space, task, settings, sample, resumable)
    save_supernet(path, supernet, key)
    return supernet
