"""scripts/benchmark.py: the pure report parts, restarts, and a tiny end-to-end run on synthetic data.

The searches and the retrains are replaced by fakes (no Ray); the baselines run for real.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

import nas_prune
import nas_prune.baselines
import nas_prune.baselines.runner
from nas_prune.cost import count_macs

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
_spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _runs(rows: dict[str, list[float]], **columns) -> pd.DataFrame:
    """runs.csv rows: one per (method, seed) with the given test accuracies."""
    frame = pd.DataFrame(
        [
            {"method": m, "seed": s, "test_accuracy": acc, "macs": 1e6, "nonzero_macs": None, "params": 1e3,
             "latency_ms": 1.0, "wall_s": 2.0, "trial_id": None, "source": m, **columns}
            for m, accs in rows.items()
            for s, acc in enumerate(accs)
        ]
    )  # fmt: skip
    return frame.reindex(columns=bench.COLUMNS)


def test_summarize_mean_std_and_order():
    runs = _runs({"l1-unstructured": [0.8, 0.9], "search-best": [0.7, 0.8, 0.9]})
    runs.loc[runs["method"] == "l1-unstructured", "nonzero_macs"] = 3e5
    table = bench.summarize(runs, bench.ORDER)
    assert list(table.index) == ["search-best", "l1-unstructured"]
    assert table.loc["search-best", "seeds"] == 3
    assert math.isclose(table.loc["search-best", "acc_mean"], 0.8)
    assert math.isclose(table.loc["search-best", "acc_std"], 0.1)  # sample std over seeds
    assert table.loc["l1-unstructured", "macs"] == 3e5  # unstructured: its non-zero MACs


def test_verdict_wording():
    table = bench.summarize(
        _runs({"search-best": [0.89, 0.91], "l2-structured": [0.84, 0.86], "iterative-l2": [0.94, 0.96],
               "soft-filter": [0.895, 0.905], "uniform-scratch": [0.5]}),
        bench.ORDER,
    )  # fmt: skip
    assert bench.verdict(table, "l2-structured").endswith("the searched architecture beats it.")
    assert "+5.00 points" in bench.verdict(table, "l2-structured")
    assert bench.verdict(table, "iterative-l2").endswith("is worse than it.")
    assert "does NOT beat it (difference within the spread)" in bench.verdict(table, "soft-filter")
    assert "one seed only" in bench.verdict(table, "uniform-scratch")


def test_verdict_lines_put_the_random_control_first():
    runs = _runs(
        {"search-best": [0.9, 0.91], "search-random-best": [0.9, 0.91], "l2-structured": [0.8, 0.81]}
    )
    lines = bench.verdict_lines(bench.summarize(runs, bench.ORDER))
    verdicts = [line for line in lines if line.startswith("- vs")]
    assert "random search with the same trial count" in lines[0]
    assert verdicts[0].startswith("- vs `search-random-best`") and "does NOT beat it" in verdicts[0]
    assert verdicts[1].startswith("- vs `l2-structured`")
    without = bench.verdict_lines(bench.summarize(runs[runs["method"] != "search-random-best"], bench.ORDER))
    assert any("no `search-random-best` row" in line for line in without)


def test_markdown_table():
    frame = pd.DataFrame({"method": ["a", "b"], "acc": [0.5, 0.25]})
    assert bench.markdown_table(frame) == "| method | acc |\n| --- | --- |\n| a | 0.5 |\n| b | 0.25 |"


def test_shared_architectures():
    runs = _runs({"search-best": [0.9, 0.9], "search-uniform-seed": [0.9, 0.9], "uniform-scratch": [0.8, 0.8],
                  "lottery-ticket": [0.8, 0.8]}, widths='{"a": 1}')  # fmt: skip
    runs.loc[runs["method"] == "uniform-scratch", "widths"] = '{"a": 2}'
    runs.loc[(runs["method"] == "lottery-ticket") & (runs["seed"] == 1), "widths"] = '{"a": 3}'
    assert bench.shared_architectures(runs, bench.ORDER) == [["search-best", "search-uniform-seed"]]


# ---------------------------------------------------------------------------------------------------
# main() with fakes for the searches and the retrains
# ---------------------------------------------------------------------------------------------------


class Fakes:
    """Stand-ins for nas_prune.search and retrain that record their calls."""

    def __init__(self):
        self.searches: list[dict] = []
        self.retrains: list[tuple] = []

    def search(self, resume=None, **kw):
        self.searches.append(kw)
        run_dir = Path(kw["output"])
        random = kw.get("sampler") == "random"
        widths = [{"features.conv1.conv": 16 + i} for i in range(kw["trials"])]
        trials = pd.DataFrame(
            {"trial_id": range(kw["trials"]), "state": "complete", "val_accuracy": 0.5,
             "source": ["random"] * kw["trials"] if random else ["uniform", "l2", *["optuna"] * (kw["trials"] - 2)],
             "widths": [json.dumps(w) for w in widths]}
        )  # fmt: skip
        run_dir.mkdir(parents=True, exist_ok=True)
        trials.to_csv(run_dir / "trials.csv", index=False)
        best = 1 if random else 0  # the searched best is its uniform seed trial
        (run_dir / "best_arch.json").write_text(json.dumps({"trial_id": best, "widths": widths[best]}))
        return trials

    def retrain(self, run_dir, *, trial, seed, output, **kw):
        self.retrains.append((Path(run_dir).name, trial, seed))
        widths = json.loads(pd.read_csv(Path(run_dir) / "trials.csv")["widths"][trial])
        return {"test_accuracy": 0.8 + 0.01 * seed, "val_accuracy": 0.8, "macs": 1000 + trial, "params": 10,
                "flops_ratio": 0.5, "latency_ms": 1.0, "latency_device": "cpu", "epochs": kw["epochs"],
                "train_seconds": 1.0, "widths": widths, "trial_id": trial, "output": str(output)}  # fmt: skip


@pytest.fixture
def fakes(monkeypatch):
    f = Fakes()
    monkeypatch.setattr(nas_prune, "search", f.search)
    monkeypatch.setattr(bench, "retrain", f.retrain)
    monkeypatch.setattr(
        nas_prune.baselines.runner, "measure_latency", lambda m, x, **kw: 1.0 + count_macs(m, x)[0] / 1e7
    )
    return f


TINY = ["--dataset", "synthetic", "--subset", "0", "--dense-epochs", "0.2", "--epochs", "0.2", "--trials", "3",
        "--epochs-per-trial", "0.1", "--budget-flops", "0.5", "--iterative-step", "0.3"]  # fmt: skip


def test_end_to_end_tiny_run(fakes, tmp_path):
    report = bench.main([*TINY, "--seeds", "2", "--output", str(tmp_path)])
    text = report.read_text()
    assert (tmp_path / "benchmark.png").is_file()
    # the control: a random search with the same trial count and no seed architectures
    tpe, rnd = fakes.searches
    assert rnd["sampler"] == "random" and rnd["seeds"] == () and rnd["trials"] == tpe["trials"] == 3
    assert "sampler" not in tpe and rnd["checkpoint"] == tpe["checkpoint"]
    assert rnd["output"].endswith("search-random")
    # every row, for every seed; the random best retrained from the random search's run
    runs = pd.read_csv(tmp_path / "bench" / "runs.csv")
    assert sorted(runs["method"].unique()) == sorted(bench.ORDER)
    assert (runs.groupby("method")["seed"].count() == 2).all()
    assert ("search-random", 1, 0) in fakes.retrains and ("search", 0, 1) in fakes.retrains
    for method in bench.ORDER:
        assert f"| {method}" in text
    assert "- vs `search-random-best`" in text and "Rows with the same architecture" in text
    assert "- `search-best` = `search-uniform-seed`\n" in text  # the searched best is its uniform seed
    lt = json.loads((tmp_path / "bench" / "runs" / "lottery-ticket-seed0" / "metrics.json").read_text())
    assert lt["settings"]["checkpoint"] is None and lt["notes"] == []


def test_restart_skips_finished_runs(fakes, tmp_path, monkeypatch):
    calls = []

    def fake_baseline(settings, **kw):  # the end-to-end test runs the real ones
        calls.append((settings.method, settings.seed))
        return {"method": settings.method, "test_accuracy": 0.5, "macs": 100, "params": 10, "latency_ms": 1.0,
                "wall_s": 1.0, "widths": {"features.conv1.conv": 8}}  # fmt: skip

    monkeypatch.setattr(bench, "run_baseline", fake_baseline)
    args = [*TINY, "--output", str(tmp_path)]
    bench.main([*args, "--seeds", "1"])
    assert len(calls) == len(nas_prune.baselines.METHODS) and len(fakes.retrains) == 4
    runs_csv = tmp_path / "bench" / "runs.csv"
    calls.clear()
    fakes.retrains.clear()
    bench.main([*args, "--seeds", "2"])  # more seeds: only seed 1 runs
    assert {seed for _, seed in calls} == {1} and {seed for *_, seed in fakes.retrains} == {1}
    assert len(fakes.searches) == 2  # both searches finished: reused, not rerun
    runs = pd.read_csv(runs_csv)
    assert list(runs.columns) == bench.COLUMNS and len(runs) == 2 * len(bench.ORDER)
    with pytest.raises(SystemExit, match="other settings.*epochs 0.2 there vs 0.3 now"):
        bench.main([*args, "--seeds", "2", "--epochs", "0.3"])
    (tmp_path / "bench" / "settings.json").unlink()  # as left by the benchmark before its version 2
    with pytest.raises(SystemExit, match="version 1 there vs 2 now"):
        bench.main([*args, "--seeds", "2"])
