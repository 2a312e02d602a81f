"""One schema for ``trials.csv``; ``pareto.csv`` and ``best_arch.json`` are derived from it.

A search records every candidate (complete at the top rung of the fidelity ladder, stopped at a lower
rung, failed or infeasible) as one row of ``trials.csv`` through :func:`append_trial`, updated in place
(:func:`write_trials`) as the candidate climbs the ladder. The Pareto front and the best architecture are always
recomputed from that table, never written by hand, so they cannot disagree with it. Every write
replaces the whole file atomically (temp file in the same directory, then ``os.replace``): a search
killed mid-write leaves the previous, complete table behind. The table has a single writer (the
search driver); concurrent appends from several processes are not supported.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_write_text

__all__ = [
    "LATER_COLUMNS",
    "MAXIMIZED",
    "SCHEMA_VERSION",
    "SEED_SOURCES",
    "SOURCES",
    "STATES",
    "TRIAL_COLUMNS",
    "append_trial",
    "best_arch",
    "pareto_front",
    "parse_widths",
    "read_trials",
    "write_best_arch",
    "write_pareto",
    "write_trials",
]

SCHEMA_VERSION = 2
"""Version 2 (the fidelity ladder) adds ``rung``, ``rung0_accuracy`` and ``level``; version-1 files read
with those empty (``rung`` 0) and their ``pruned`` state read as ``stopped``."""

STATES = ("complete", "stopped", "failed", "infeasible")
"""Candidate states: ``complete`` = reached the rung it was scheduled for, ``stopped`` = not promoted
past a rung, ``infeasible`` = the projection could not meet the budget, never evaluated."""

SOURCES = ("uniform", "l2", "sensitivity", "gates", "optuna", "random")
"""Who proposed the widths: a seed heuristic, the Optuna sampler or random search."""

SEED_SOURCES = ("uniform", "l2", "sensitivity", "gates")
"""The sources that are hand-made seeds rather than sampled proposals."""

MAXIMIZED = frozenset({"val_accuracy"})
"""Objectives to maximise; every other objective column is minimised."""

TRIAL_COLUMNS = [
    "trial_id",
    "state",
    "source",
    "val_accuracy",
    "macs",
    "flops",
    "params",
    "flops_ratio",
    "params_ratio",
    "latency_ms",
    "latency_ratio",
    "latency_device",
    "latency_batch",
    "latency_predicted_ms",
    "epochs",
    "widths",
    "feasible",
    "error",
    "wall_s",
    "schema_version",
    "rung",
    "rung0_accuracy",
    "level",
]

LATER_COLUMNS = ("latency_predicted_ms", "rung", "rung0_accuracy", "level")
"""Columns added after schema version 1 was first written; older files read with them empty."""

_V1_COLUMNS = [c for c in TRIAL_COLUMNS if c not in ("rung", "rung0_accuracy", "level")]

_REQUIRED = ("trial_id", "state", "source", "widths")
_INT_COLUMNS = ("macs", "flops", "params", "latency_batch", "rung")  # nullable: empty when unknown
_FLOAT_COLUMNS = (
    "val_accuracy",
    "flops_ratio",
    "params_ratio",
    "latency_ms",
    "latency_ratio",
    "latency_predicted_ms",
    "epochs",
    "wall_s",
    "rung0_accuracy",
    "level",
)
_STR_COLUMNS = ("state", "source", "latency_device", "widths", "error")
_DTYPES = {
    "trial_id": "int64",
    "schema_version": "int64",
    "feasible": "bool",
    **dict.fromkeys(_INT_COLUMNS, "Int64"),
    **dict.fromkeys(_FLOAT_COLUMNS, "float64"),
    **dict.fromkeys(_STR_COLUMNS, "object"),
}


def parse_widths(value) -> dict[str, int]:
    """Widths as ``{group name: channels}`` from a dict or its JSON text (the ``widths`` column).

    Raises:
        ValueError: not a JSON object of group names to positive integer channel counts.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"widths is not valid JSON: {value!r}") from e
    if not isinstance(value, Mapping):
        raise ValueError(f"widths must be a mapping {{group: channels}}, got {type(value).__name__}")
    widths = {}
    for name, channels in value.items():
        if isinstance(channels, bool) or not _is_integral(channels) or int(channels) < 1:
            raise ValueError(f"widths[{name!r}] must be a positive integer, got {channels!r}")
        widths[str(name)] = int(channels)
    return widths


def _is_missing(value) -> bool:
    if value is None or value is pd.NA or (isinstance(value, str) and value == ""):
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value)


