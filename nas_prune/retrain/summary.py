"""The comparison of every retrained variant with the dense model: the printed table of one retrain,
``RUN_DIR/retrain/summary.csv`` and ``summary.png``."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import atomic_write_text
from ..task import score_key

__all__ = ["SUMMARY_COLUMNS", "TOP_FILE", "print_comparison", "write_summary"]

TOP_FILE = "top.json"  # which finalist of each ``--top K`` retrain was picked

SUMMARY_COLUMNS = [
    "name",
    "trial_id",
    "init",
    "distill",
    "budget_matched",
    "seed",
    "epochs",
    "test_accuracy",
    "val_accuracy",
    "macs",
    "flops",
    "params",
    "latency_ms",
    "latency_large_ms",
    "speedup",
    "speedup_large",
    "dense_latency_ms",
    "dense_latency_large_ms",
    "speedup_low",
    "speedup_high",
    "speedup_large_low",
    "speedup_large_high",
    "inherit_from",
    "top_pick",
]


def print_comparison(metrics: Mapping[str, Any], out: Path, summary: Path, say: Callable[..., None]) -> None:
    """The dense and the retrained model side by side, with the speed-ups' ranges and the files written."""
    dense = metrics["dense"]
    key = score_key(metrics.get("score_name", "accuracy"))
    b, big = metrics["latency_batch"], metrics["latency_large_batch"]
    header = (
        f"{'':<28} {'test acc' if key == 'accuracy' else 'test ' + metrics['score_name']:>8} {'MMACs':>9} {'params':>10} {f'ms (b={b})':>11} {'speed-up':>8} "
        f"{f'ms (b={big})':>12} {'speed-up':>8}"
    )
    say(header)
    for label, m, up, up_large in (
        ("dense", dense, 1.0, 1.0),
        (metrics["name"], metrics, metrics["speedup"], metrics["speedup_large"]),
    ):
        say(
            f"{label:<28} {_shown(m.get(f'test_{key}')):>8} {m['macs'] / 1e6:>9.2f} {m['params']:>10,} "
            f"{m['latency_ms']:>11.3f} {up:>7.2f}x {m['latency_large_ms']:>12.2f} {up_large:>7.2f}x"
        )
    say(
        f"speed-ups: median of {metrics['speedup_rounds']} rounds timing dense and pruned back to back; "
        f"range {metrics['speedup_low']:.2f}-{metrics['speedup_high']:.2f}x (b={b}), "
        f"{metrics['speedup_large_low']:.2f}-{metrics['speedup_large_high']:.2f}x (b={big})"
    )
    files = ["model.pt", "metrics.json"] + ([metrics["export"]] if metrics.get("export") else [])
    say(f"files: {out}/ ({', '.join(files)}); summary: {summary / 'summary.csv'}, summary.png")


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _summary_row(
    name: str, m: Mapping[str, Any], dense: Mapping[str, Any], picks: Mapping[str, bool] | None = None
) -> dict[str, Any]:
    """One variant's row; its speed-up is against the dense latency timed in the same rounds. The
    score columns are called ``*_accuracy`` here whatever the task's score (see :func:`write_summary`);
    ``picks``: finalist name -> whether its ``--top K`` retrain picked it."""
    key = score_key(m.get("score_name", "accuracy"))
    speedup = m.get("speedup", dense["latency_ms"] / m["latency_ms"])  # older files: one timing each
    speedup_large = m.get("speedup_large", dense["latency_large_ms"] / m["latency_large_ms"])
    return {
        "name": name,
        "trial_id": m.get("trial_id"),
        "init": m.get("init"),
        "distill": m.get("distill"),
        "budget_matched": m.get("budget_matched"),
        "seed": m.get("seed"),
        "epochs": m.get("epochs"),
        "test_accuracy": m.get(f"test_{key}"),
        "val_accuracy": m.get(f"val_{key}"),
        "macs": m.get("macs"),
        "flops": m.get("flops"),
        "params": m.get("params"),
        "latency_ms": m.get("latency_ms"),
        "latency_large_ms": m.get("latency_large_ms"),
        "speedup": speedup,
        "speedup_large": speedup_large,
        "dense_latency_ms": dense["latency_ms"],
        "dense_latency_large_ms": dense["latency_large_ms"],
        "speedup_low": m.get("speedup_low", speedup),
        "speedup_high": m.get("speedup_high", speedup),
        "speedup_large_low": m.get("speedup_large_low", speedup_large),
        "speedup_large_high": m.get("speedup_large_high", speedup_large),
        "inherit_from": m.get("inherit_from"),
        "top_pick": (picks or {}).get(name),
    }


