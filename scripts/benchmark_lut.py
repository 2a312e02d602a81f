"""Benchmark: does the calibrated latency LUT predict measured latency on random widths of each model?

    python scripts/benchmark_lut.py [--models convnet resnet20 ... pkg.module:factory] [--batch 1 32]
        [--samples 10] [--fit-samples 8] [--draw spanning|independent] [--device cpu|cuda] [--threads T] [--rounds 3]
        [--seed 0] [--cache-dir results/lut] [--output results/lut_benchmark.csv]

For each model (a zoo name or ``pkg.module:factory``; Fashion-MNIST-shaped input 1x28x28, 10
classes; the width space of nas_prune/search_spaces/<model>.yaml for a zoo model, the defaults
otherwise, as a search builds it) and each batch size this builds a LatencyLUT on this
device (entries cached in --cache-dir and reused by later runs), calibrates it on --fit-samples
random architectures of the space (the dense model is always one more) and then
validates it on --samples *other* random architectures (fixed --seed): the errors reported are on
architectures the fit did not see. The architectures are drawn as the search's latency validation
draws them (``WidthSpace.spanning``: a random choice per group around levels stratified from narrow
to dense); ``--draw independent`` takes a uniform choice per group instead, which averages out over
many groups, so ten of them cluster at mid-width. The held-out models are timed a second time, in
new rounds: ``repeat_spearman``, the Spearman of the two timings, is how far the measured order itself
repeats, the ceiling of any predictor's Spearman on that set. The pruned models are measured by ``LatencyLUT.time_pruned``
(nas_prune.prune + measure_latency, i.e. torch.utils.benchmark), in --rounds rounds over all samples
(the dense model, the fit's and the held-out ones together, each round in a new random order), the
fastest kept: the estimator the LUT's entries use, and the one its calibration uses. It also times ``predict(widths, measure_missing=False)`` on the grid (predictions per second,
what a search's budget projection needs).

CPU latency on a shared machine is noisy, and cached entries keep whatever noise they were measured with
(a new --cache-dir starts afresh). Writes --output (one row per model and batch) and
<output stem>_samples.csv (one row per held-out sample), and prints a markdown table. The LUT
may reject candidates on a device only when trusted there (median error <= 15% and Spearman >= 0.9).
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

from nas_prune import NasPruneError, create_model, model_names
from nas_prune.latency import LatencyLUT
from nas_prune.space import WidthSpace

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


def width_space(name: str, model: torch.nn.Module, example: torch.Tensor) -> WidthSpace:
    """The model's search space, built as ``search.build_space`` does with default flags."""
    return WidthSpace.of_model(name, model, example)[1]


