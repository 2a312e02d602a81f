"""The run's journal: every candidate and every finished evaluation, one JSON line each, append-only.

``evaluations.jsonl`` is the search's memory. A candidate line (``"kind": "candidate"``) is written
when a proposal is projected (with its widths, source, cost level and, if the projection failed,
``infeasible``); a result line (``"kind": "result"``) when a worker finishes one evaluation of it at one
rung. Each line is flushed and synced before the next, so a kill -9 loses at most the line being
written (a torn last line is ignored on reading) and ``--resume`` repeats no finished evaluation.

``trials.csv`` (one row per candidate, its highest rung's score; the schema of :mod:`nas_prune.results`)
is derived from the journal, never the other way round; the latency measured after the ladder is merged
back from the previous ``trials.csv``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from scipy.stats import rankdata

from ..cost import CostModel
from ..results import SCHEMA_VERSION, TRIAL_COLUMNS, read_trials, write_trials

__all__ = ["Journal"]

_LATENCY = ["latency_ms", "latency_ratio", "latency_device", "latency_batch"]


@dataclass
class Journal:
    """Candidates and results of a run, backed by ``path`` (``evaluations.jsonl``)."""

    path: Path
    candidates: dict[int, dict] = field(default_factory=dict)
    results: dict[tuple[int, int], dict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Read ``path`` (if it exists); a torn last line (a kill mid-write) is dropped."""
        journal = cls(Path(path))
        if journal.path.is_file():
            lines = journal.path.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(lines) - 1:
                        break
                    raise ValueError(f"{path}: line {number + 1} is not JSON") from None
                journal._apply(event)
        return journal

    def _apply(self, event: dict) -> None:
        if event["kind"] == "candidate":
            self.candidates[int(event["trial_id"])] = event
        else:
            self.results[(int(event["trial_id"]), int(event["rung"]))] = event

    def append(self, *events: dict) -> None:
        """Record ``events`` durably (flushed and synced), then apply them."""
        with open(self.path, "a", encoding="utf-8") as f:
            for event in events:
                f.write(json.dumps(event, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for event in events:
            self._apply(event)

    @property
    def next_id(self) -> int:
        return max(self.candidates, default=-1) + 1

    def score(self, trial_id: int, rung: int) -> float | None:
        """Validation accuracy of ``trial_id`` at ``rung`` (None: not evaluated there, or failed)."""
        result = self.results.get((trial_id, rung))
        return None if result is None or result.get("error") else result["val_accuracy"]

    def rung0_scores(self) -> dict[int, float]:
        """What rung 0 ranks candidates by (promotion, evolution's parents): the rung-0 score; where
        rung 0 also recorded the dense judge (``--rung0-judge both``), the mean of the two judges'
        ranks among the candidates of the same cost level, scaled to (0, 1] (a Borda count: the two
        scores are on different scales, the supernet's near the trained accuracy, the dense slice's
        near chance at aggressive budgets)."""
        by_level: dict[float, list[tuple[int, dict]]] = defaultdict(list)
        for (trial_id, rung), result in self.results.items():
            if rung == 0 and not result.get("error") and trial_id in self.candidates:
                by_level[float(self.candidates[trial_id]["level"])].append((trial_id, result))
        scores = {}
        for rows in by_level.values():
            if not all(result.get("dense_judge") is not None for _, result in rows):
                scores.update({trial_id: result["val_accuracy"] for trial_id, result in rows})
                continue
            ranks = [rankdata([r[key] for _, r in rows]) for key in ("val_accuracy", "dense_judge")]
            for (trial_id, _), own, dense in zip(rows, *ranks, strict=True):
                scores[trial_id] = float(own + dense) / (2 * len(rows))
        return scores

    def table(self, cost: CostModel, top_rung: int, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        """``trials.csv``'s rows: one per candidate that is infeasible or has a finished evaluation.

        ``state`` is ``complete`` at ``top_rung``, ``stopped`` below it, ``failed`` when an evaluation
        raised. ``previous`` (the last trials.csv) supplies latency measured for the same widths.
        """
        by_candidate: dict[int, list[dict]] = {}
        for (trial_id, _), result in sorted(self.results.items()):
            by_candidate.setdefault(trial_id, []).append(result)
        rows = []
        for trial_id, cand in sorted(self.candidates.items()):
            results = by_candidate.get(trial_id, [])
            if not results and not cand.get("infeasible"):
                continue
            rows.append(self._row(trial_id, cand, results, cost, top_rung))
        df = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
        if previous is not None and len(previous) and len(df):
            old = previous.set_index("trial_id")
            for i, trial_id in df["trial_id"].items():
                if trial_id in old.index and old.at[trial_id, "widths"] == df.at[i, "widths"]:
                    for column in _LATENCY:
                        df.at[i, column] = old.at[trial_id, column]
        return df

    @staticmethod
    def _row(trial_id: int, cand: dict, results: list[dict], cost: CostModel, top_rung: int) -> dict:
        macs, params = cost.cost(cand["widths"])
        dense_macs, dense_params = cost.dense
        row = {c: None for c in TRIAL_COLUMNS}
        row.update(
            trial_id=trial_id,
            source=cand["source"],
            level=cand["level"],
            macs=macs,
            params=params,
            flops_ratio=macs / dense_macs,
            params_ratio=params / dense_params,
            latency_predicted_ms=cand.get("predicted_ms"),
            widths=json.dumps(cand["widths"], separators=(",", ":")),
            schema_version=SCHEMA_VERSION,
            wall_s=sum(r.get("wall_s") or 0.0 for r in results),
        )
        if cand.get("infeasible"):
            row.update(state="infeasible", feasible=False, epochs=0.0)
            return row
        failed = [r for r in results if r.get("error")]
        good = [r for r in results if not r.get("error")]
        rung0 = next((r["val_accuracy"] for r in good if int(r["rung"]) == 0), None)
        row.update(rung0_accuracy=rung0, feasible=True)
        if failed:
            row.update(
                state="failed",
                error=failed[0]["error"],
                epochs=failed[0].get("epochs"),
                rung=failed[0]["rung"],
            )
            return row
        best = max(good, key=lambda r: int(r["rung"]))
        row.update(
            state="complete" if int(best["rung"]) >= top_rung else "stopped",
            val_accuracy=best["val_accuracy"],
            epochs=best["epochs"],
            rung=int(best["rung"]),
        )
        return row

    def write_trials(
        self, run_dir: Path, cost: CostModel, top_rung: int, score_key: str = "accuracy"
    ) -> pd.DataFrame:
        """Rewrite ``run_dir/trials.csv`` from the journal (atomically) and return it typed; its score
        column is ``val_<score_key>``."""
        path = run_dir / "trials.csv"
        previous = read_trials(path) if path.exists() else None
        table = self.table(cost, top_rung, previous)
        table.attrs["score_key"] = score_key
        write_trials(path, table)
        return read_trials(path)
