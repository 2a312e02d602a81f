"""Benchmark: does the search's top-rung best beat its seeds, and does the ladder work?

    python scripts/benchmark_search.py [--model resnet20] [--budget-flops 0.3] [--trials 240]
        [--epochs-per-trial 0.5] [--pretrain-epochs 1] [--gate-epochs 0] [--time-budget 420]
        [--seed 0] [--workers 2] [--output results/bench-search-resnet20-seed0]

Runs one search on Fashion-MNIST (resumed if its folder exists) and writes ``<output>/summary.md``: the
best complete feasible candidate at the top rung against every seed at the same rung (same fine-tuning:
seeds always climb every rung), whether the best is a seed, rung-0 throughput, overhead, infeasible
share, the share of budget-level candidates within the budget band, and the rank correlations between
rungs (fidelity.json). Validation accuracy of the best of N candidates is optimistic (selection on noisy
scores); scripts/benchmark.py settles claims on the test set with several seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nas_prune

SEEDS = ("uniform", "l2", "sensitivity", "gates")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budget-flops", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=240)
    parser.add_argument("--epochs-per-trial", type=float, default=0.5)
    parser.add_argument("--pretrain-epochs", type=float, default=1.0)
    parser.add_argument("--gate-epochs", type=float, default=0.0)
    parser.add_argument("--time-budget", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    run = Path(args.output or f"results/bench-search-{args.model}-seed{args.seed}")
    start = time.time()
    common = dict(trials=args.trials, time_budget=args.time_budget)
    if (run / "config.yaml").exists():
        trials = nas_prune.search(resume=run, **common)
    else:
        trials = nas_prune.search(
            model=args.model, dataset=args.dataset, budget_flops=args.budget_flops,
            epochs_per_trial=args.epochs_per_trial, pretrain_epochs=args.pretrain_epochs,
            gate_epochs=args.gate_epochs, seed=args.seed, workers=args.workers, output=str(run), **common,
        )  # fmt: skip
    wall = time.time() - start
    fidelity = json.loads((run / "fidelity.json").read_text())
    top = trials[(trials["state"] == "complete") & trials["feasible"]]
    top = top[top["rung"] == top["rung"].max()]
    best = top.loc[top["val_accuracy"].idxmax()]
    rows = [("best at the top rung", best)] + [
        (f"seed {s}", r) for s in SEEDS for _, r in top[top["source"] == s].iterrows()
    ]
    proposals = trials[~trials["source"].isin(SEEDS)]
    rung0 = fidelity["rungs"][0]
    lines = [
        f"Search benchmark: {args.model} on {args.dataset}, FLOPs budget {args.budget_flops}, seed {args.seed}, "
        f"{int(trials['rung0_accuracy'].notna().sum())} candidates at rung 0, ladder epochs "
        f"{[r['epochs'] for r in fidelity['rungs']]}, {args.workers} workers, wall {wall / 60:.1f} min",
        "",
        "| architecture | trial | source | top-rung val acc | rung-0 val acc | FLOPs ratio | params ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {int(r['trial_id'])} | {r['source']} | {r['val_accuracy']:.4f} | {r['rung0_accuracy']:.4f} | "
        f"{r['flops_ratio']:.3f} | {r['params_ratio']:.3f} |"
        for label, r in rows
    ]
    pairs = "; ".join(
        f"rung {p['lower']}->{p['upper']} n={p['n']} Kendall {p['kendall']:.2f} Spearman {p['spearman']:.2f}"
        for p in fidelity["correlations"] if p["kendall"] is not None
    )  # fmt: skip
    lines += [
        "",
        f"Best is a seed: {best['source'] in SEEDS}. Rung 0: {rung0['evaluated']} evaluated at "
        f"{rung0['per_hour'] or 0:.0f}/hour of worker time; overhead {fidelity['overhead_share'] or 0:.1%}; "
        f"infeasible {(proposals['state'] == 'infeasible').mean():.1%} of proposals; "
        f"{(fidelity.get('budget_band_share') or 0):.0%} of budget-level candidates within the band. {pairs}.",
    ]
    text = "\n".join(lines) + "\n"
    (run / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