def benchmark(name: str, batch: int, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Calibrate the LUT of ``name`` at ``batch`` and validate it on held-out widths."""
    start = time.perf_counter()
    model = create_model(name, in_channels=INPUT_SHAPE[0], num_classes=NUM_CLASSES).eval()
    example = torch.zeros(2, *INPUT_SHAPE)
    space = width_space(name, model, example)
    rng = random.Random(args.seed)
    if args.draw == "spanning":  # as the search's latency validation draws them
        fit, held_out = space.spanning(args.fit_samples, rng), space.spanning(args.samples, rng)
    else:
        fit, held_out = ([space.random(rng) for _ in range(n)] for n in (args.fit_samples, args.samples))
    lut = LatencyLUT(
        model,
        example,
        device=args.device,
        batch=batch,
        cache_dir=args.cache_dir,
        threads=args.threads,
        rounds=args.rounds,
    )
    cached = set(lut.table)
    for widths in fit + held_out:
        lut.kind_sums(widths)  # time every entry before timing the models
    # the fit's and the held-out models in the same rounds: what is compared is timed alike
    timed = [{}, *fit, *held_out]
    measured = dict(zip(map(json.dumps, timed), lut.time_pruned(timed, args.seed), strict=True))
    # the ceiling: how well the measured order repeats when the held-out models are timed again
    again = lut.time_pruned(held_out, args.seed + 1)
    first = pd.Series([measured[json.dumps(w)] for w in held_out])
    repeat = first.rank().corr(pd.Series(again).rank())
    calibration = lut.calibrate(fit, lambda w: measured[json.dumps(dict(w))])
    result = lut.validate(held_out, lambda w: measured[json.dumps(dict(w))])
    fresh = [space.random(rng) for _ in range(200)]  # never seen: entries off the table are estimated
    t0 = time.perf_counter()
    for widths in fresh:
        lut.predict(widths, measure_missing=False)
    per_second = len(fresh) / (time.perf_counter() - t0)
    row = {
        "model": name,
        "device": lut.device_name,
        "batch": batch,
        "fit_samples": len(fit) + 1,
        "samples": args.samples,
        "median_error": result["median_error"],
        "worst_error": result["worst_error"],
        "spearman": result["spearman"],
        "repeat_spearman": float(repeat),
        "held_out_range": max(p["measured_ms"] for p in result["pairs"])
        / min(p["measured_ms"] for p in result["pairs"]),
        "trusted": result["trusted"],
        "fit_median_error": calibration.median_error,
        "fit_worst_error": calibration.worst_error,
        "scales": json.dumps({k: round(v, 4) for k, v in calibration.scales.items()}),
        "constant_ms": calibration.constant_ms,
        "dense_ms": lut.predict({}),
        "predictions_per_s": per_second,
        "entries_measured": len(set(lut.table) - cached),
        "seconds": time.perf_counter() - start,
    }
    pairs = [
        {
            "model": name,
            "batch": batch,
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
    parser.add_argument(
        "--models",
        nargs="+",
        default=model_names(),
        metavar="MODEL",
        help=f"zoo models ({', '.join(model_names())}; default all) or pkg.module:factory, e.g. "
        "foreign_models:cifar_resnet56 (scripts/foreign_models.py)",
    )
    parser.add_argument(
        "--samples", type=int, default=10, help="held-out random widths per model and batch (default 10)"
    )
    parser.add_argument(
        "--fit-samples", type=int, default=8, help="architectures the calibration is fitted to (default 8)"
    )
    parser.add_argument(
        "--draw",
        choices=["spanning", "independent"],
        default="spanning",
        help="how the fit's and held-out architectures are drawn: spanning (default; random per group "
        "around levels stratified from narrow to dense, as the search's latency validation draws "
        "them) or independent (a uniform choice per group: they cluster at mid-width)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
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
    if args.samples < 2 or min(args.batch) < 1 or args.rounds < 1 or args.fit_samples < 1:
        parser.exit(
            2,
            "error: --samples must be >= 2 (Spearman needs two points), --batch, --rounds and "
            "--fit-samples >= 1\n",
        )

    for name in args.models:  # a one-line error before any timing
        try:
            create_model(name, in_channels=INPUT_SHAPE[0], num_classes=NUM_CLASSES)
        except NasPruneError as error:
            parser.exit(2, f"error: {error}\n")

    command = shlex.join(["python", *sys.argv])
    print(f"command: {command}\n", flush=True)
    print(
        "| model | batch | held-out median error | worst | Spearman | repeat Spearman | held-out range "
        "| trusted | fit median | predictions/s | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows, pairs = [], []
    for name in args.models:
        for batch in args.batch:
            row, model_pairs = benchmark(name, batch, args)
            rows.append({**row, "command": command})
            pairs += model_pairs
            cells = [name, batch, f"{row['median_error']:.1%}", f"{row['worst_error']:.1%}"]
            cells += [f"{row['spearman']:.3f}", f"{row['repeat_spearman']:.3f}"]
            cells += [f"{row['held_out_range']:.2f}x", "yes" if row["trusted"] else "no"]
            cells += [
                f"{row['fit_median_error']:.1%}",
                f"{row['predictions_per_s']:.0f}",
                f"{row['seconds']:.0f}",
            ]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    print(f"\ndevice: {rows[0]['device'] if rows else args.device}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(output, index=False)
    pd.DataFrame(pairs).to_csv(output.with_name(f"{output.stem}_samples.csv"), index=False)
    print(f"\nwrote {output} and {output.with_name(f'{output.stem}_samples.csv')}")


if __name__ == "__main__":
    main()
