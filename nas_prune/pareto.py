"""The Pareto front and the best architecture of a search, always derived from its ``trials.csv``.

Only complete, feasible candidates at the top rung reached are compared: a lower rung's score is a
cheaper, lower-fidelity estimate. ``pareto.csv`` and ``best_arch.json`` are rewritten atomically from the
table, never by hand, so they cannot disagree with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_write_text
from .results import NUMERIC_COLUMNS, is_missing, parse_widths, read_trials, write_trials
from .task import score_key

__all__ = ["MAXIMIZED", "best_arch", "pareto_front", "write_best_arch", "write_pareto"]

MAXIMIZED = frozenset({"val_accuracy"})
"""Objectives to maximise; every other objective column is minimised."""


def _check_objectives(objectives: Sequence[str]) -> list[str]:
    objectives = list(objectives)
    bad = [o for o in objectives if o not in NUMERIC_COLUMNS]
    if not objectives or bad:
        raise ValueError(f"objectives must be numeric trial columns, got {objectives}")
    return objectives


def _non_dominated(costs: np.ndarray, block: int = 256) -> np.ndarray:
    """Mask of rows of ``costs`` (all minimised) that no other row dominates; equal rows all survive."""
    keep = np.ones(len(costs), dtype=bool)
    for start in range(0, len(costs), block):
        target = costs[start : start + block]  # (b, k)
        no_worse = (costs[:, None, :] <= target[None, :, :]).all(axis=2)  # (n, b)
        better = (costs[:, None, :] < target[None, :, :]).any(axis=2)
        keep[start : start + block] = ~(no_worse & better).any(axis=0)
    return keep


def _complete_feasible(trials: pd.DataFrame) -> pd.DataFrame:
    """Complete, feasible candidates at the top rung reached: only their scores are comparable."""
    done = trials[(trials["state"] == "complete") & trials["feasible"].astype(bool)]
    rung = done["rung"].fillna(0)
    return done[rung == rung.max()] if len(done) else done


def pareto_front(trials: pd.DataFrame, objectives: Sequence[str] = ("val_accuracy", "flops")) -> pd.DataFrame:
    """Complete, feasible trials at the top rung that no other such trial dominates.

    ``val_accuracy`` is maximised, every other objective (``flops``, ``latency_ms``...) minimised. A
    dominates B when it is no worse in every objective and better in one, so trials with equal
    objective vectors are all kept.

    Returns:
        The front's rows (same columns), sorted by flops then trial_id, with a fresh index.

    Raises:
        ValueError: an objective is not a numeric column, or is empty for a complete feasible trial
            (e.g. latency not measured yet).
    """
    objectives = _check_objectives(objectives)
    candidates = _complete_feasible(trials)
    values = np.column_stack(
        [candidates[o].to_numpy(dtype=float, na_value=np.nan) for o in objectives]
    ).reshape(len(candidates), len(objectives))
    if np.isnan(values).any():
        empty = [o for o, column in zip(objectives, values.T, strict=True) if np.isnan(column).any()]
        raise ValueError(f"objectives {empty} are empty for some complete feasible trials")
    signs = np.array([-1.0 if o in MAXIMIZED else 1.0 for o in objectives])
    front = candidates[_non_dominated(values * signs)]
    return front.sort_values(["flops", "trial_id"], kind="mergesort").reset_index(drop=True)


def write_pareto(
    run_dir: str | os.PathLike, objectives: Sequence[str] = ("val_accuracy", "flops")
) -> pd.DataFrame:
    """Derive ``run_dir/pareto.csv`` from ``run_dir/trials.csv`` (atomically) and return the front.

    Pass ``("val_accuracy", "flops", "latency_ms")`` when the search has a latency budget.
    """
    run_dir = Path(run_dir)
    trials = read_trials(run_dir / "trials.csv")
    front = pareto_front(trials, objectives)
    front.attrs.update(trials.attrs)  # the score column keeps the trials' name
    write_trials(run_dir / "pareto.csv", front)
    return front


def best_arch(trials: pd.DataFrame) -> pd.Series | None:
    """The most accurate complete, feasible trial at the top rung (ties: fewer flops, then lower
    trial_id), or None."""
    candidates = _complete_feasible(trials)
    if candidates.empty:
        return None
    order = candidates.assign(_neg_acc=-candidates["val_accuracy"]).sort_values(
        ["_neg_acc", "flops", "trial_id"], kind="mergesort"
    )
    return candidates.loc[order.index[0]]


def _plain_float(value) -> float | None:
    return None if is_missing(value) else float(value)


def write_best_arch(
    run_dir: str | os.PathLike, *, model: str, dataset: str, dense: Mapping, score_name: str = "accuracy"
) -> dict | None:
    """Write ``run_dir/best_arch.json`` for the best trial of ``run_dir/trials.csv`` and return it.

    Args:
        run_dir: the run directory.
        model: zoo name or ``"pkg.module:factory"``.
        dataset: dataset name or factory.
        dense: the dense model's ``macs`` and ``params`` (required) and ``val_accuracy`` (its validation
            score, whatever the task's score; may be None).
        score_name: the task's score; any other than ``accuracy`` is written as ``val_score`` with
            ``score_name`` beside it (a file without ``score_name`` scores accuracy, as before tasks).

    Returns:
        The JSON content as plain Python types, or None (and no file written) when there is no
        complete, feasible trial yet.
    """
    run_dir = Path(run_dir)
    key = score_key(score_name)
    best = best_arch(read_trials(run_dir / "trials.csv"))
    if best is None:
        return None
    content = {
        "schema_version": 1,  # best_arch.json's own schema, unchanged by trials.csv's version 2
        "model": str(model),
        "dataset": str(dataset),
        "widths": parse_widths(best["widths"]),
        "macs": None if is_missing(best["macs"]) else int(best["macs"]),
        "flops": None if is_missing(best["flops"]) else int(best["flops"]),
        "params": None if is_missing(best["params"]) else int(best["params"]),
        f"val_{key}": float(best["val_accuracy"]),
        **({} if key == "accuracy" else {"score_name": str(score_name)}),
        "trial_id": int(best["trial_id"]),
        "dense": {
            "macs": int(dense["macs"]),
            "params": int(dense["params"]),
            f"val_{key}": _plain_float(dense.get("val_accuracy")),
        },
    }
    atomic_write_text(run_dir / "best_arch.json", json.dumps(content, indent=2) + "\n")
    return content
