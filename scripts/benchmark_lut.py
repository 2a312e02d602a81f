"""Benchmark: does the per-layer latency LUT predict measured latency on random widths of each zoo model?

    python scripts/benchmark_lut.py [--models convnet resnet20 ...] [--samples 10] [--device cpu|cuda]
        [--batch 1] [--threads T] [--rounds 3] [--seed 0] [--cache-dir results/lut]

For each model (Fashion-MNIST-shaped input 1x28x28, 10 classes; the width space of
search_spaces/<model>.yaml, as a search builds it) this builds a LatencyLUT on this device (entries cached
in --cache-dir and reused by later runs), draws --samples random widths (fixed --seed), measures each
pruned model (nas_prune.prune + measure_latency, one at a time; the fastest of --rounds medians, the
estimator the LUT uses for its entries) and compares. Run it on an otherwise idle machine: CPU latency is
noisy, and cached entries keep whatever noise they were measured with (a new --cache-dir starts afresh). Writes results/lut_benchmark.csv (one row per model) and results/lut_benchmark_samples.csv (one
row per sample), and prints a markdown table. DESIGN.md: the LUT may reject candidates on a device only
when trusted there (median error <= 15% and Spearman >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from nas_prune import channel_groups, create_model, model_names, prune
from nas_prune.cost import measure_latency
from nas_prune.latency_lut import LatencyLUT
from nas_prune.models import load_search_space
from nas_prune.space import WidthSpace

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


def width_space(name: str, model: torch.nn.Module, example: torch.Tensor) -> WidthSpace:
    """The model's search space, built as ``search.build_space`` does with default flags."""
    yaml_space = load_search_space(name) or {}
    return WidthSpace.build(
        channel_groups(model, example),
        round_to=yaml_space.get("round_to", 1),
        min_fraction=yaml_space.get("min_fraction", 0.1),
        grid=yaml_space.get("grid"),
        frozen=yaml_space.get("frozen", ()),
    )


def benchmark(name: str, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Validate the LUT of ``name`` against measurement; the summary row and the per-sample rows."""
    start = time.perf_counter()
    model = create_model(name, in_channels=INPUT_SHAPE[0], num_classes=NUM_CLASSES).eval()
    example = torch.zeros(2, *INPUT_SHAPE)
    space = width_space(name, model, example)
    rng = random.Random(args.seed)
    samples = [
        space.decode({n: rng.randrange(len(c)) for n, c in space.choices.items()})
        for _ in range(args.samples)
    ]
    lut = LatencyLUT(
        model,
        example,
        device=args.device,
        batch=args.batch,
        cache_dir=args.cache_dir,
        threads=args.threads,
        rounds=args.rounds,
    )
    cached = set(lut.table)

    def measure(widths):
        slim = prune(model, example, widths)
        return min(
            measure_latency(slim, example, device=args.device, batch=args.batch, threads=args.threads)
            for _ in range(args.rounds)
        )

    result = lut.validate(samples, measure)
    row = {
        "model": name,
        "device": lut.device_name,
        "batch": args.batch,
        "samples": args.samples,
        "median_error": result["median_error"],
        "worst_error": result["worst_error"],
        "spearman": result["spearman"],
        "trusted": result["trusted"],
        "constant_ms": lut.constant_ms,
        "entries_measured": len(set(lut.table) - cached),
        "seconds": time.perf_counter() - start,
    }
    pairs = [
        {
            "model": name,
            "sample": i,
            **{k: v for k, v in p.items() if k != "widths"},
            "widths": json.dumps(p["widths"]),
        }
        for i, p in enumerate(result["pairs"])
    ]
    return row, pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=model_names(), choices=model_names(), metavar="MODEL")
    parser.add_argument("--samples", type=int, default=10, help="random widths per model (default 10)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's current setting)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="each pruned model and LUT entry is timed this many times, the fastest kept (default 3)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="results/lut")
    parser.add_argument("--output", default="results/lut_benchmark.csv")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda, but CUDA is not available here\n")
    if args.samples < 2 or args.batch < 1 or args.rounds < 1:
        parser.exit(
            2, "error: --samples must be >= 2 (Spearman needs two points), --batch and --rounds >= 1\n"
        )

    command = shlex.join(["python", *sys.argv])
    print(f"command: {command}\n", flush=True)
    print("| model | device | batch | median error | worst error | Spearman | trusted | seconds |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    rows, pairs = [], []
    for name in args.models:
        row, model_pairs = benchmark(name, args)
        rows.append({**row, "command": command})
        pairs += model_pairs
        cells = [name, row["device"], row["batch"], f"{row['median_error']:.1%}", f"{row['worst_error']:.1%}"]
        cells += [f"{row['spearman']:.3f}", "yes" if row["trusted"] else "no", f"{row['seconds']:.0f}"]
        print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(output, index=False)
    pd.DataFrame(pairs).to_csv(output.with_name(f"{output.stem}_samples.csv"), index=False)
    print(f"\nwrote {output} and {output.with_name(f'{output.stem}_samples.csv')}")


if __name__ == "__main__":
    main()
