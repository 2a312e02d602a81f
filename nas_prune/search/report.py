"""What a finished (or interrupted) search writes and prints: fidelity.json, front, plots, summary."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from ..atomic import atomic_write_text
from ..pareto import best_arch, write_best_arch, write_pareto
from ..results import MODEL_SOURCES, PROPOSAL_SOURCES, public_trials
from .driver import LadderStats
from .journal import Journal
from .ladder import Ladder, correlations, fidelity_warning, judges
from .projection import Projector
from .study import repeated_proposals

__all__ = ["band_share", "fidelity_report", "print_summary", "write_outputs"]


def band_share(journal: Journal, projector: Projector, band: float) -> float | None:
    """Share of the budget-level candidates that sit within ``band`` under the budget."""
    usage = [
        projector.usage(c["widths"])
        for c in journal.candidates.values()
        if c["level"] == 1.0 and not c.get("infeasible")
    ]
    return sum(1.0 - band <= u <= 1.0 + 1e-9 for u in usage) / len(usage) if usage else None


def fidelity_report(
    journal: Journal, ladder: Ladder, stats: LadderStats | None, workers: int, supernet: bool = False
) -> dict:
    """fidelity.json: per rung the evaluations and their worker-time throughput, the rank correlations
    between consecutive rungs, both rung-0 judges' against the top rung (``judges``, see
    :func:`~nas_prune.search.ladder.judges`), this session's Ray + Optuna overhead share, and the sampler: the share of
    rung-0 candidates its model chose (not a seed, start-up or fallback draw), every source's count and
    the proposals skipped because they repeated an evaluated architecture (and the grid neighbours tried
    before a proposal counted as one)."""
    rungs = []
    for rung, epochs in enumerate(ladder.epochs):
        seconds = [
            r.get("wall_s") or 0.0
            for (_, k), r in journal.results.items()
            if k == rung and not r.get("error")
        ]
        wall = sum(seconds) / workers
        rungs.append({
            "rung": rung,
            "epochs": epochs,
            "evaluated": len(seconds),
            "seconds": wall,
            "per_hour": len(seconds) * 3600.0 / wall if wall > 0 else None,
        })  # fmt: skip
    pairs = correlations(journal, ladder)
    scored = [c for c in journal.candidates.values() if not c.get("infeasible")]
    proposed = sum(c["source"] in PROPOSAL_SOURCES for c in journal.candidates.values())
    repeats = repeated_proposals(journal.path.parent)
    return {
        "schema_version": 1,
        "rungs": rungs,
        "correlations": pairs,
        "judges": judges(journal, ladder, supernet),
        "overhead_share": None if stats is None else stats.overhead_share,
        "idle_share": None if stats is None else stats.idle_share,
        "ladder_seconds": None if stats is None else stats.wall,
        "warning": fidelity_warning(pairs),
        "workers": workers,
        "reduction_factor": ladder.reduction,
        "sampler": {
            "model_share": sum(c["source"] in MODEL_SOURCES for c in scored) / len(scored)
            if scored
            else None,
            "sources": dict(Counter(c["source"] for c in scored)),
            "repeated_proposals": repeats,
            "repeat_share": repeats / (repeats + proposed) if repeats + proposed else None,
            "neighbour_retries": sum(c.get("retries", 0) for c in journal.candidates.values()),
        },
    }


def write_outputs(
    run_dir: Path,
    trials: pd.DataFrame,
    fidelity: dict,
    cfg,
    budget,
    dense: dict,
    space,
    guard,
    score_name: str = "accuracy",
    data_label: str | None = None,
) -> pd.DataFrame:
    """fidelity.json, pareto.csv, best_arch.json and the plots (scores named ``score_name``, data
    called ``data_label``, default the dataset); returns the front."""
    from ..plots import plot_gates, plot_pareto, plot_progress, plot_widths

    atomic_write_text(run_dir / "fidelity.json", json.dumps(fidelity, indent=2) + "\n")
    objectives = ("val_accuracy", "flops", "latency_ms") if guard else ("val_accuracy", "flops")
    front = write_pareto(run_dir, objectives)
    data_label = data_label or cfg.dataset
    write_best_arch(run_dir, model=cfg.model, dataset=data_label, dense=dense, score_name=score_name)
    title = f"{cfg.model} on {data_label}, {budget.label()}"
    plot_pareto(
        trials, front, run_dir / "pareto.png", dense=dense, budget_flops_ratio=budget.flops, title=title,
        score_name=score_name,
    )  # fmt: skip
    plot_progress(trials, run_dir / "progress.png", budget_note=budget.label(), score_name=score_name)
    if (run_dir / "gates.csv").is_file():
        plot_gates(pd.read_csv(run_dir / "gates.csv"), run_dir / "gates.png", title=f"gate supernet: {title}")
    best = best_arch(trials)
    if best is not None:
        plot_widths(
            space.dense(),
            json.loads(best["widths"]),
            run_dir / "widths.png",
            title=f"best architecture (trial {int(best['trial_id'])}): kept channels per group",
        )
    return front


def print_summary(
    run_dir: Path, trials: pd.DataFrame, front: pd.DataFrame, fidelity: dict, cfg, in_band
) -> None:
    """The end-of-run summary: counts, the ladder's fidelity and throughput, the front, what next."""
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    proposed = trials[trials["source"].isin(PROPOSAL_SOURCES)]
    infeasible = (proposed["state"] == "infeasible").mean() if len(proposed) else 0.0
    model_share = proposed["source"].isin(MODEL_SOURCES).mean() if len(proposed) else 0.0
    sampler = fidelity["sampler"]
    print(
        f"\nCandidates: {len(trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
        f"{infeasible:.1%} of proposals infeasible; {model_share:.0%} of proposals and "
        f"{sampler['model_share'] or 0:.0%} of rung-0 candidates chosen by the sampler's model (not a seed, "
        f"its random start-up or a draw after a repeat); {sampler['repeated_proposals']} repeated proposals skipped."
    )
    if in_band is not None:
        print(
            f"At the budget: {in_band:.0%} of budget-level candidates within {cfg.budget_band:.0%} under it."
        )
    print("Fidelity ladder (fidelity.json):")
    for r in fidelity["rungs"]:
        rate = f"{r['per_hour']:.0f}/hour" if r["per_hour"] else "-"
        print(
            f"  rung {r['rung']} ({r['epochs']:.3g} epochs): {r['evaluated']} evaluated, {rate} of worker time"
        )
    for p in fidelity["correlations"]:
        if p["kendall"] is not None:
            print(
                f"  rung {p['lower']} -> {p['upper']} on {p['n']}: Kendall {p['kendall']:.2f}, Spearman {p['spearman']:.2f}"
            )
    for name, agreement in fidelity["judges"].items():
        if isinstance(agreement, dict) and agreement["kendall"] is not None:
            print(
                f"  {'both judges (mean rank)' if name == 'both' else name + ' judge'} (rung 0) -> top rung on "
                f"{agreement['n']}: Kendall {agreement['kendall']:.2f}, "
                f"Spearman {agreement['spearman']:.2f}"
            )
    if fidelity["overhead_share"] is not None:
        print(
            f"  Ray + Optuna overhead (the driver's time): {fidelity['overhead_share']:.1%} of evaluation time; "
            f"workers idle {fidelity['idle_share']:.1%} of it (rung ends included)"
        )
    if fidelity["warning"]:
        print(f"  warning: {fidelity['warning']}")
    if len(front):
        shown = public_trials(front)  # the score column as the file names it (val_score for a task's score)
        score = f"val_{front.attrs.get('score_key', 'accuracy')}"
        cols = [
            "trial_id",
            "source",
            score,
            "rung0_accuracy",
            "flops_ratio",
            "params_ratio",
            "latency_ms",
            "epochs",
        ]
        print("\nPareto front at the top rung (pareto.csv):")
        print(shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"\nNext: python -m nas_prune.retrain {run_dir}   (trains best_arch.json from scratch)")
    else:
        print("\nNo complete feasible candidate at the top rung yet: more --trials or a looser budget.")
    print(
        "Scale up: --trials (rung-0 candidates), --epochs-per-trial, --workers, --device cuda "
        "--gpus-per-trial 0.5, --ray-address HOST:PORT (a Ray cluster)."
    )
