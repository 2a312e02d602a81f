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


def test_goal_lines_take_the_best_final_path_against_the_best_structured_baseline():
    runs = _runs({"search-best": [0.85, 0.86], "search-best-inherit": [0.90, 0.91], "l2-structured": [0.88, 0.89],
                  "l1-unstructured": [0.95, 0.96], "soft-filter": [0.80, 0.81],
                  "search-best-budget": [0.97, 0.98]})  # fmt: skip
    lines = bench.goal_lines(bench.summarize(runs, bench.ORDER))
    assert (
        "`search-best-inherit` 0.9050, `search-best` 0.8550" in lines[2]
    )  # not budget-matched: more training
    assert (
        "best path `search-best-inherit` vs best structured baseline `l2-structured`: +2.00 points"
        in lines[3]
    )
    assert lines[3].endswith("**met**.")
    runs.loc[runs["method"] == "l2-structured", "test_accuracy"] += 0.018  # 0.2 points behind: a miss
    assert bench.goal_lines(bench.summarize(runs, bench.ORDER))[3].endswith("**not met**.")


def test_spread_lines_use_on_budget_random_proposals_only():
    trials = pd.DataFrame(
        {"source": ["random", "random", "random", "uniform", "random"], "feasible": [True, True, True, True, False],
         "level": [1.0, 1.0, 0.8, 1.0, 1.0], "rung0_accuracy": [0.2, 0.4, 0.9, 0.9, 0.9],
         "val_accuracy": [0.2, 0.85, 0.9, 0.9, None], "rung": [0, 2, 0, 2, 0],
         "state": ["stopped", "complete", "stopped", "complete", "infeasible"]}
    )  # fmt: skip
    lines = bench.spread_lines(trials)
    assert lines[2].endswith("min 0.2000 / median 0.3000 / max 0.4000 (n=2)")
    assert "top rung (rung 2" in lines[3] and lines[3].endswith(
        "min 0.8500 / median 0.8500 / max 0.8500 (n=1)"
    )


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
        self.paths: list[dict] = []

    def search(self, resume=None, **kw):
        self.searches.append(kw)
        run_dir = Path(kw["output"])
        random = kw.get("sampler") == "random"
        widths = [{"features.conv1.conv": 16 + i} for i in range(kw["trials"])]
        trials = pd.DataFrame(
            {"trial_id": range(kw["trials"]), "state": "complete", "val_accuracy": 0.5,
             "source": ["random"] * kw["trials"] if random else ["uniform", "l2", *["optuna"] * (kw["trials"] - 2)],
             "widths": [json.dumps(w) for w in widths], "feasible": True, "level": 1.0,
             "rung": [1] + [0] * (kw["trials"] - 1), "rung0_accuracy": [0.3 + 0.1 * i for i in range(kw["trials"])]}
        )  # fmt: skip
        run_dir.mkdir(parents=True, exist_ok=True)
        trials.to_csv(run_dir / "trials.csv", index=False)
        best = 1 if random else 0  # the searched best is its uniform seed trial
        (run_dir / "best_arch.json").write_text(json.dumps({"trial_id": best, "widths": widths[best]}))
        judges = {"top_rung": 1, "supernet": {"n": 5, "kendall": 0.8, "spearman": 0.9},
                  "dense": {"n": 5, "kendall": 0.2, "spearman": 0.3}}  # fmt: skip
        sampler = {"model_share": 0.85, "sources": {}, "repeated_proposals": 4, "repeat_share": 0.02}
        (run_dir / "fidelity.json").write_text(json.dumps({"judges": judges, "sampler": sampler}))
        return trials

    def retrain(self, run_dir, *, trial, seed, output, **kw):
        self.retrains.append((Path(run_dir).name, trial, seed))
        self.paths.append({k: v for k, v in kw.items() if k in ("init", "budget_matched", "distill")})
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
    assert (
        "- `search-best` = `search-best-budget` = `search-best-inherit` = `search-best-distill` = `search-uniform-seed`\n"
        in text
    )
    # the searched best through every final path
    assert {json.dumps(p, sort_keys=True) for p in fakes.paths} == {
        json.dumps(p, sort_keys=True) for p in bench.FINAL_PATHS.values()
    }
    assert "Goal: the search's best final model" in text
    assert (
        "rung 0 (slim + adaptive BN, no fine-tuning): min 0.3000 / median 0.4000 / max 0.5000 (n=3)" in text
    )
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
    assert len(calls) == len(nas_prune.baselines.METHODS) and len(fakes.retrains) == 7
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


