"""Benchmark: seconds per epoch and accuracy of the dense zoo models, to size later runs.

    python scripts/benchmark_dense.py --epochs 1 [--models convnet resnet20 ...] [--dataset fashion-mnist]

Trains each model from scratch with the default recipe (SGD + Nesterov, cosine, batch 128) and prints
one markdown table row per model (also written to results/dense_zoo.md). Test accuracy is measured
once, after training. Numbers go into results/BENCHMARKS.md by hand, with this command.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nas_prune.config import hardware_info
from nas_prune.cost import count_macs
from nas_prune.data import load_dataset
from nas_prune.models import create_model, model_names
from nas_prune.train import evaluate, fit, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=model_names(), help="zoo models (default: all)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="results/dense_zoo.md")
    args = parser.parse_args()

    device = resolve_device(args.device)
    data = load_dataset(args.dataset)
    name = hardware_info()["gpu"] if device.type == "cuda" else hardware_info()["cpu"]
    header = (
        f"Dense zoo on {data.name}, {args.epochs:g} epoch(s), {device.type} ({name}), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n\n"
        "| model | MMACs | params | s/epoch | val acc | test acc |\n|---|---|---|---|---|---|"
    )
    print(header, flush=True)
    rows = []
    for model_name in args.models:
        model = create_model(model_name, in_channels=data.in_channels, num_classes=data.num_classes)
        macs, params = count_macs(model, torch.zeros(2, *data.input_shape))
        start = time.perf_counter()
        history = fit(model, data, epochs=args.epochs, device=device, progress=False)
        per_epoch = sum(h["train_seconds"] for h in history) / args.epochs
        test = evaluate(model, data.loader("test", 512, train=False), device=device)["accuracy"]
        row = (
            f"| {model_name} | {macs / 1e6:.1f} | {params / 1e6:.2f}M | {per_epoch:.0f} | "
            f"{history[-1]['val_accuracy']:.4f} | {test:.4f} |"
        )
        rows.append(row)
        print(row, f"(wall {time.perf_counter() - start:.0f} s)", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(header + "\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
