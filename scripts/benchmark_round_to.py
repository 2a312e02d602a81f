"""Benchmark: does rounding widths to hardware-friendly multiples (``--round-to``) pay on this device?

    python scripts/benchmark_round_to.py [--models resnet20 mobilenetv2] [--fraction 0.5]
        [--round-to 1 8 16] [--batch 1 256] [--device cpu|cuda] [--rounds 5] [--threads T]
        [--output results/round_to.csv]

For each model (1x28x28 input, 10 classes) and batch size, every group keeps ``--fraction`` of its
channels, rounded half up to each ``--round-to`` multiple (``nas_prune.prune(model, x, fraction,
round_to=r)``), and the pruned model's speed-up over the dense one is measured with
``nas_prune.cost.measure_speedup`` (dense and pruned timed interleaved, median ratio over ``--rounds``
rounds, with its range). Rounding changes the FLOPs too, so the table gives both: rounding pays where
the speed-up per FLOPs saved rises. Also prints the narrowest model's time (every group at
``--round-to``'s smallest width) against the dense one: at batch 1 on a CPU that ratio is the per-layer
overhead no width can remove.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd
import torch

from nas_prune import count_macs, create_model, prune
from nas_prune.cost import measure_speedup

INPUT_SHAPE = (1, 28, 28)


def measure(name: str, batch: int, args: argparse.Namespace) -> list[dict]:
    """One row per rounding multiple, plus the narrowest model, for ``name`` at ``batch``."""
    model = create_model(name, in_channels=INPUT_SHAPE[0], num_classes=10).eval()
    example = torch.zeros(2, *INPUT_SHAPE)
    dense_macs = count_macs(model, example)[0]
    timing = {"threads": args.threads, "warmup": 3, "repeats": 10 if batch > 32 else 30}
    variants = [(f"{args.fraction:g} round_to={r}", args.fraction, r) for r in args.round_to]
    variants.append(("narrowest (1 channel per group)", 1e-6, 1))
    rows = []
    for label, fraction, multiple in variants:
        slim = prune(model, example, fraction, round_to=multiple)
        speed = measure_speedup(model, slim, example, args.device, batch, args.rounds, **timing)
        rows.append(
            {
                "model": name,
                "batch": batch,
                "variant": label,
                "flops_ratio": count_macs(slim, example)[0] / dense_macs,
                "speedup": speed.ratio,
                "speedup_low": speed.low,
                "speedup_high": speed.high,
                "dense_ms": speed.dense_ms,
                "pruned_ms": speed.pruned_ms,
                "device": args.device,
            }
        )
        r = rows[-1]
        print(
            f"| {name} | {batch} | {label} | {r['flops_ratio']:.1%} | {r['speedup']:.2f}x "
            f"({r['speedup_low']:.2f}-{r['speedup_high']:.2f}) | {r['dense_ms']:.3f} | {r['pruned_ms']:.3f} |",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    parser.add_argument("--fraction", type=float, default=0.5, help="channels kept per group (default 0.5)")
    parser.add_argument("--round-to", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's current setting)")
    parser.add_argument("--output", default="results/round_to.csv")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda, but CUDA is not available here\n")
    if not 0 < args.fraction <= 1 or min(args.round_to) < 1 or min(args.batch) < 1 or args.rounds < 1:
        parser.exit(2, "error: need 0 < --fraction <= 1 and --round-to, --batch, --rounds >= 1\n")
    print(f"command: {shlex.join(['python', *sys.argv])}\n")
    print("| model | batch | widths | FLOPs | speed-up (range) | dense ms | pruned ms |")
    print("|---|---|---|---|---|---|---|", flush=True)
    rows = [row for name in args.models for batch in args.batch for row in measure(name, batch, args)]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(output, index=False)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
