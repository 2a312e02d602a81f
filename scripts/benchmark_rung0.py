"""Benchmark: rung-0 throughput (candidates per hour on one worker) of the default search's judge.

    python scripts/benchmark_rung0.py [--models convnet resnet20] [--candidates 40] [--threads 1]
        [--output results/rung0_throughput.csv]

For each model: random dense weights (timing does not depend on them), the default search space, and
``--candidates`` random architectures at 30% of the FLOPs, each scored once by
:class:`nas_prune.objective.CandidateEvaluator` (slim, adaptive BN, validation score) on the whole
Fashion-MNIST validation split, as a rung-0 worker does. The first two scores warm up and are not
counted. Writes one CSV row per model with the median seconds per candidate and candidates per hour.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch

from nas_prune.cost import CostModel
from nas_prune.data import load_dataset
from nas_prune.models import create_model, model_spec
from nas_prune.objective import CandidateEvaluator, TrialSettings
from nas_prune.space import Budget, WidthSpace


def _on_budget(space: WidthSpace, cost: CostModel, rng: random.Random, count: int) -> list[dict]:
    """``count`` random architectures scaled under 30% of the FLOPs (uniform scale on the random draw)."""
    budget, archs = Budget(flops=0.3), []
    while len(archs) < count:
        widths = space.random(rng)
        if budget.met(*cost.cost(widths), *cost.dense):
            archs.append(widths)
            continue
        for level in (0.8, 0.6, 0.45, 0.3, 0.2, 0.1):
            shrunk = space.snap({n: max(1, int(w * level)) for n, w in widths.items()})
            if budget.met(*cost.cost(shrunk), *cost.dense):
                archs.append(shrunk)
                break
    return archs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["convnet", "resnet20"])
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="results/rung0_throughput.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", seed=0)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, in_channels=data.in_channels, num_classes=data.num_classes)
        example = torch.zeros(2, *data.input_shape)
        _, space = WidthSpace.of_model(name, model, example)
        archs = _on_budget(space, CostModel(model, example), random.Random(0), args.candidates + 2)
        settings = TrialSettings(
            spec=model_spec(name, data.in_channels, data.num_classes, data.input_shape),
            dense_state=model.state_dict(),
            dataset="fashion-mnist",
            threads=args.threads,
        )
        evaluator = CandidateEvaluator(settings)
        seconds = []
        for i, widths in enumerate(archs):
            tick = time.perf_counter()
            evaluator(widths, 0.0, i)
            if i >= 2:
                seconds.append(time.perf_counter() - tick)
        median = statistics.median(seconds)
        rows.append(
            {
                "model": name,
                "commit": commit,
                "candidates": len(seconds),
                "threads": args.threads,
                "median_s": round(median, 4),
                "per_hour": round(3600 / median),
                "min_s": round(min(seconds), 4),
                "max_s": round(max(seconds), 4),
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if out.is_file():
        frame = pd.concat([pd.read_csv(out), frame], ignore_index=True)
    frame.to_csv(out, index=False)


if __name__ == "__main__":
    main()
