"""The detection case study in one command: train the dense detector, search its per-layer widths at 30%
of its FLOPs, retrain the best with inherited weights, export it, and write the table and figure.

    python -m examples.detection.run                    # full size: within an hour on 2 CPU cores
    python -m examples.detection.run --size tiny        # seconds: what CI runs

Output (``--output``, default ``results/detection-<size>``): ``dense.pt`` (the dense state_dict),
``search/`` (the search run directory: trials, Pareto front, ``best_arch.json``, ``widths.png``, and
``retrain/inherit-trial<ID>/`` with ``metrics.json``, ``model.pt`` and the export), ``pruned.pt`` (the
retrained state_dict, saved like ``dense.pt`` so their sizes compare), ``case_study.md`` and
``case_study.csv`` (dense vs pruned: mAP@0.5, parameters, model size, FLOPs, CPU latency at batch 1 and
at a large batch with the paired speed-up) and ``kept_channels.png`` (channels kept per layer).

Each step is a function; a rerun reuses what a finished step left (``dense.pt``, a search with a
``best_arch.json``, a finished retrain), so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import nas_prune
from nas_prune import NasPruneError
from nas_prune.atomic import atomic_torch_save, atomic_write_text
from nas_prune.plots import plot_widths
from nas_prune.task import Task, check_task, describe_task

from .task import make_model, make_task

__all__ = ["Settings", "case_study_rows", "main", "plot_kept_channels", "write_case_study"]

SEED_CASE = (
    "the seed case, a pruned YOLOv3 hand detector: 71% fewer FLOPs, 82% fewer parameters, 49% faster, "
    "mAP kept at 0.769, with non-uniform per-layer widths"
)


@dataclass(frozen=True)
class Settings:
    """What one run does; the defaults per size are in :data:`DEFAULTS`."""

    size: str
    output: Path
    epochs: float
    retrain_epochs: float
    trials: int
    epochs_per_trial: float
    rungs: int
    gate_epochs: float
    budget_flops: float = 0.3
    batch_size: int = 64
    lr: float = 0.05
    workers: int = 2
    latency_batch_large: int = 256
    seed: int = 0


DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"epochs": 1, "retrain_epochs": 1, "trials": 6, "epochs_per_trial": 0.5, "rungs": 0,
             "gate_epochs": 0, "workers": 1, "batch_size": 16, "latency_batch_large": 16},
    "full": {"epochs": 12, "retrain_epochs": 6, "trials": 60, "epochs_per_trial": 0.5, "rungs": 1,
             "gate_epochs": 1, "workers": 2, "batch_size": 64, "latency_batch_large": 256},
}  # fmt: skip
"""Per-size defaults; ``full`` is sized for 60 minutes on 2 CPU cores (see README.md)."""


# ---------------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------------


def train_dense(model: nn.Module, task: Task, s: Settings) -> dict[str, Any]:
    """Train the dense detector with nas_prune's loop (SGD, cosine schedule) and save ``dense.pt``; a
    rerun loads it instead. Returns ``{"epochs", "val_score", "seconds"}`` (also in ``dense.json``)."""
    path, record = s.output / "dense.pt", s.output / "dense.json"
    if path.is_file() and record.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return json.loads(record.read_text())
    from nas_prune.train import fit

    start = time.perf_counter()
    fit(model, task, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        val = task.score(model, task.loader("val", 2 * s.batch_size, train=False))
    atomic_torch_save(model.state_dict(), path)
    info = {"epochs": s.epochs, "val_score": val, "seconds": seconds}
    atomic_write_text(record, json.dumps(info, indent=2) + "\n")
    return info


def search_widths(model: nn.Module, task: Task, s: Settings) -> Path:
    """Search per-layer widths at ``budget_flops`` of the dense FLOPs; the run directory. A search that
    already wrote ``best_arch.json`` is reused."""
    run_dir = s.output / "search"
    if (run_dir / "best_arch.json").is_file():
        return run_dir
    trials = nas_prune.search(
        model=model, task=task, budget_flops=s.budget_flops, output=str(run_dir), trials=s.trials,
        epochs_per_trial=s.epochs_per_trial, rungs=s.rungs, gate_epochs=s.gate_epochs,
        workers=s.workers, batch_size=s.batch_size, seed=s.seed, device="cpu",
    )  # fmt: skip
    return Path(trials.attrs.get("run_dir", run_dir))


def retrain_best(run_dir: Path, model: nn.Module, task: Task, s: Settings) -> dict[str, Any]:
    """Fine-tune the best architecture from its inherited filters, measure both models and export the
    pruned one: ``metrics.json`` as a dict (with ``output``, its folder)."""
    from nas_prune.retrain import retrain

    return retrain(
        run_dir, model=model, task=task, init="inherit", epochs=s.retrain_epochs, seed=s.seed,
        batch_size=s.batch_size, latency_batch_large=s.latency_batch_large, device="cpu",
    )  # fmt: skip


def save_pruned_state(metrics: Mapping[str, Any], path: Path) -> Path:
    """The retrained model's state_dict (from its ``model.pt``) saved as ``dense.pt`` is, so the two
    files' sizes compare."""
    payload = torch.load(Path(metrics["output"]) / metrics.get("model_file", "model.pt"), weights_only=True)
    state = payload.get("state_dict", payload) if isinstance(payload, Mapping) else payload
    return atomic_torch_save(state, path)


