"""Benchmark: does seeding the search with the gate supernet help, at the same trial count?

    python scripts/benchmark_gates.py [--model convnet] [--budget-flops 0.3] [--trials 48]
        [--epochs-per-trial 0.5] [--gate-epochs 1] [--output results/bench-gates]

Runs two searches that differ only in ``--gate-epochs`` (N vs 0): the first trains (or reuses) the
dense model, the second reuses the first one's ``dense.pt``, so both prune the same network with the
same sampler seed, trial count and fine-tuning. Reports, from each trials.csv: the best complete
feasible validation accuracy, the best of every seed source, the front size and the wall time, and
writes ``OUTPUT/summary.md``. Best-of-N validation accuracy is optimistic (selection on noisy scores);
a difference of a few tenths of a point is within the noise of one short fine-tune.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

import nas_prune


def run(label: str, run_dir: Path, settings: dict) -> tuple[pd.DataFrame, float]:
    start = time.time()
    if (run_dir / "config.yaml").exists():
        trials = nas_prune.search(resume=run_dir, trials=settings["trials"])
    else:
        trials = nas_prune.search(output=str(run_dir), **settings)
    wall = time.time() - start
    print(f"{label}: {wall / 60:.1f} min")
    return trials, wall


def describe(label: str, trials: pd.DataFrame, run_dir: Path, wall: float) -> list[str]:
    done = trials[(trials["state"] == "complete") & trials["feasible"]]
    front = pd.read_csv(run_dir / "pareto.csv")
    best = done.loc[done["val_accuracy"].idxmax()]
    by_source = done.groupby("source")["val_accuracy"].max()
    sources = ", ".join(f"{s} {v:.4f}" for s, v in by_source.items())
    return [
        f"| {label} | {best['val_accuracy']:.4f} | {int(best['trial_id'])} ({best['source']}) | "
        f"{best['flops_ratio']:.3f} | {sources} | {len(front)} | "
        f"{trials['state'].isin(['complete', 'stopped', 'failed']).sum()} | {wall / 60:.1f} |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budget-flops", type=float, default=0.3)
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--epochs-per-trial", type=float, default=0.5)
    parser.add_argument("--gate-epochs", type=float, default=1.0)
    parser.add_argument("--pretrain-epochs", type=float, default=3.0)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--output", default="results/bench-gates")
    args = parser.parse_args()

    out = Path(args.output)
    common = dict(
        model=args.model,
        dataset=args.dataset,
        budget_flops=args.budget_flops,
        trials=args.trials,
        epochs_per_trial=args.epochs_per_trial,
        pretrain_epochs=args.pretrain_epochs,
        subset=args.subset,
    )
    with_gates, wall_a = run("with gates", out / "gates", {**common, "gate_epochs": args.gate_epochs})
    without, wall_b = run(
        "without gates",
        out / "no-gates",
        {**common, "gate_epochs": 0.0, "checkpoint": str(out / "gates" / "dense.pt")},
    )
    lines = [
        f"Gate seeds vs none: {args.model} on {args.dataset}"
        + (f" (subset {args.subset})" if args.subset else "")
        + f", FLOPs budget {args.budget_flops}, {args.trials} rung-0 candidates, top rung {args.epochs_per_trial} "
        f"fine-tuning epochs each, the same dense model and sampler seed; gate supernet {args.gate_epochs:g} "
        "epochs. Validation accuracy (the search never reads the test set).",
        "",
        "| search | best val acc | best trial | its FLOPs ratio | best per source | front size | trained | "
        "wall min |",
        "|---|---|---|---|---|---|---|---|",
        *describe(f"gate-epochs {args.gate_epochs:g}", with_gates, out / "gates", wall_a),
        *describe("gate-epochs 0", without, out / "no-gates", wall_b),
        "",
        "The wall time of the first search includes training the dense model.",
        "",
        "Command: `python " + " ".join(shlex.quote(a) for a in sys.argv) + "`",
    ]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
