"""Benchmark: what does a latency budget buy over a FLOPs budget, at the same accuracy? (issue 12, item 6)

    python scripts/benchmark_speedup.py [--models resnet20 mobilenetv2] [--batch 1 256] [--goal 1.5 2.5]
        [--time-batch 1 256] [--budget-flops 0.3] [--round-to 8] [--subset 12000] [--pretrain-epochs 1]
        [--time-budget 240]
        [--rounds 5] [--threads T] [--seed 0] [--seeds uniform l2 sensitivity] [--output results/speedup]

For each model, on Fashion-MNIST (a finished run folder is reused, an unfinished one resumed):
1. a FLOPs-budget search (``--budget-flops``, the model's own rounding) trains the dense model;
2. for each batch size B with its goal G (``--batch`` and ``--goal`` pair up), a latency-budget search
   from the same dense model aims at the goal itself: ``--budget-latency 1/G --latency-batch B``, widths
   rounded to ``--round-to`` (hardware-friendly multiples);
3. every search's best (the most accurate feasible architecture at the top rung: the same ladder, the
   same fine-tuning from the same dense model, so their validation accuracies compare) and the narrowest
   model (every group at its smallest width: the per-layer overhead no width can remove) are timed
   against the dense model at every batch size of ``--time-batch`` (default ``--batch``) with
   ``nas_prune.cost.measure_speedup`` (dense and pruned interleaved, median ratio over ``--rounds``
   rounds, with its range).

Writes ``<output>/speedup.csv`` and prints a markdown table. Timing needs an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pandas as pd
import torch

import nas_prune
from nas_prune import NasPruneError, count_macs, create_model, prune
from nas_prune.cost import measure_speedup
from nas_prune.pareto import best_arch
from nas_prune.results import parse_widths, read_trials

INPUT_SHAPE = (1, 28, 28)


def run_search(folder: Path, args: argparse.Namespace, **settings) -> pd.DataFrame:
    """One search into ``folder`` with the benchmark's common settings: reused when finished, resumed
    when started."""
    if (folder / "best_arch.json").exists():  # finished: reused as it is
        return read_trials(folder / "trials.csv")
    common = dict(time_budget=args.time_budget, workers=args.workers)
    if (folder / "config.yaml").exists():
        return nas_prune.search(resume=folder, **common)
    return nas_prune.search(
        dataset="fashion-mnist", subset=args.subset or None, gate_epochs=0, seeds=tuple(args.seeds), seed=args.seed,
        output=str(folder), **common, **settings,
    )  # fmt: skip


def searches(name: str, args: argparse.Namespace) -> list[tuple[str, pd.Series]]:
    """``(label, best trial)`` of the FLOPs search and of one latency search per batch size."""
    root = Path(args.output) / name

    def best_of(label: str, trials: pd.DataFrame) -> tuple[str, pd.Series | None]:
        best = best_arch(trials)
        if best is None:  # a row in the table all the same
            print(f"| {name} | {label}: no feasible architecture at the top rung | | | | | | |", flush=True)
        return label, best

    flops = run_search(
        root / "flops", args, model=name, budget_flops=args.budget_flops, pretrain_epochs=args.pretrain_epochs
    )
    found = [best_of(f"FLOPs budget {args.budget_flops:g}", flops)]
    for batch, goal in zip(args.batch, args.goal, strict=True):
        label = f"latency budget 1/{goal:g} at batch {batch}, round_to {args.round_to}"
        try:
            trials = run_search(
                root / f"latency-b{batch}", args, model=name, checkpoint=str(root / "flops" / "dense.pt"),
                budget_latency=f"{1 / goal:.4g}", latency_batch=batch, round_to=args.round_to,
            )  # fmt: skip
        except NasPruneError as error:  # e.g. even the narrowest architecture is over the limit
            print(f"| {name} | {label}: unreachable ({error}) | | | | | | |", flush=True)
            found.append((f"{label}: unreachable", None))
            continue
        limit = json.loads((root / f"latency-b{batch}" / "latency.json").read_text())
        found.append(best_of(f"{label} (LUT trusted: {limit.get('trusted')})", trials))
    return found


def measure(name: str, args: argparse.Namespace) -> list[dict]:
    """One row per architecture (each search's best, the narrowest) and batch size."""
    model = create_model(name, in_channels=INPUT_SHAPE[0], num_classes=10).eval()
    example = torch.zeros(2, *INPUT_SHAPE)
    dense_macs = count_macs(model, example)[0]
    architectures = [
        (label, None if best is None else best["val_accuracy"], None if best is None else parse_widths(best["widths"]))
        for label, best in searches(name, args)
    ]  # fmt: skip
    architectures.append(("narrowest (1 channel per group)", None, 1e-6))
    rows = []
    for label, accuracy, widths in architectures:
        if widths is None:  # unreachable, or no feasible candidate at the top rung (printed by searches)
            rows.append({"model": name, "architecture": label, "batch": None, "speedup": None})
            continue
        slim = prune(model, example, widths)
        flops_ratio = count_macs(slim, example)[0] / dense_macs
        for batch in args.time_batch or args.batch:
            timing = {"threads": args.threads, "warmup": 3, "repeats": 10 if batch > 32 else 30}
            speed = measure_speedup(model, slim, example, "cpu", batch, args.rounds, **timing)
            rows.append(
                {
                    "model": name, "architecture": label, "batch": batch, "val_accuracy": accuracy,
                    "flops_ratio": flops_ratio, "speedup": speed.ratio,
                    "speedup_low": speed.low, "speedup_high": speed.high, "dense_ms": speed.dense_ms,
                    "pruned_ms": speed.pruned_ms, "widths": json.dumps(widths) if isinstance(widths, dict) else "",
                }
            )  # fmt: skip
            print_row(rows[-1])
    return rows


def print_row(r: dict) -> None:
    accuracy = "" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
    print(
        f"| {r['model']} | {r['architecture']} | {accuracy} | {r['flops_ratio']:.1%} | {r['batch']} | "
        f"{r['speedup']:.2f}x ({r['speedup_low']:.2f}-{r['speedup_high']:.2f}) | {r['dense_ms']:.3f} | "
        f"{r['pruned_ms']:.3f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 256], help="batch sizes (default 1 256)")
    parser.add_argument(
        "--goal", type=float, nargs="+", default=[1.5, 2.5], help="speed-up goal per batch size"
    )
    parser.add_argument("--time-batch", type=int, nargs="+", help="batch sizes timed (default: --batch)")
    parser.add_argument("--budget-flops", type=float, default=0.3)
    parser.add_argument("--round-to", type=int, default=8, help="width multiple of the latency searches")
    parser.add_argument(
        "--subset", type=int, default=12000, help="training images the searches use (default 12000; 0 = all)"
    )
    parser.add_argument("--pretrain-epochs", type=float, default=1.0)
    parser.add_argument("--time-budget", type=float, default=240.0, help="seconds of ladder per search")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument(
        "--threads", type=int, help="CPU threads of the timing (default: torch's, as the searches)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        nargs="+",
        default=["uniform", "l2", "sensitivity"],
        help="seed architectures of every search",
    )
    parser.add_argument("--output", default="results/speedup")
    args = parser.parse_args()
    if len(args.goal) != len(args.batch) or min(args.goal) <= 1 or min(args.batch) < 1 or args.rounds < 1:
        parser.exit(2, "error: one --goal (> 1) per --batch (>= 1), and --rounds >= 1\n")
    print(f"command: {shlex.join(['python', *sys.argv])}\n")
    print(
        "| model | architecture | top-rung val acc | FLOPs | batch | speed-up (range) | dense ms | pruned ms |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    try:
        rows = [row for name in args.models for row in measure(name, args)]
    except NasPruneError as error:  # bad settings (a model, a budget, --subset): one line, not a traceback
        parser.exit(2, f"error: {error}\n")
    output = Path(args.output) / "speedup.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(output, index=False)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
