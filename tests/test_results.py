"""trials.csv schema, atomic writes, the derived Pareto front and best_arch.json."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from nas_prune.pareto import best_arch, pareto_front, write_best_arch, write_pareto
from nas_prune.results import (
    LATER_COLUMNS,
    SCHEMA_VERSION,
    TRIAL_COLUMNS,
    append_trial,
    atomic_write_text,
    parse_widths,
    read_trials,
    write_trials,
)

DENSE = {"macs": 1000, "params": 500, "val_accuracy": 0.9}


def trial(trial_id, state="complete", acc=0.8, macs=500, source="optuna", feasible=True, **extra):
    """A valid row; accuracy is dropped for the states that have none."""
    row = {
        "trial_id": trial_id,
        "state": state,
        "source": source,
        "macs": macs,
        "params": 250,
        "flops_ratio": macs / DENSE["macs"],
        "params_ratio": 0.5,
        "widths": {"conv1": 4, "block.0": 8},
        "feasible": feasible and state != "infeasible",
        "epochs": 1.0,
        "wall_s": 2.5,
    }
    if state in ("complete", "stopped"):
        row["val_accuracy"] = acc
    if state == "infeasible":
        row["epochs"] = 0.0
    row.update(extra)
    return row


def table(rows, path):
    """The typed frame that appending ``rows`` to a fresh file gives."""
    for row in rows:
        append_trial(path, row)
    return read_trials(path)


def random_table(rng, n, path, latency=False):
    """Trials on a coarse grid (so equal objective vectors occur) in every state."""
    rows = []
    for i in range(n):
        state = rng.choice(["complete"] * 5 + ["stopped", "failed", "infeasible"])
        row = trial(
            int(i),
            state=str(state),
            acc=float(rng.integers(0, 6)) / 10,
            macs=int(rng.integers(1, 6)) * 100,
            feasible=bool(rng.random() < 0.8),
        )
        if state == "failed":
            row["error"] = "RuntimeError: boom"
        if latency:
            row["latency_ms"] = float(rng.integers(1, 4))
        rows.append(row)
    return table(rows, path)


def brute_force_front(df, objectives):
    """Non-dominated complete feasible rows by the definition, one pair at a time."""
    pool = df[(df["state"] == "complete") & df["feasible"]]
    sign = {o: -1.0 if o == "val_accuracy" else 1.0 for o in objectives}
    keep = []
    for i, a in pool.iterrows():
        dominated = False
        for j, b in pool.iterrows():
            no_worse = all(sign[o] * b[o] <= sign[o] * a[o] for o in objectives)
            better = any(sign[o] * b[o] < sign[o] * a[o] for o in objectives)
            dominated |= i != j and no_worse and better
        if not dominated:
            keep.append(a["trial_id"])
    return set(keep)


def test_append_read_round_trip_with_dtypes(tmp_path):
    path = tmp_path / "trials.csv"
    append_trial(path, trial(0, acc=0.75, latency_ms=1.25, latency_device="cpu", latency_batch=1))
    append_trial(path, {"trial_id": 9, "state": "failed", "source": "random", "widths": {"conv1": 1}})
    append_trial(path, trial(1, state="infeasible", source="uniform", macs=10**12))
    append_trial(path, trial(2, state="failed", error='CUDA OOM, "quoted"\nsecond line'))
    append_trial(path, trial(3, state="stopped", acc=0.3, widths='{"conv1": 2, "block.0": 3}'))

    df = read_trials(path)
    assert list(df.columns) == TRIAL_COLUMNS
    assert df["trial_id"].tolist() == [0, 9, 1, 2, 3]
    minimal = df.iloc[1]  # only the required columns given: feasible False, the rest empty
    assert not minimal["feasible"] and pd.isna(minimal["macs"]) and pd.isna(minimal["flops"])
    assert np.isnan(minimal["epochs"]) and minimal["error"] == ""
    df = df.drop(index=1).reset_index(drop=True)
    assert df["trial_id"].dtype == np.int64 and df["schema_version"].eq(SCHEMA_VERSION).all()
    assert df["feasible"].dtype == bool and df["feasible"].tolist() == [True, False, True, True]
    assert str(df["macs"].dtype) == "Int64" and df["macs"].iloc[1] == 10**12  # exact, not via float
    assert df["flops"].tolist() == [1000, 2 * 10**12, 1000, 1000]
    assert df["val_accuracy"].dtype == np.float64 and np.isnan(df["val_accuracy"].iloc[1])
    assert df["val_accuracy"].iloc[0] == 0.75 and df["latency_ms"].iloc[0] == 1.25
    assert np.isnan(df["latency_ms"].iloc[1]) and pd.isna(df["latency_batch"].iloc[1])
    assert df["epochs"].iloc[1] == 0.0
    assert df["error"].tolist() == ["", "", 'CUDA OOM, "quoted"\nsecond line', ""]
    assert df["latency_device"].tolist() == ["cpu", "", "", ""]
    assert df["widths"].iloc[0] == '{"conv1":4,"block.0":8}'  # compact, keys in the given order
    assert parse_widths(df["widths"].iloc[3]) == {"conv1": 2, "block.0": 3}

    write_trials(path, df)  # a typed frame survives a rewrite unchanged
    pd.testing.assert_frame_equal(read_trials(path), df)


def test_read_missing_file_gives_empty_typed_frame(tmp_path):
    df = read_trials(tmp_path / "nope.csv")
    assert df.empty and list(df.columns) == TRIAL_COLUMNS
    assert df["feasible"].dtype == bool and df["trial_id"].dtype == np.int64
    assert pareto_front(df).empty and best_arch(df) is None


def test_duplicate_trial_id_refused(tmp_path):
    path = tmp_path / "trials.csv"
    append_trial(path, trial(7))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="already"):
        append_trial(path, trial(7, acc=0.9))
    assert path.read_bytes() == before
    df = read_trials(path)
    with pytest.raises(ValueError, match="duplicated"):
        write_trials(path, pd.concat([df, df]))


@pytest.mark.parametrize(
    "row, match",
    [
        (trial(0, state="done"), "state"),
        (trial(0, source="grid"), "source"),
        (trial(0, acc=1.5), r"\[0, 1\]"),
        (trial(0, bogus=1), "unknown"),
        ({"trial_id": 0, "state": "complete", "source": "optuna"}, "widths"),
        (trial(0, state="infeasible", val_accuracy=0.5), "no val_accuracy"),
        (trial(0, state="infeasible") | {"feasible": True}, "feasible"),
        (trial(0, flops=3), "2 \\* macs"),
        (trial(0, macs=1.5), "integer"),
        (trial(0, widths={"conv1": 0}), "positive"),
    ],
)
def test_invalid_rows_refused(tmp_path, row, match):
    with pytest.raises(ValueError, match=match):
        append_trial(tmp_path / "trials.csv", row)
    assert not (tmp_path / "trials.csv").exists()


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "trials.csv"
    for i in range(5):
        append_trial(path, trial(i))
    write_pareto(tmp_path)
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "pareto.csv", "trials.csv"]


def test_crash_during_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "trials.csv"
    append_trial(path, trial(0))
    before = path.read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        append_trial(path, trial(1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]  # the temp file is cleaned up


@pytest.mark.parametrize("latency", [False, True])
def test_pareto_front_matches_brute_force(tmp_path, latency):
    objectives = ("val_accuracy", "flops", "latency_ms") if latency else ("val_accuracy", "flops")
    rng = np.random.default_rng(0)
    saw_ties = False
    for n in (0, 1, 5, 30, 80):
        df = random_table(rng, n, tmp_path / f"trials{n}.csv", latency=latency)
        front = pareto_front(df, objectives)
        assert set(front["trial_id"]) == brute_force_front(df, objectives)
        assert front["state"].eq("complete").all() and front["feasible"].all()
        keys = list(zip(front["flops"], front["trial_id"], strict=True))
        assert keys == sorted(keys)
        saw_ties |= front.duplicated(list(objectives)).any()
    assert saw_ties  # equal objective vectors occurred and were all kept


def test_pareto_front_hand_made(tmp_path):
    rows = [
        trial(0, acc=0.7, macs=100),
        trial(1, acc=0.8, macs=200),
        trial(2, acc=0.8, macs=200),  # exact tie with 1: both kept
        trial(3, acc=0.75, macs=300),  # dominated by 1
        trial(4, acc=0.99, macs=50, state="stopped"),  # low-fidelity: excluded
        trial(5, acc=0.99, macs=50, feasible=False),  # over budget: excluded
        trial(6, state="infeasible", macs=10),
        trial(7, state="failed", macs=10),
        trial(8, acc=0.9, macs=400),
    ]
    df = table(rows, tmp_path / "trials.csv")
    assert pareto_front(df)["trial_id"].tolist() == [0, 1, 2, 8]


def test_pareto_front_requires_measured_objectives(tmp_path):
    df = table([trial(0)], tmp_path / "trials.csv")
    with pytest.raises(ValueError, match="latency_ms"):
        pareto_front(df, ("val_accuracy", "flops", "latency_ms"))
    with pytest.raises(ValueError, match="numeric"):
        pareto_front(df, ("val_accuracy", "widths"))


def test_write_pareto_equals_front_of_trials(tmp_path):
    random_table(np.random.default_rng(1), 40, tmp_path / "trials.csv")
    front = write_pareto(tmp_path)
    written = read_trials(tmp_path / "pareto.csv")
    trials = read_trials(tmp_path / "trials.csv")  # the front by definition, sorted by flops then trial_id
    on_front = trials[trials["trial_id"].isin(brute_force_front(trials, ("val_accuracy", "flops")))]
    expected = on_front.sort_values(["flops", "trial_id"]).reset_index(drop=True)
    assert len(written) > 0
    pd.testing.assert_frame_equal(written, expected)
    pd.testing.assert_frame_equal(front, expected)


def test_write_pareto_without_complete_trials(tmp_path):
    append_trial(tmp_path / "trials.csv", trial(0, state="infeasible"))
    assert write_pareto(tmp_path).empty
    assert (tmp_path / "pareto.csv").read_text().strip() == ",".join(TRIAL_COLUMNS)
    front = read_trials(tmp_path / "pareto.csv")
    assert front.empty and list(front.columns) == TRIAL_COLUMNS


def test_best_arch_picks_max_accuracy_and_breaks_ties(tmp_path):
    rows = [
        trial(0, acc=0.8, macs=300),
        trial(1, acc=0.8, macs=200),  # same accuracy, fewer flops
        trial(2, acc=0.8, macs=200),  # full tie with 1: lower trial_id wins
        trial(3, acc=0.95, state="stopped"),
        trial(4, acc=0.95, feasible=False),
        trial(5, acc=0.7, macs=10),
    ]
    df = table(rows, tmp_path / "trials.csv")
    assert best_arch(df)["trial_id"] == 1
    df.loc[df["trial_id"] == 5, "val_accuracy"] = 0.81
    assert best_arch(df)["trial_id"] == 5


def test_best_arch_json_contract(tmp_path):
    assert write_best_arch(tmp_path, model="convnet", dataset="fashion-mnist", dense=DENSE) is None
    assert not (tmp_path / "best_arch.json").exists()
    append_trial(tmp_path / "trials.csv", trial(0, acc=0.7))
    append_trial(tmp_path / "trials.csv", trial(1, acc=0.85, macs=400, widths={"b": 3, "a": 5}))
    append_trial(tmp_path / "trials.csv", trial(2, state="infeasible"))

    returned = write_best_arch(tmp_path, model="convnet", dataset="fashion-mnist", dense=DENSE)
    on_disk = json.loads((tmp_path / "best_arch.json").read_text())
    assert on_disk == returned
    assert list(on_disk) == [
        "schema_version",
        "model",
        "dataset",
        "widths",
        "macs",
        "flops",
        "params",
        "val_accuracy",
        "trial_id",
        "dense",
    ]
    assert on_disk == {
        "schema_version": 1,
        "model": "convnet",
        "dataset": "fashion-mnist",
        "widths": {"b": 3, "a": 5},
        "macs": 400,
        "flops": 800,
        "params": 250,
        "val_accuracy": 0.85,
        "trial_id": 1,
        "dense": {"macs": 1000, "params": 500, "val_accuracy": 0.9},
    }
    assert list(on_disk["widths"]) == ["b", "a"]  # group order kept

    def plain(value):
        return (
            all(map(plain, value.values())) if isinstance(value, dict) else type(value) in (int, float, str)
        )

    assert plain(returned)
    returned = write_best_arch(
        tmp_path, model="convnet", dataset="fashion-mnist", dense={"macs": np.int64(1000), "params": 500}
    )
    assert returned["dense"] == {"macs": 1000, "params": 500, "val_accuracy": None}
    assert type(returned["dense"]["macs"]) is int


def test_parse_widths():
    assert parse_widths('{"a": 3, "b": 4.0}') == {"a": 3, "b": 4}
    assert parse_widths({"a": np.int64(2)}) == {"a": 2}
    for bad in ("[1, 2]", "not json", {"a": 2.5}, {"a": True}):
        with pytest.raises(ValueError):
            parse_widths(bad)


def test_dominance_is_independent_of_block_size():
    from nas_prune.pareto import _non_dominated

    costs = np.random.default_rng(2).integers(0, 5, size=(300, 3)).astype(float)
    assert np.array_equal(_non_dominated(costs, block=7), _non_dominated(costs, block=1000))


def test_older_trials_files_read_with_later_columns_empty_and_others_refused(tmp_path):
    path = tmp_path / "trials.csv"
    append_trial(path, trial(0, acc=0.75))
    current = pd.read_csv(path, dtype=str, keep_default_na=False)
    current.drop(columns=list(LATER_COLUMNS)).to_csv(path, index=False)  # as written before they existed
    df = read_trials(path)
    assert list(df.columns) == TRIAL_COLUMNS and df["latency_predicted_ms"].isna().all()
    assert df["val_accuracy"].iloc[0] == 0.75
    current.drop(columns=["error"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="expected"):
        read_trials(path)
