"""One schema for ``trials.csv``; ``pareto.csv`` and ``best_arch.json`` are derived from it (:mod:`.pareto`).

The score column is ``val_accuracy`` for classification and ``val_score`` for any other task's score
(its name is in ``config.yaml`` and ``best_arch.json``). In memory a trials frame always calls it
``val_accuracy``, with ``frame.attrs["score_key"]`` (``accuracy`` or ``score``) saying which name the
file uses; :func:`read_trials` takes either, :func:`write_trials` writes the frame's.

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

import pandas as pd

from .atomic import atomic_write_text
from .seeds import SEED_SOURCES

__all__ = [
    "LATER_COLUMNS",
    "MODEL_SOURCES",
    "NUMERIC_COLUMNS",
    "PROPOSAL_SOURCES",
    "SCHEMA_VERSION",
    "STATES",
    "TRIAL_COLUMNS",
    "append_trial",
    "is_missing",
    "parse_widths",
    "public_trials",
    "read_trials",
    "sources",
    "write_trials",
]

SCHEMA_VERSION = 2
"""Version 2 (the fidelity ladder) adds ``rung``, ``rung0_accuracy`` and ``level``; version-1 files read
with those empty (``rung`` 0) and their ``pruned`` state read as ``stopped``."""

STATES = ("complete", "stopped", "failed", "infeasible")
"""Candidate states: ``complete`` = reached the rung it was scheduled for, ``stopped`` = not promoted
past a rung, ``infeasible`` = the projection could not meet the budget, never evaluated."""

MODEL_SOURCES = ("evolution", "optuna")
"""Sources of proposals a sampler's model chose: evolution's children of scored parents, TPE's model."""

PROPOSAL_SOURCES = (*MODEL_SOURCES, "random")
"""Sources of sampled proposals (a model's, or random: the random sampler, start-ups and draws after a
repeat); every other ``source`` is a seed kind."""

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
NUMERIC_COLUMNS = frozenset({*_INT_COLUMNS, *_FLOAT_COLUMNS})
"""Columns that can be objectives of a Pareto front."""
_STR_COLUMNS = ("state", "source", "latency_device", "widths", "error")
_DTYPES = {
    "trial_id": "int64",
    "schema_version": "int64",
    "feasible": "bool",
    **dict.fromkeys(_INT_COLUMNS, "Int64"),
    **dict.fromkeys(_FLOAT_COLUMNS, "float64"),
    **dict.fromkeys(_STR_COLUMNS, "object"),
}


def sources() -> tuple[str, ...]:
    """Every valid ``source``: the registered seed kinds (:func:`nas_prune.seeds.register_seed`), then
    :data:`PROPOSAL_SOURCES`. Read at each write, so a seed kind registered later is valid too."""
    return (*SEED_SOURCES, *PROPOSAL_SOURCES)


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


def is_missing(value) -> bool:
    """None, NA, NaN or empty text: a cell left empty in trials.csv."""
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


def _serialise_row(row: Mapping, score_key: str = "accuracy") -> dict[str, str]:
    """Validate one trial and render every column as CSV text ('' = empty)."""
    unknown = set(row) - set(TRIAL_COLUMNS)
    if unknown:
        raise ValueError(f"unknown trials.csv columns {sorted(unknown)}; the schema is {TRIAL_COLUMNS}")
    values = {k: v for k, v in row.items() if not is_missing(v)}
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ValueError(f"trial row lacks required columns {missing}")
    if values["state"] not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {values['state']!r}")
    if values["source"] not in sources():
        raise ValueError(f"source must be one of {sources()}, got {values['source']!r}")
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
    for column in (
        ("val_accuracy", "rung0_accuracy") if score_key == "accuracy" else ()
    ):  # a task's score: any number
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


def _csv_text(rows: Sequence[Mapping[str, str]], header: bool, score_key: str = "accuracy") -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_header(score_key), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(
        [{f"val_{score_key}" if k == "val_accuracy" else k: v for k, v in r.items()} for r in rows]
    )
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


def _header(score_key: str) -> list[str]:
    """The file's columns: ``val_accuracy`` becomes ``val_score`` for a score other than accuracy."""
    return [f"val_{score_key}" if c == "val_accuracy" else c for c in TRIAL_COLUMNS]


def public_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """A trials frame with its score column named as in the file (``val_score`` for a task whose score
    is not accuracy): what :func:`nas_prune.search` returns."""
    key = trials.attrs.get("score_key", "accuracy")
    return trials if key == "accuracy" else trials.rename(columns={"val_accuracy": f"val_{key}"})


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
    score_key = "score" if "val_score" in raw.columns else "accuracy"
    raw = raw.rename(columns={"val_score": "val_accuracy"})
    older = (_V1_COLUMNS, [c for c in TRIAL_COLUMNS if c not in LATER_COLUMNS])
    if any(list(raw.columns) == columns for columns in older):  # a version-1 run
        raw = raw.reindex(columns=TRIAL_COLUMNS, fill_value="")
        raw["state"] = raw["state"].replace("pruned", "stopped")
        raw["rung"] = raw["rung"].mask(raw["rung"] == "", "0")
    if list(raw.columns) != TRIAL_COLUMNS:
        raise ValueError(f"{path} has columns {list(raw.columns)}, expected {TRIAL_COLUMNS}")
    trials = _typed(raw)
    trials.attrs["score_key"] = score_key
    return trials


def append_trial(path: str | os.PathLike, row: Mapping, score_key: str = "accuracy") -> None:
    """Validate one trial and append it to ``trials.csv`` (created with a header if absent).

    Args:
        path: the CSV file.
        row: ``{column: value}``; ``trial_id``, ``state``, ``source`` and ``widths`` (dict or JSON
            text) are required; other columns may be left out and stay empty, except ``feasible``
            (False) and, for infeasible trials, ``epochs`` (0). ``flops`` is derived from ``macs``.
        score_key: ``accuracy`` or ``score``, the score column's name in a new file (an existing
            file keeps its own).

    Raises:
        ValueError: an invalid row, or a ``trial_id`` that the file already holds.
    """
    path = Path(path)
    existing = read_trials(path)
    key = existing.attrs["score_key"] if path.exists() else score_key
    text = _serialise_row(row, key)
    if int(text["trial_id"]) in set(existing["trial_id"].tolist()):
        raise ValueError(f"trial_id {text['trial_id']} is already in {path}")
    old = path.read_text(encoding="utf-8") if path.exists() else _csv_text([], header=True, score_key=key)
    if not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + _csv_text([text], header=False, score_key=key))


def write_trials(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Atomically rewrite a whole trials table (e.g. after filling in measured latency).

    Every row goes through the same validation as :func:`append_trial`; columns are written in
    :data:`TRIAL_COLUMNS` order, the score column named by ``df.attrs["score_key"]`` (default accuracy).

    Raises:
        ValueError: missing or unknown columns, an invalid row, or duplicated ``trial_id``.
    """
    columns = list(df.columns)
    if set(columns) != set(TRIAL_COLUMNS):
        raise ValueError(f"columns {columns} differ from the schema {TRIAL_COLUMNS}")
    if df["trial_id"].duplicated().any():
        duplicates = sorted(df.loc[df["trial_id"].duplicated(), "trial_id"].tolist())
        raise ValueError(f"duplicated trial_id {duplicates}")
    key = df.attrs.get("score_key", "accuracy")
    rows = [_serialise_row(record, key) for record in df[TRIAL_COLUMNS].to_dict(orient="records")]
    atomic_write_text(path, _csv_text(rows, header=True, score_key=key))
