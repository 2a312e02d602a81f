"""Search orchestration on synthetic data with an injected evaluator (one Ray start for the module)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import nas_prune
from nas_prune.results import pareto_front, read_trials
from nas_prune.search import WidthSearcher, parse_latency_budget, start_ray

search_module = importlib.import_module("nas_prune.search")
TESTS = Path(__file__).parent
TRAINED = ["complete", "pruned", "failed"]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    started = start_ray(None, runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)}})
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def fake_run(ray_session, tmp_path_factory):
    from search_fakes import fake_evaluate

    run = tmp_path_factory.mktemp("fake") / "run"
    markers = tmp_path_factory.mktemp("markers")
    dense_total = 32 + 32 + 64 + 64 + 128
    trials = nas_prune.search(
        budget_flops=0.5,
        dataset="synthetic",
        model="convnet",
        trials=14,
        workers=1,
        pretrain_epochs=1,
        epochs_per_trial=0.5,
        startup_trials=4,
        gate_epochs=1,
        gate_seeds=2,
        output=str(run),
        quiet=True,
        evaluate_fn=fake_evaluate,
        extra={
            "marker_dir": str(markers),
            "dense_total": dense_total,
            "fail_widths": [8],
            "hopeless_widths": [4, 12, 16],
        },
    )
    return run, trials, markers


def test_every_contract_file_is_written(fake_run):
    run, trials, _ = fake_run
    for name in (
        "config.yaml",
        "dense.pt",
        "trials.csv",
        "pareto.csv",
        "best_arch.json",
        "study.db",
        "pareto.png",
        "widths.png",
        "progress.png",
        "gates.png",
        "gates.csv",
    ):
        assert (run / name).is_file(), name
    assert isinstance(trials, pd.DataFrame) and trials.attrs["run_dir"] == str(run)


def test_trial_count_and_budget_honoured(fake_run):
    run, trials, _ = fake_run
    assert trials["state"].isin(TRAINED).sum() == 14
    feasible = trials[trials["feasible"]]
    assert (feasible["flops_ratio"] <= 0.5 + 1e-9).all()
    assert (trials.loc[trials["state"] == "infeasible", "flops_ratio"] > 0.5).all()
    assert (pd.read_csv(run / "pareto.csv")["flops_ratio"] <= 0.5 + 1e-9).all()


def test_seeds_come_first_with_their_labels_and_are_never_stopped(fake_run):
    _, trials, _ = fake_run
    ordered = trials.sort_values("trial_id")
    gates = int((trials["source"] == "gates").sum())
    assert 1 <= gates <= 2
    first = ordered.head(3 + gates)
    assert list(first["source"]) == ["uniform", "l2", "sensitivity"] + ["gates"] * gates
    assert (first["state"] != "pruned").all() and (first["flops_ratio"] <= 0.5 + 1e-9).all()
    heuristics = first.head(3)  # a gate seed may hit the fake's planted failure (first group at 8)
    assert (heuristics["state"] == "complete").all() and (heuristics["epochs"] == 0.5).all()
    assert set(trials["source"]) <= {"uniform", "l2", "sensitivity", "gates", "random", "optuna"}


def test_only_feasible_proposals_are_trained(fake_run):
    _, trials, markers = fake_run
    trained_ids = {int(p.name) for p in markers.iterdir()}
    assert trained_ids == set(trials.loc[trials["state"].isin(TRAINED), "trial_id"])
    assert not trained_ids & set(trials.loc[trials["state"] == "infeasible", "trial_id"])


def test_pareto_csv_is_the_non_dominated_subset(fake_run):
    run, _, _ = fake_run
    front = pd.read_csv(run / "pareto.csv")
    expected = pareto_front(read_trials(run / "trials.csv"))
    assert list(front["trial_id"]) == list(expected["trial_id"]) and len(front) > 0
    best = json.loads((run / "best_arch.json").read_text())
    assert best["val_accuracy"] == pytest.approx(front["val_accuracy"].max())
    assert set(best) >= {
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
    }


def test_failed_trial_is_recorded_and_the_search_goes_on(fake_run):
    _, trials, _ = fake_run
    failed = trials[trials["state"] == "failed"]
    assert len(failed) >= 1 and failed["error"].str.contains("planted failure").all()
    assert failed["val_accuracy"].isna().all()
    trained = trials[trials["state"].isin(TRAINED)]
    assert failed["trial_id"].min() < trained["trial_id"].max()  # trials kept coming after a failure
    assert len(trained) == 14


def test_asha_stops_hopeless_trials(fake_run):
    _, trials, _ = fake_run
    widths = trials["widths"].map(json.loads)
    hopeless = trials[
        widths.map(lambda w: w["features.conv1.conv"] in (4, 12, 16)) & trials["state"].isin(TRAINED)
    ]
    assert len(hopeless) >= 1
    assert (hopeless["state"] == "pruned").all()
    assert (hopeless["epochs"] < 0.5).all()


def test_latency_is_measured_for_complete_trials(fake_run):
    _, trials, _ = fake_run
    complete = trials[trials["state"] == "complete"]
    assert (complete["latency_ms"] > 0).all() and (complete["latency_batch"] == 1).all()
    assert complete["latency_device"].str.startswith("cpu").all()


def test_resume_adds_trials_without_rerunning_finished_ones(fake_run):
    from search_fakes import fake_evaluate

    run, trials, markers = fake_run
    before = set(trials["trial_id"])
    more = nas_prune.search(resume=run, trials=16, quiet=True, evaluate_fn=fake_evaluate)
    assert more["state"].isin(TRAINED).sum() == 16
    assert more["trial_id"].is_unique and before < set(more["trial_id"])
    assert len(list(markers.iterdir())) == 16


def test_real_evaluation_end_to_end(ray_session, tmp_path):
    trials = nas_prune.search(
        budget_flops=0.4,
        dataset="synthetic",
        trials=3,
        workers=2,
        pretrain_epochs=1,
        epochs_per_trial=0.4,
        output=str(tmp_path / "run"),
        quiet=True,
    )
    trained = trials[trials["state"].isin(TRAINED)]
    assert len(trained) == 3 and (trained["state"] != "failed").all()
    assert trained["val_accuracy"].between(0, 1).all() and (trained["epochs"] > 0).all()


def test_random_sampler_is_the_unseeded_control(ray_session, tmp_path):
    from search_fakes import fake_evaluate

    trials = nas_prune.search(
        budget_flops=0.5,
        dataset="synthetic",
        model="convnet",
        trials=5,
        workers=1,
        pretrain_epochs=1,
        epochs_per_trial=0.5,
        sampler="random",
        seeds=(),
        gate_epochs=0,
        output=str(tmp_path / "run"),
        quiet=True,
        evaluate_fn=fake_evaluate,
        extra={"marker_dir": str(tmp_path), "dense_total": 320},
    )
    assert (trials["source"] == "random").all() and trials["state"].isin(TRAINED).sum() == 5
    study = search_module.open_study(tmp_path / "run", 0, 8, "random")
    assert type(study.sampler).__name__ == "RandomSampler"


def fake_latency(model, example, device, batch):
    """Milliseconds proportional to MACs: deterministic, so the LUT is exact (DESIGN: tests do not time)."""
    return nas_prune.count_macs(model, example)[0] * 1e-5 * batch + 0.01


def _latency_search(tmp_path, latency_fn, budget="0.5", **settings):
    """A fake-evaluated search at ``budget`` of the dense latency, timed by ``latency_fn``."""
    from search_fakes import fake_evaluate

    run, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    trials = nas_prune.search(
        budget_latency=budget,
        dataset="synthetic",
        model="convnet",
        workers=1,
        pretrain_epochs=1,
        epochs_per_trial=0.5,
        lut_dir=str(tmp_path / "lut"),
        output=str(run),
        quiet=True,
        evaluate_fn=fake_evaluate,
        latency_fn=latency_fn,
        extra={"marker_dir": str(markers), "dense_total": 320},
        **settings,
    )
    return run, markers, trials, json.loads((run / "latency.json").read_text())


def test_latency_budget_rows_meet_it_and_the_lut_rejects_before_training(ray_session, tmp_path):
    run, markers, trials, info = _latency_search(
        tmp_path, fake_latency, "0.3", trials=8, startup_trials=3, gate_epochs=1, gate_seeds=1
    )
    assert (
        info["trusted"]
        and info["median_error"] < 1e-6
        and info["limit_ms"] == pytest.approx(0.3 * info["dense_ms"])
    )
    assert list((tmp_path / "lut").glob("*.json"))  # the LUT's cache
    trained = trials[trials["state"].isin(TRAINED)]
    assert len(trained) == 8 and {int(m.name) for m in markers.iterdir()} == set(trained["trial_id"])
    assert (trials["latency_predicted_ms"] > 0).all()
    measured = trials[trials["state"].isin(["complete", "pruned"])]
    assert (measured["latency_ms"] > 0).all()
    assert (measured["latency_ms"] <= info["limit_ms"] + 1e-9).all()  # every trained one: LUT is exact
    assert measured["feasible"].all()
    rejected = trials[trials["state"] == "infeasible"]
    assert len(rejected) and (rejected["latency_predicted_ms"] > info["limit_ms"]).all()
    front = pd.read_csv(run / "pareto.csv")
    assert len(front) and (front["latency_ms"] <= info["limit_ms"] + 1e-9).all()
    assert len(search_module.open_study(run, 0, 3, latency=True).directions) == 3


def test_an_untrusted_lut_only_orders_and_measurement_judges(ray_session, tmp_path):
    """A LUT that fails validation rejects nothing; the measured latency decides feasibility."""
    import random

    noise = random.Random(0)

    def erratic(model, example, device, batch):  # unrelated to the architecture: the LUT cannot work
        return noise.uniform(0.1, 10.0)

    _, _, trials, info = _latency_search(tmp_path, erratic, trials=5, gate_epochs=0)
    assert not info["trusted"]
    assert (trials["state"] != "infeasible").all()  # nothing rejected on the LUT's word
    measured = trials[trials["state"].isin(["complete", "pruned"])]
    assert len(measured) >= 1
    assert (measured["feasible"] == (measured["latency_ms"] <= info["limit_ms"])).all()


def test_resumed_study_keeps_its_objectives_and_draws_afresh(tmp_path):
    study = search_module.open_study(tmp_path, 0, 8, "random")
    first = [study.ask().suggest_int("w", 0, 10**6) for _ in range(3)]
    resumed = search_module.open_study(tmp_path, 0, 8, "random")
    again = [resumed.ask().suggest_int("w", 0, 10**6) for _ in range(3)]
    assert again != first  # a resumed random control does not replay the first run's proposals
    with pytest.raises(nas_prune.NasPruneError, match="objectives"):
        search_module.open_study(tmp_path, 0, 8, "random", latency=True)


def test_latency_budget_parsing():
    assert parse_latency_budget("12ms") == (12.0, None)
    assert parse_latency_budget("0.8") == (None, 0.8)
    for bad in ("fast", "1.5", "0", "-2ms"):
        with pytest.raises(nas_prune.NasPruneError):
            parse_latency_budget(bad)


def test_searcher_pickles_without_its_callback(tmp_path):
    import pickle

    searcher = WidthSearcher.__new__(WidthSearcher)
    searcher.__dict__.update({"on_row": print, "to_train": 3})
    assert pickle.loads(pickle.dumps(searcher)).on_row is None


def test_module_is_callable():
    assert callable(search_module) and search_module.search is not None
    assert torch.__version__  # the package imports without starting Ray