def test_the_supernet_report_runs_its_rows_at_equal_final_and_equal_total_epochs(
    fakes, tmp_path, monkeypatch
):
    baselines, retrains = [], []

    def fake_baseline(settings, **kw):
        baselines.append((settings.method, settings.seed, settings.epochs, Path(settings.output).name))
        return {"method": settings.method, "test_accuracy": 0.80 + 0.001 * settings.seed, "macs": 100,
                "params": 10, "latency_ms": 1.0, "wall_s": 1.0, "widths": {"features.conv1.conv": 8}}  # fmt: skip

    def fake_retrain(run_dir, *, seed, epochs, trial=None, output=None, top=None, **kw):
        retrains.append(
            {
                "run": Path(run_dir),
                "seed": seed,
                "epochs": epochs,
                "trial": trial,
                "top": top,
                "output": output,
                **kw,
            }  # fmt: skip
        )
        accuracy = (0.79 if kw.get("inherit_from") == "dense" else 0.82) + 0.001 * seed
        return {"test_accuracy": accuracy, "macs": 100, "params": 10, "epochs": epochs,
                "train_seconds": 1.0, "widths": {"features.conv1.conv": 9}, "trial_id": 1 if top else trial or 0}  # fmt: skip

    monkeypatch.setattr(bench, "run_baseline", fake_baseline)
    monkeypatch.setattr(bench, "retrain", fake_retrain)
    report = bench.main([*TINY, "--seeds", "2", "--supernet-epochs", "0.5", "--output", str(tmp_path)])
    assert [s["supernet_epochs"] for s in fakes.searches] == [0.5, 0.5]  # the search and its control
    runs = pd.read_csv(tmp_path / "bench" / "runs.csv")
    seeds = runs.groupby("method")["seed"].apply(sorted).to_dict()
    assert set(seeds) == set(bench.SUPERNET_ROWS)
    assert seeds["iterative-l2"] == seeds["iterative-l2-total"] == [0]  # one seed is enough for it
    assert all(seeds[m] == [0, 1] for m in seeds if not m.startswith("iterative"))
    epochs = {(m, name.rsplit("-seed", 1)[0]): e for m, _, e, name in baselines}
    assert epochs[("l2-structured", "l2-structured")] == pytest.approx(0.2)  # equal final epochs
    assert epochs[("l2-structured", "l2-structured-total")] == pytest.approx(0.7)  # + the supernet's
    steps = len(nas_prune.baselines.iterative_targets(0.5, 0.3))
    assert epochs[("iterative-l2", "iterative-l2-total")] == pytest.approx(0.7 / steps)
    trials = pd.read_csv(tmp_path / "bench" / "search" / "trials.csv").set_index("trial_id")
    picked = runs[runs["method"] == "search-best-top3"]  # the fake picks trial 1, not the best (0)
    assert (picked["trial_id"] == 1).all() and (picked["source"] == trials.loc[1, "source"]).all()
    top = [r for r in retrains if r["top"] == 3]
    assert [r["seed"] for r in top] == [0, 1] and all(
        r["init"] == "inherit" and r["inherit_from"] == "supernet" and r["trial"] is None for r in top
    )
    for r in top:  # Tune's folders go to a per-seed copy of the search run, not into the search run itself
        assert (
            r["run"].name == "run"
            and (r["run"] / "trials.csv").is_file()
            and r["run"].parent.name.startswith("search-best-top3")
        )
    uniform = [r for r in retrains if Path(r["output"] or "").name.startswith("search-uniform-seed")]
    assert sorted(r["epochs"] for r in uniform) == pytest.approx([0.2, 0.2, 0.7, 0.7])
    assert all(r.get("inherit_from") == "dense" for r in uniform)
    best_dense = [r for r in retrains if Path(r["output"] or "").name.startswith("search-best-dense")]
    assert [(r["run"].name, r["trial"], r["epochs"], r.get("inherit_from")) for r in best_dense] == [
        ("search", 0, 0.2, "dense")
    ] * 2  # the searched best from the dense weights, at equal final epochs
    inherit = [r for r in retrains if r["top"] is None and r.get("inherit_from") == "supernet"]
    assert {(r["run"].name, r["trial"], r["epochs"]) for r in inherit} == {
        ("search", 0, 0.2),
        ("search-random", 1, 0.2),
    }
    text = report.read_text()
    assert "at equal training** (l1-unstructured" not in text  # the default report's goal is not judged here
    assert "by >= 0.3 points" in text
    assert "- equal final epochs: `search-best-inherit` vs `l2-structured`: +2.00 points" in text
    assert "- equal total epochs: `search-best-inherit` vs `l2-structured-total`: +2.00 points" in text
    assert "supernet 0.80 (n=5), dense 0.20 (n=5)" in text and "85% of rung-0 candidates" in text
    assert "most accurate path, `search-best-inherit`" in text and "no feasible architecture" not in text
    assert "- vs `l2-structured`: +2.00 points" in text  # the verdicts speak for the searched best
