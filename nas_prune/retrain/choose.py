"""Which architecture of a search run to retrain: rank K of the Pareto front, or a trial by its id."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..checkpoint import checked_widths
from ..errors import NasPruneError
from ..results import read_trials

__all__ = ["Architecture", "choose_architecture", "choose_top", "output_name", "read_json"]


@dataclass(frozen=True)
class Architecture:
    """An architecture picked from a run: its trial, widths and what the search measured."""

    trial_id: int
    widths: dict[str, int]
    val_accuracy: float | None
    flops: int | None
    how: str
    state: str = "complete"
    feasible: bool = True
    source: str | None = None


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NasPruneError(f"{path} is not readable JSON ({type(err).__name__}); {what}") from err
    if not isinstance(content, dict):
        raise NasPruneError(f"{path} holds a {type(content).__name__}, not a JSON object; {what}")
    return content


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return read_trials(path)
    except (ValueError, KeyError, pd.errors.ParserError) as err:
        raise NasPruneError(f"{path} is not a nas_prune trials table: {err}") from err


def _optional(value: Any, kind: type) -> Any:
    return None if value is None or pd.isna(value) else kind(value)


def _from_row(row: pd.Series, where: str, how: str) -> Architecture:
    """An :class:`Architecture` from a trials.csv / pareto.csv row."""
    return Architecture(
        trial_id=int(row["trial_id"]),
        widths=checked_widths(row["widths"], where),
        val_accuracy=_optional(row["val_accuracy"], float),
        flops=_optional(row["flops"], int),
        how=how,
        state=str(row["state"]),
        feasible=bool(row["feasible"]),
        source=str(row["source"]),
    )


def choose_architecture(
    run_dir: str | os.PathLike, rank: int | None = None, trial: int | None = None
) -> Architecture:
    """The architecture to retrain: ``rank`` K of the Pareto front or trial ``trial`` of trials.csv.

    Rank 0 (the default) is ``best_arch.json``, the most accurate feasible architecture. Rank K > 0 is
    the K-th row of ``pareto.csv`` sorted by validation accuracy (descending), then FLOPs, then
    trial_id. A trial must have been evaluated (``complete`` at the top rung, or ``stopped`` below it); an infeasible one
    is allowed with a warning.

    Raises:
        NasPruneError: both selectors, a missing or unreadable file, a rank out of range, an unknown
            or untrained trial.
    """
    run_dir = Path(run_dir)
    if rank is not None and trial is not None:
        raise NasPruneError("give either --rank or --trial, not both")
    if trial is not None:
        path = run_dir / "trials.csv"
        if not path.is_file():
            raise NasPruneError(f"{run_dir} has no trials.csv, so --trial {trial} cannot be looked up")
        trials = _read_table(path)
        rows = trials[trials["trial_id"] == int(trial)]
        if rows.empty:
            known = ", ".join(str(t) for t in sorted(trials["trial_id"].tolist())) or "none"
            raise NasPruneError(f"trial {trial} is not in {path} (trial ids: {known})")
        row = rows.iloc[0]
        if row["state"] not in ("complete", "stopped"):
            raise NasPruneError(
                f"trial {trial} is {row['state']} (never trained); pick a complete or stopped trial"
            )
        if not bool(row["feasible"]):
            warnings.warn(f"trial {trial} does not meet the run's budget (feasible=False)", stacklevel=2)
        return _from_row(row, f"trial {trial} in {path}", f"trial {trial}")

    rank = 0 if rank is None else int(rank)
    if rank < 0:
        raise NasPruneError(f"--rank must be >= 0, got {rank}")
    pareto_path = run_dir / "pareto.csv"
    front = None
    if pareto_path.is_file():
        front = _read_table(pareto_path).assign(_neg=lambda d: -d["val_accuracy"])
        front = front.sort_values(["_neg", "flops", "trial_id"], kind="mergesort").reset_index(drop=True)
    if rank == 0:
        path = run_dir / "best_arch.json"
        if not path.is_file():
            raise NasPruneError(
                f"{run_dir} has no best_arch.json (no complete feasible trial yet); use --trial ID"
            )
        best = read_json(path, "it should be the search's best_arch.json")
        if "widths" not in best or "trial_id" not in best:
            raise NasPruneError(f"{path} is not a nas_prune best_arch.json (no 'widths' or 'trial_id')")
        arch = Architecture(
            trial_id=int(best["trial_id"]),
            widths=checked_widths(best["widths"], str(path)),
            val_accuracy=_optional(best.get("val_accuracy"), float),
            flops=_optional(best.get("flops"), int),
            how="rank 0 (best_arch.json)",
        )
        if front is not None and len(front) and int(front.at[0, "trial_id"]) != arch.trial_id:
            warnings.warn(
                f"best_arch.json names trial {arch.trial_id} but pareto.csv's most accurate row is trial "
                f"{int(front.at[0, 'trial_id'])}; using best_arch.json",
                stacklevel=2,
            )
        return arch
    if front is None:
        raise NasPruneError(f"{run_dir} has no pareto.csv, so --rank {rank} cannot be looked up")
    if rank >= len(front):
        raise NasPruneError(
            f"--rank {rank} is out of range: {pareto_path} has {len(front)} architectures (ranks 0..{len(front) - 1})"
        )
    row = front.iloc[rank]
    return _from_row(row, f"rank {rank} of {pareto_path}", f"rank {rank} (pareto.csv by accuracy)")


def choose_top(run_dir: str | os.PathLike, top: int) -> list[Architecture]:
    """The ``top`` most accurate complete feasible architectures of trials.csv (the top rung).

    Sorted by validation score (descending), then FLOPs, then trial_id, as ``--rank`` sorts pareto.csv;
    the first is best_arch.json's.

    Raises:
        NasPruneError: no trials.csv, ``top`` < 1, or more than there are (the message says how many).
    """
    path = Path(run_dir) / "trials.csv"
    if not path.is_file():
        raise NasPruneError(f"{run_dir} has no trials.csv, so --top {top} cannot be looked up")
    if top < 1:
        raise NasPruneError(f"--top must be at least 1, got {top}")
    trials = _read_table(path)
    done = trials[(trials["state"] == "complete") & trials["feasible"].astype(bool)]
    done = done.assign(_neg=lambda d: -d["val_accuracy"])
    done = done.sort_values(["_neg", "flops", "trial_id"], kind="mergesort").reset_index(drop=True)
    if top > len(done):
        raise NasPruneError(
            f"--top {top} is more than the {len(done)} complete feasible top-rung architectures in {path}"
        )
    return [_from_row(row, f"trial {row['trial_id']} in {path}", f"top {k + 1} of {top} (trials.csv)")
            for k, (_, row) in enumerate(done.head(top).iterrows())]  # fmt: skip


def output_name(init: str, trial_id: int, distill: bool = False, budget_matched: bool = False) -> str:
    """``<init>[-distill][-budget]-trial<ID>``, the folder under ``RUN_DIR/retrain/``."""
    return f"{init}{'-distill' if distill else ''}{'-budget' if budget_matched else ''}-trial{int(trial_id)}"