# ---------------------------------------------------------------------------------------------------
# The case study
# ---------------------------------------------------------------------------------------------------


def _score(m: Mapping[str, Any], split: str) -> float | None:
    """``test_score`` (or ``test_accuracy``, as classification names it) of a metrics record."""
    value = m.get(f"{split}_score", m.get(f"{split}_accuracy"))
    return None if value is None else float(value)


def case_study_rows(metrics: Mapping[str, Any], dense_bytes: int, pruned_bytes: int) -> list[dict[str, Any]]:
    """The table, dense vs pruned, from retrain's ``metrics.json`` and the two state_dict file sizes: one
    row per figure with ``dense``, ``pruned``, ``ratio`` (pruned / dense; for latency the paired
    speed-up, dense / pruned, the median of interleaved rounds) and ``change`` (in words)."""
    dense = metrics["dense"]
    rows = []
    for split in ("test", "val"):
        d, p = _score(dense, split), _score(metrics, split)
        change = "" if d is None or p is None else f"{p - d:+.4f}"
        rows.append(_row(f"mAP@0.5 ({split})", d, p, "{:.4f}", change))
    sizes = (
        ("parameters", dense["params"], metrics["params"], "fewer"),
        ("FLOPs per image", dense["flops"], metrics["flops"], "fewer"),
        ("model size (bytes, state_dict file)", dense_bytes, pruned_bytes, "smaller"),
    )
    for name, d, p, word in sizes:
        rows.append(_row(name, d, p, "{:,.0f}", f"{1 - p / d:.0%} {word}"))
    for key, speed, batch in (
        ("latency_ms", "speedup", "latency_batch"),
        ("latency_large_ms", "speedup_large", "latency_large_batch"),
    ):
        ratio = metrics.get(speed)
        change = (
            ""
            if ratio is None
            else (
                f"{ratio:.2f}x faster (paired; rounds {metrics[speed + '_low']:.2f}-{metrics[speed + '_high']:.2f})"
            )
        )
        name = f"CPU latency, batch {metrics.get(batch, dense.get(batch))} (ms)"
        rows.append(_row(name, dense.get(key), metrics.get(key), "{:.3f}", change, ratio))
    return rows


def _row(
    name: str, dense: Any, pruned: Any, fmt: str, change: str, ratio: float | None = None
) -> dict[str, Any]:
    """One row of the table; ``ratio`` defaults to pruned / dense."""
    if ratio is None and dense and pruned is not None:
        ratio = pruned / dense
    return {"figure": name, "dense": dense, "pruned": pruned, "ratio": ratio, "change": change,
            "dense_text": _fmt(dense, fmt), "pruned_text": _fmt(pruned, fmt)}  # fmt: skip