def _dense_row(found: list[tuple[float, str, dict, dict]]) -> dict[str, Any]:
    """The dense model's row: its own epochs (from its checkpoint, via the newest metrics.json) and the
    median of the dense latencies timed alongside each variant (each variant's speed-up uses its own)."""
    newest = max(found, key=lambda f: f[0])[3]
    dense = {
        **newest,
        "init": "dense",
        "distill": False,
        "budget_matched": False,
        "latency_ms": float(np.median([d["latency_ms"] for *_, d in found])),
        "latency_large_ms": float(np.median([d["latency_large_ms"] for *_, d in found])),
    }
    dense.update(dict.fromkeys(["speedup", "speedup_large", "speedup_low", "speedup_high"], 1.0))
    dense.update(dict.fromkeys(["speedup_large_low", "speedup_large_high"], 1.0))
    return _summary_row("dense", dense, dense)


def write_summary(retrain_dir: str | os.PathLike) -> pd.DataFrame:
    """Write ``summary.csv`` and ``summary.png`` for every ``retrain_dir/*/metrics.json``.

    One row for the dense model (see :func:`_dense_row`), then one per variant sorted by name. Each
    variant's speed-up is the median ratio of its own dense and pruned latencies timed interleaved in the
    same rounds (``speedup_low``/``_high``: the range over rounds), so speed-ups stay comparable when
    machine load drifts between retrains; ``dense_latency_ms`` is the dense latency of those rounds.

    Returns:
        The summary table (:data:`SUMMARY_COLUMNS`).
    """
    retrain_dir = Path(retrain_dir)
    found = []
    for path in sorted(retrain_dir.glob("*/metrics.json")):
        try:
            m = json.loads(path.read_text())
            _summary_row(path.parent.name, m, m["dense"])  # every figure the table needs is there
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as err:
            warnings.warn(f"skipping {path} in the summary ({type(err).__name__}: {err})", stacklevel=2)
            continue
        found.append((path.stat().st_mtime, path.parent.name, m, m["dense"]))
    rows = []
    if found:
        picks = _top_picks(retrain_dir / TOP_FILE)
        rows.append(_dense_row(found))
        rows.extend(_summary_row(name, m, d, picks) for _, name, m, d in found)
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"trial_id": "Int64", "seed": "Int64"})
    score_name = found[-1][2].get("score_name", "accuracy") if found else "accuracy"
    key = score_key(score_name)
    if key != "accuracy":  # another task's score: test_score and val_score, as in metrics.json
        table = table.rename(columns={"test_accuracy": f"test_{key}", "val_accuracy": f"val_{key}"})
    atomic_write_text(retrain_dir / "summary.csv", table.to_csv(index=False))
    _plot_summary(table, retrain_dir / "summary.png", score_name)
    return table


def _top_picks(path: Path) -> dict[str, bool]:
    """Finalist name -> picked, from ``top.json`` (empty without one)."""
    try:
        runs = json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}
        return {f["name"]: f["name"] == r["picked"] for r in runs.values() for f in r["finalists"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        warnings.warn(f"ignoring {path} in the summary ({type(err).__name__}: {err})", stacklevel=3)
        return {}


def _plot_summary(table: pd.DataFrame, path: Path, score_name: str = "accuracy") -> Path:
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing left open

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.margins(x=0.15, y=0.2)  # room for the labels
    if table.empty:
        ax.text(0.5, 0.5, "no retrained model yet", transform=ax.transAxes, ha="center", va="center")
    colors = {"dense": "black", "scratch": "C0", "inherit": "C1"}
    seen: dict[float, int] = {}  # variants of one architecture share their MACs: alternate label sides
    column = f"test_{score_key(score_name)}"
    for _, row in table.iterrows():
        dense = row["name"] == "dense"
        nth = seen[row["macs"]] = seen.get(row["macs"], -1) + 1
        marker = (
            "*" if dense else ("^" if bool(row["distill"]) else ("s" if bool(row["budget_matched"]) else "o"))
        )
        ax.scatter(
            row["macs"] / 1e6,
            row[column],
            s=160 if dense else 60,
            marker=marker,
            color=colors.get(str(row["init"]), "C2"),
            edgecolor="black",
            linewidth=0.5,
            zorder=3,
        )
        note = row["name"] if dense else f"{row['name']}\n{row['speedup']:.2f}x faster"
        ax.annotate(note, (row["macs"] / 1e6, row[column]), textcoords="offset points",
                    xytext=(-6 if nth % 2 else 6, 4), ha="right" if nth % 2 else "left", fontsize=7)  # fmt: skip
    ax.set_xlabel("MMACs per sample")
    ax.set_ylabel(f"test {score_name}")
    ax.grid(alpha=0.3)
    legend = [("dense", "black", "*"), ("scratch", "C0", "o"), ("inherit (fine-tune)", "C1", "o"),
              ("distilled", "white", "^"), ("budget-matched", "white", "s")]  # fmt: skip
    for label, color, marker in legend:
        ax.scatter([], [], marker=marker, color=color, edgecolor="black", linewidth=0.5, label=label)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(
        f"Retrained architectures: test {score_name} vs MACs\n(speed-up = dense latency / latency, "
        "measured back to back)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, format="png")
    fig.clear()
    return path