def _is_integral(value) -> bool:
    return isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer()
    )


def _format_int(name: str, value) -> str:
    if isinstance(value, str):
        try:
            value = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError as e:
            raise ValueError(f"{name} must be an integer, got {value!r}") from e
    if isinstance(value, bool) or not _is_integral(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return str(int(value))


def _format_float(name: str, value) -> str:
    try:
        return repr(float(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a number, got {value!r}") from e


def _format_bool(value) -> str:
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"feasible must be a bool, got {value!r}")
        return "True" if value.lower() == "true" else "False"
    if value not in (True, False):  # also accepts numpy bools and 0/1
        raise ValueError(f"feasible must be a bool, got {value!r}")
    return str(bool(value))


def _serialise_row(row: Mapping) -> dict[str, str]:
    """Validate one trial and render every column as CSV text ('' = empty)."""
    unknown = set(row) - set(TRIAL_COLUMNS)
    if unknown:
        raise ValueError(f"unknown trials.csv columns {sorted(unknown)}; the schema is {TRIAL_COLUMNS}")
    values = {k: v for k, v in row.items() if not _is_missing(v)}
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ValueError(f"trial row lacks required columns {missing}")
    if values["state"] not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {values['state']!r}")
    if values["source"] not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {values['source']!r}")
    if int(values.get("schema_version", SCHEMA_VERSION)) not in (1, SCHEMA_VERSION):
        raise ValueError(f"schema_version {values['schema_version']} is not 1 or {SCHEMA_VERSION}")
    values["schema_version"] = SCHEMA_VERSION  # an older row is rewritten in the current schema
    values["widths"] = json.dumps(parse_widths(values["widths"]), separators=(",", ":"))

    text = {column: "" for column in TRIAL_COLUMNS}
    for column, value in values.items():
        if column in ("trial_id", "schema_version", *_INT_COLUMNS):
            text[column] = _format_int(column, value)
        elif column in _FLOAT_COLUMNS:
            text[column] = _format_float(column, value)
        elif column == "feasible":
            text[column] = _format_bool(value)
        else:
            text[column] = str(value)
    if text["macs"]:
        flops = str(2 * int(text["macs"]))
        if text["flops"] and text["flops"] != flops:
            raise ValueError(f"flops must be 2 * macs = {flops}, got {text['flops']}")
        text["flops"] = flops
    text["feasible"] = text["feasible"] or "False"

    state = text["state"]
    for column in ("val_accuracy", "rung0_accuracy"):
        if text[column] and not 0.0 <= float(text[column]) <= 1.0:
            raise ValueError(f"{column} must be in [0, 1], got {text[column]}")
    if text["val_accuracy"]:
        if state in ("infeasible", "failed"):
            raise ValueError(f"a {state} trial has no val_accuracy (got {text['val_accuracy']})")
    elif state == "complete":
        raise ValueError("a complete trial needs val_accuracy")
    if state == "infeasible":
        if text["feasible"] == "True":
            raise ValueError("an infeasible trial cannot have feasible=True")
        text["epochs"] = text["epochs"] or "0.0"
    return text


def _csv_text(rows: Sequence[Mapping[str, str]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _typed(raw: pd.DataFrame) -> pd.DataFrame:
    """Convert an all-text trials table (as read from CSV) to the schema's dtypes."""
    df = pd.DataFrame(index=raw.index)
    for column in TRIAL_COLUMNS:
        text = raw[column].astype(object)
        empty = text == ""
        if column == "feasible":
            df[column] = text.str.lower().eq("true").astype(bool)
        elif column in _STR_COLUMNS:
            df[column] = text
        elif empty.any() and column in ("trial_id", "schema_version"):
            raise ValueError(f"trials.csv has rows without {column}")
        elif column in _FLOAT_COLUMNS:
            df[column] = pd.to_numeric(text.mask(empty)).astype("float64")
        else:  # integers parsed as such, so large counts do not pass through float
            df[column] = pd.array([pd.NA if t == "" else int(t) for t in text], dtype=_DTYPES[column])
    return df


def _empty_trials() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in TRIAL_COLUMNS})


def read_trials(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``trials.csv`` (or ``pareto.csv``) with the schema's dtypes.

    ``trial_id``/``schema_version`` are int64, ``macs``/``flops``/``params``/``latency_batch`` nullable
    Int64, the other numeric columns float64 (NaN when empty), ``feasible`` bool, and text columns
    keep ``""`` for empty. A missing file gives an empty frame with :data:`TRIAL_COLUMNS`.

    Raises:
        ValueError: the file's header is not this schema's.
    """
    path = Path(path)
    if not path.exists():
        return _empty_trials()
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    older = (_V1_COLUMNS, [c for c in TRIAL_COLUMNS if c not in LATER_COLUMNS])
    if any(list(raw.columns) == columns for columns in older):  # a version-1 run
        raw = raw.reindex(columns=TRIAL_COLUMNS, fill_value="")
        raw["state"] = raw["state"].replace("pruned", "stopped")
        raw["rung"] = raw["rung"].mask(raw["rung"] == "", "0")
    if list(raw.columns) != TRIAL_COLUMNS:
        raise ValueError(f"{path} has columns {list(raw.columns)}, expected {TRIAL_COLUMNS}")
    return _typed(raw)


def append_trial(path: str | os.PathLike, row: Mapping) -> None:
    """Validate one trial and append it to ``trials.csv`` (created with a header if absent).

    Args:
        path: the CSV file.
        row: ``{column: value}``; ``trial_id``, ``state``, ``source`` and ``widths`` (dict or JSON
            text) are required; other columns may be left out and stay empty, except ``feasible``
            (False) and, for infeasible trials, ``epochs`` (0). ``flops`` is derived from ``macs``.

    Raises:
        ValueError: an invalid row, or a ``trial_id`` that the file already holds.
    """
    path = Path(path)
    text = _serialise_row(row)
    existing = read_trials(path)
    if int(text["trial_id"]) in set(existing["trial_id"].tolist()):
        raise ValueError(f"trial_id {text['trial_id']} is already in {path}")
    old = path.read_text(encoding="utf-8") if path.exists() else _csv_text([], header=True)
    if not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + _csv_text([text], header=False))


def write_trials(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Atomically rewrite a whole trials table (e.g. after filling in measured latency).

    Every row goes through the same validation as :func:`append_trial`; columns are written in
    :data:`TRIAL_COLUMNS` order.

    Raises:
        ValueError: missing or unknown columns, an invalid row, or duplicated ``trial_id``.
    """
    columns = list(df.columns)
    if set(columns) != set(TRIAL_COLUMNS):
        raise ValueError(f"columns {columns} differ from the schema {TRIAL_COLUMNS}")
    if df["trial_id"].duplicated().any():
        duplicates = sorted(df.loc[df["trial_id"].duplicated(), "trial_id"].tolist())
        raise ValueError(f"duplicated trial_id {duplicates}")
    rows = [_serialise_row(record) for record in df[TRIAL_COLUMNS].to_dict(orient="records")]
    atomic_write_text(path, _csv_text(rows, header=True))


def _check_objectives(objectives: Sequence[str]) -> list[str]:
    objectives = list(objectives)
    numeric = set(_INT_COLUMNS) | set(_FLOAT_COLUMNS)
    bad = [o for o in objectives if o not in numeric]
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
    front = pareto_front(read_trials(run_dir / "trials.csv"), objectives)
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
    return None if _is_missing(value) else float(value)


def write_best_arch(run_dir: str | os.PathLike, *, model: str, dataset: str, dense: Mapping) -> dict | None:
    """Write ``run_dir/best_arch.json`` for the best trial of ``run_dir/trials.csv`` and return it.

    Args:
        run_dir: the run directory.
        model: zoo name or ``"pkg.module:factory"``.
        dataset: dataset name or factory.
        dense: the dense model's ``macs`` and ``params`` (required) and ``val_accuracy`` (may be None).

    Returns:
        The JSON content as plain Python types, or None (and no file written) when there is no
        complete, feasible trial yet.
    """
    run_dir = Path(run_dir)
    best = best_arch(read_trials(run_dir / "trials.csv"))
    if best is None:
        return None
    content = {
        "schema_version": 1,  # best_arch.json's own schema (DESIGN), unchanged by trials.csv's version 2
        "model": str(model),
        "dataset": str(dataset),
        "widths": parse_widths(best["widths"]),
        "macs": None if _is_missing(best["macs"]) else int(best["macs"]),
        "flops": None if _is_missing(best["flops"]) else int(best["flops"]),
        "params": None if _is_missing(best["params"]) else int(best["params"]),
        "val_accuracy": float(best["val_accuracy"]),
        "trial_id": int(best["trial_id"]),
        "dense": {
            "macs": int(dense["macs"]),
            "params": int(dense["params"]),
            "val_accuracy": _plain_float(dense.get("val_accuracy")),
        },
    }
    atomic_write_text(run_dir / "best_arch.json", json.dumps(content, indent=2) + "\n")
    return content