def _fmt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def write_case_study(
    out: Path,
    metrics: Mapping[str, Any],
    rows: list[dict[str, Any]],
    notes: Sequence[str],
    budget: float = 0.3,
) -> tuple[Path, Path]:
    """``case_study.csv`` (the rows) and ``case_study.md`` (the table, then how it was made)."""
    fields = ["figure", "dense", "pruned", "ratio", "change"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "case_study.csv", buffer.getvalue())
    lines = ["# Detection case study: dense vs pruned TinyYolo", "",
             f"Searched at {budget:.0%} of the dense FLOPs, the best architecture retrained with inherited weights; "
             f"compare {SEED_CASE}.", "",
             "| | dense | pruned | change |", "| --- | ---: | ---: | --- |"]  # fmt: skip
    lines += [f"| {r['figure']} | {r['dense_text']} | {r['pruned_text']} | {r['change']} |" for r in rows]
    lines += ["", f"Latency device: {metrics.get('latency_device', 'n/a')}.", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", "Channels kept per layer: `kept_channels.png`.", ""]
    atomic_write_text(out / "case_study.md", "\n".join(lines))
    return out / "case_study.md", out / "case_study.csv"


def plot_kept_channels(
    model: nn.Module, example: Any, widths: Mapping[str, int], path: Path, budget: float = 0.3
) -> Path:
    """Bars of the dense model's channels per group (network order) with the pruned model's in front."""
    dense = {g.name: g.channels for g in nas_prune.channel_groups(model, example)}
    return plot_widths(
        dense, dict(widths), path, title=f"TinyYolo: channels kept per layer ({budget:.0%} FLOPs)"
    )


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """The settings from the command line (per-size defaults for what is not given)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.detection.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--size", choices=sorted(DEFAULTS), default="full", help="tiny (CI) or full (the case study)"
    )
    parser.add_argument("--output", type=Path, help="output folder (default results/detection-<size>)")
    parser.add_argument("--epochs", type=float, help="dense training epochs")
    parser.add_argument("--retrain-epochs", type=float, help="fine-tuning epochs of the pruned model")
    parser.add_argument("--trials", type=int, help="candidates the search scores")
    parser.add_argument("--workers", type=int, help="Ray workers of the search")
    parser.add_argument("--budget-flops", type=float, default=0.3, help="fraction of the dense FLOPs kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and search")
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "size"}
    merged = {**DEFAULTS[args.size], **given}
    merged.setdefault("output", Path("results") / f"detection-{args.size}")
    return Settings(size=args.size, **merged)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the case study; returns the retrained model's metrics."""
    s = parse_args(argv)
    s.output.mkdir(parents=True, exist_ok=True)
    task, model = make_task(s.size), make_model(s.size)
    check_task(task, model)
    print(describe_task(task), flush=True)
    dense = train_dense(model, task, s)
    print(f"dense: val mAP@0.5 {dense['val_score']:.4f} after {dense['epochs']} epochs", flush=True)
    run_dir = search_widths(model, task, s)
    metrics = retrain_best(run_dir, model, task, s)
    pruned_path = save_pruned_state(metrics, s.output / "pruned.pt")
    rows = case_study_rows(metrics, (s.output / "dense.pt").stat().st_size, pruned_path.stat().st_size)
    notes = [
        f"Dense: {s.epochs} epochs of {task.size('train')} canvases; search: {s.trials} candidates; "
        f"pruned: {s.retrain_epochs} epochs fine-tuning the inherited filters (lr {metrics.get('lr')}).",
        f"Search run: `{run_dir}`; retrained model and export: `{metrics['output']}`.",
    ]
    md, _ = write_case_study(s.output, metrics, rows, notes, s.budget_flops)
    plot_kept_channels(
        model, task.example(), metrics["widths"], s.output / "kept_channels.png", s.budget_flops
    )
    print(md.read_text(), flush=True)
    return metrics


if __name__ == "__main__":
    try:
        main()
    except NasPruneError as err:  # bad settings, data or task: one line, as nas_prune's commands do
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
