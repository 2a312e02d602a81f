"""Search orchestration on synthetic data with an injected evaluator (one Ray start for the module)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import nas_prune
from nas_prune.results import MODEL_SOURCES, read_trials
from nas_prune.search import parse_latency_budget
from nas_prune.search.journal import Journal
from nas_prune.search.ladder import Ladder

TESTS = Path(__file__).parent
EVALUATED = ["complete", "stopped", "failed"]
SEEDS = ["uniform", "l2", "sensitivity", "gates"]
DENSE_TOTAL = 32 + 32 + 64 + 64 + 128  # convnet's channels
FAIL, HOPELESS = [7, 8, 9], [4, 5, 6, 12, 13, 14]  # widths of convnet's first group the fake plants


def _fake(markers: Path, **kw):
    from search_fakes import FakeEvaluator

    return functools.partial(FakeEvaluator, marker_dir=str(markers), dense_total=DENSE_TOTAL, **kw)


def _descendants(root: int) -> set[int]:
    """``root`` and every process below it (Ray's processes, for the driver that started Ray)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = set(), [root]
    while pending:
        pid = pending.pop()
        found.add(pid)
        pending.extend(children.get(pid, []))
    return found


def _listening(pids: set[int]) -> list[str]:
    """The local addresses (kernel hex) of the TCP sockets ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                addresses.append(local.split(":")[0])
    return addresses


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_the_local_ray_listens_on_loopback_only_and_reports_no_usage(ray_session):
    import ray

    ray.get(ray.remote(lambda: 1).remote())  # a worker up too
    addresses = _listening(_descendants(os.getpid()))
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    assert len(addresses) >= 3  # GCS, raylet, workers: the test sees Ray's sockets
    assert set(addresses) <= loopback, addresses
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"  # set by nas_prune.search before Ray starts


@pytest.fixture(scope="module")
def fake_run(ray_session, tmp_path_factory):
    run = tmp_path_factory.mktemp("fake") / "run"
    markers = tmp_path_factory.mktemp("markers")
    trials = nas_prune.search(
        budget_flops=0.5,
        dataset="synthetic",
        model="convnet",
        trials=48,
        workers=2,
        pretrain_epochs=1,
        epochs_per_trial=0.5,
        reduction_factor=4,
        round_to=1,
        startup_trials=4,
        gate_epochs=1,
        gate_seeds=2,
        output=str(run),
        quiet=True,
        evaluator=_fake(markers, fail_widths=FAIL, hopeless_widths=HOPELESS),
    )
    return run, trials, markers


def test_every_contract_file_is_written(fake_run):
    run, trials, _ = fake_run
    for name in ("config.yaml", "dense.pt", "trials.csv", "pareto.csv", "best_arch.json", "study.db",
                 "fidelity.json", "evaluations.jsonl", "seeds.json", "pareto.png", "widths.png",
                 "progress.png", "gates.png", "gates.csv"):  # fmt: skip
        assert (run / name).is_file(), name
    assert isinstance(trials, pd.DataFrame) and trials.attrs["run_dir"] == str(run)
    assert (trials["schema_version"] == 2).all()


def test_candidate_count_and_every_proposal_on_the_budget(fake_run):
    _, trials, _ = fake_run
    evaluated = trials[trials["state"].isin(EVALUATED)]
    assert len(evaluated) == 48 and (trials["state"] != "infeasible").all()  # the projection always fits
    sampled = evaluated[~evaluated["source"].isin(SEEDS)]
    assert (sampled["flops_ratio"] <= sampled["level"] * 0.5 + 1e-9).all()
    within = sampled["flops_ratio"] >= sampled["level"] * 0.5 * 0.98  # the default band: 2% under it
    assert within.mean() >= 0.9, sampled[["level", "flops_ratio"]]
    assert (sampled["level"] == 1.0).mean() >= 0.5 and set(sampled["level"]) == {1.0, 0.8, 0.6}


def test_seeds_climb_every_rung(fake_run):
    run, trials, _ = fake_run
    seeds = trials[trials["source"].isin(SEEDS)].sort_values("trial_id")
    assert list(seeds["source"].head(3)) == ["uniform", "l2", "sensitivity"] and "gates" in set(
        seeds["source"]
    )
    ok = seeds[seeds["state"] != "failed"]  # a gate seed may hit the fake's planted failure
    assert len(ok) >= 3 and (ok["state"] == "complete").all() and (ok["rung"] == 2).all()
    assert (ok["epochs"] == 0.5).all() and ok["rung0_accuracy"].notna().all()


def test_ladder_promotes_the_best_of_each_level_and_never_a_hopeless_one(fake_run):
    run, trials, _ = fake_run
    journal = Journal.open(run / "evaluations.jsonl")
    ladder = Ladder.build(0.5, 2, 4)
    sampled = trials[~trials["source"].isin(SEEDS) & trials["rung0_accuracy"].notna()]
    hopeless = sampled["widths"].map(lambda w: json.loads(w)["features.conv1.conv"] in HOPELESS)
    assert hopeless.any() and (sampled.loc[hopeless, "rung"] == 0).all()
    for level, group in sampled.groupby("level"):
        promoted = group[group["rung"] >= 1]
        assert len(promoted) == ladder.keep(len(group)), level
        # the promoted are exactly the level's best rung-0 scores
        assert promoted["rung0_accuracy"].min() >= group.loc[group["rung"] == 0, "rung0_accuracy"].max()
    assert (trials.loc[trials["rung"] == 1, "epochs"] == 0.125).all()
    results = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    scored = [(r["trial_id"], r["rung"]) for r in results if r["kind"] == "result"]
    assert len(scored) == len(set(scored)) == len(journal.results)


def test_optuna_is_told_only_rung_zero_scores(fake_run):
    run, trials, _ = fake_run
    by_id = trials.set_index("trial_id")
    storage = f"sqlite:///{run / 'study.db'}"
    told = 0
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            row = by_id.loc[t.user_attrs["trial_id"]]
            assert t.value == pytest.approx(row["rung0_accuracy"])
            assert float(summary.study_name.removeprefix("level")) == row["level"]
            told += 1
    assert told >= len(trials[trials["state"] != "failed"]) - 2


def test_only_feasible_proposals_are_evaluated(fake_run):
    _, trials, markers = fake_run
    evaluated = {int(p.name.split("-")[0]) for p in markers.iterdir()}
    assert evaluated == set(trials.loc[trials["state"].isin(EVALUATED), "trial_id"])


def _brute_force_front(trials: pd.DataFrame) -> set[int]:
    """Independent of results.pareto_front: a double loop over the top rung's complete feasible rows."""
    pool = trials[(trials["state"] == "complete") & trials["feasible"]]
    pool = pool[pool["rung"] == pool["rung"].max()]
    rows = list(pool[["trial_id", "val_accuracy", "flops"]].itertuples(index=False))
    keep = set()
    for a in rows:
        dominated = any(
            b.val_accuracy >= a.val_accuracy
            and b.flops <= a.flops
            and (b.val_accuracy > a.val_accuracy or b.flops < a.flops)
            for b in rows
        )
        if not dominated:
            keep.add(int(a.trial_id))
    return keep


def test_pareto_and_best_arch_are_taken_at_the_top_rung(fake_run):
    run, trials, _ = fake_run
    front = pd.read_csv(run / "pareto.csv")
    assert len(front) and set(front["trial_id"]) == _brute_force_front(trials)
    assert (front["rung"] == 2).all() and list(front["flops"]) == sorted(front["flops"])
    best = json.loads((run / "best_arch.json").read_text())
    top = trials[(trials["state"] == "complete") & (trials["rung"] == 2)]
    assert best["val_accuracy"] == pytest.approx(top["val_accuracy"].max())
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


def test_fidelity_json_reports_rungs_and_correlations(fake_run):
    run, trials, _ = fake_run
    fidelity = json.loads((run / "fidelity.json").read_text())
    assert [r["rung"] for r in fidelity["rungs"]] == [0, 1, 2]
    assert [r["epochs"] for r in fidelity["rungs"]] == [0.0, 0.125, 0.5]
    assert fidelity["rungs"][0]["evaluated"] == int(trials["rung0_accuracy"].notna().sum())
    assert all(r["per_hour"] > 0 for r in fidelity["rungs"])
    pairs = fidelity["correlations"]
    assert [(p["lower"], p["upper"]) for p in pairs] == [(0, 1), (1, 2)]
    assert (
        pairs[0]["n"] == int((trials["rung"] >= 1).sum()) - int((trials["state"] == "failed").sum() > 0) * 0
    )
    assert pairs[0]["kendall"] > 0.5 and fidelity["warning"] is None  # the fake's rungs agree
    assert fidelity["overhead_share"] is not None and set(fidelity) >= {"schema_version", "overhead_share"}


def test_failed_candidate_is_recorded_and_the_search_goes_on(fake_run):
    _, trials, _ = fake_run
    failed = trials[trials["state"] == "failed"]
    assert len(failed) >= 1 and failed["error"].str.contains("planted failure").all()
    assert failed["val_accuracy"].isna().all()
    assert failed["trial_id"].min() < trials["trial_id"].max()


def test_latency_is_measured_for_the_top_rung(fake_run):
    _, trials, _ = fake_run
    top = trials[trials["state"] == "complete"]
    assert (top["latency_ms"] > 0).all() and (top["latency_batch"] == 1).all()
    assert top["latency_device"].str.startswith("cpu").all()
    assert trials.loc[trials["state"] == "stopped", "latency_ms"].isna().all()


def test_resume_adds_candidates_without_repeating_evaluations(fake_run):
    run, trials, markers = fake_run
    before = len(list(markers.iterdir()))
    more = nas_prune.search(
        resume=run, trials=56, quiet=True, evaluator=_fake(markers, fail_widths=[8], hopeless_widths=[4, 12])
    )
    assert more["state"].isin(EVALUATED).sum() == 56 and more["trial_id"].is_unique
    assert set(trials["trial_id"]) < set(more["trial_id"])
    new_markers = len(list(markers.iterdir())) - before
    assert 8 <= new_markers  # 8 new rung-0 scores, plus the new promotions; nothing scored twice
    lines = [json.loads(x) for x in (run / "evaluations.jsonl").read_text().splitlines()]
    scored = [(r["trial_id"], r["rung"]) for r in lines if r["kind"] == "result"]
    assert len(scored) == len(set(scored)) == len(list(markers.iterdir()))


def test_real_evaluation_end_to_end(ray_session, tmp_path):
    trials = nas_prune.search(
        budget_flops=0.4,
        dataset="synthetic",
        trials=6,
        workers=2,
        pretrain_epochs=1,
        epochs_per_trial=0.4,
        rungs=1,
        reduction_factor=2,
        gate_epochs=0,
        output=str(tmp_path / "run"),
        quiet=True,
    )
    evaluated = trials[trials["state"].isin(EVALUATED)]
    assert len(evaluated) == 6 and (evaluated["state"] != "failed").all()
    assert evaluated["val_accuracy"].between(0, 1).all() and evaluated["rung0_accuracy"].between(0, 1).all()
    top = trials[trials["state"] == "complete"]
    assert len(top) >= 3 and (top["epochs"] > 0).all()  # the three seeds, fine-tuned


def test_random_sampler_is_the_control_with_the_same_ladder(ray_session, tmp_path):
    trials = nas_prune.search(
        budget_flops=0.5,
        dataset="synthetic",
        model="convnet",
        trials=10,
        workers=1,
        pretrain_epochs=1,
        sampler="random",
        seeds=(),
        gate_epochs=0,
        reduction_factor=4,
        output=str(tmp_path / "run"),
        quiet=True,
        evaluator=_fake(tmp_path),
    )
    assert (trials["source"] == "random").all() and trials["state"].isin(EVALUATED).sum() == 10
    assert (trials["state"] == "complete").sum() == 3  # one per cost level at the top rung


def test_time_budget_stops_rung_zero_in_time_for_the_promotions(ray_session, tmp_path):
    trials = nas_prune.search(
        budget_flops=0.5,
        dataset="synthetic",
        model="convnet",
        trials=100000,
        workers=2,
        pretrain_epochs=1,
        gate_epochs=0,
        reduction_factor=4,
        time_budget=8,
        output=str(tmp_path / "run"),
        quiet=True,
        evaluator=_fake(tmp_path, delay=0.02),
    )
    fidelity = json.loads((tmp_path / "run" / "fidelity.json").read_text())
    assert 20 < fidelity["rungs"][0]["evaluated"] < 100000
    assert fidelity["ladder_seconds"] <= 8 * 1.25  # rung 0 stopped early enough for rungs 1 and 2
    seeds = trials[trials["source"].isin(SEEDS)]
    assert (seeds["state"] == "complete").all() and (seeds["rung"] == 2).all()
    assert set(trials.loc[trials["rung"] == 2, "level"]) == {1.0, 0.8, 0.6}


def fake_latency(model, example, device, batch):
    """Milliseconds proportional to MACs: deterministic, so the LUT is exact (tests do not time)."""
    return nas_prune.count_macs(model, example)[0] * 1e-5 * batch + 0.01


def _latency_search(tmp_path, latency_fn, budget="0.5", **settings):
    """A fake-evaluated search at ``budget`` of the dense latency, timed by ``latency_fn``."""
    run, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    trials = nas_prune.search(
        budget_latency=budget,
        dataset="synthetic",
        model="convnet",
        workers=1,
        pretrain_epochs=1,
        lut_dir=str(tmp_path / "lut"),
        output=str(run),
        quiet=True,
        evaluator=_fake(markers),
        latency_fn=latency_fn,
        **settings,
    )
    return run, markers, trials, json.loads((run / "latency.json").read_text())


def test_latency_budget_projection_and_measured_feasibility(ray_session, tmp_path):
    run, markers, trials, info = _latency_search(
        tmp_path, fake_latency, "0.3", trials=12, reduction_factor=4, gate_epochs=1, gate_seeds=1
    )
    assert info["trusted"] and info["median_error"] < 1e-6
    assert info["limit_ms"] == pytest.approx(0.3 * info["dense_ms"])
    assert list((tmp_path / "lut").glob("*.json"))  # the LUT's cache
    evaluated = trials[trials["state"].isin(EVALUATED)]
    assert len(evaluated) == 12 and (trials["latency_predicted_ms"] > 0).all()
    sampled = evaluated[~evaluated["source"].isin(SEEDS)]
    assert (sampled["latency_predicted_ms"] <= sampled["level"] * info["limit_ms"] + 1e-9).all()
    measured = trials[trials["state"] == "complete"]
    assert (
        len(measured)
        and (measured["latency_ms"] <= info["limit_ms"] + 1e-9).all()
        and measured["feasible"].all()
    )
    front = pd.read_csv(run / "pareto.csv")
    assert len(front) and (front["latency_ms"] <= info["limit_ms"] + 1e-9).all()


def test_an_untrusted_lut_only_aims_and_measurement_judges(ray_session, tmp_path):
    """A LUT that fails validation rejects nothing; the measured latency decides feasibility."""
    import random

    noise = random.Random(0)

    def erratic(model, example, device, batch):  # unrelated to the architecture: the LUT cannot work
        return noise.uniform(0.1, 10.0)

    _, _, trials, info = _latency_search(tmp_path, erratic, trials=6, gate_epochs=0, reduction_factor=4)
    assert not info["trusted"]
    assert (trials["state"] != "infeasible").all()  # nothing rejected on the LUT's word
    measured = trials[trials["state"] == "complete"]
    assert len(measured) >= 1
    assert (measured["feasible"] == (measured["latency_ms"] <= info["limit_ms"])).all()


def test_latency_budget_parsing():
    assert parse_latency_budget("12ms") == (12.0, None)
    assert parse_latency_budget("0.8") == (None, 0.8)
    for bad in ("fast", "1.5", "0", "-2ms"):
        with pytest.raises(nas_prune.NasPruneError):
            parse_latency_budget(bad)


def test_older_trials_csv_still_reads(tmp_path):
    """A version-1 table (ASHA's ``pruned`` state, no rung columns) reads as schema 2."""
    from nas_prune.results import _V1_COLUMNS

    row = dict.fromkeys(_V1_COLUMNS, "")
    row.update(
        trial_id="0",
        state="pruned",
        source="optuna",
        val_accuracy="0.5",
        widths='{"a":4}',
        feasible="True",
        schema_version="1",
        epochs="0.25",
    )
    pd.DataFrame([row], columns=_V1_COLUMNS).to_csv(tmp_path / "trials.csv", index=False)
    trials = read_trials(tmp_path / "trials.csv")
    assert (
        trials.loc[0, "state"] == "stopped"
        and trials.loc[0, "rung"] == 0
        and np.isnan(trials.loc[0, "rung0_accuracy"])
    )


def test_no_architecture_is_evaluated_twice_and_an_exhausted_grid_ends_rung_zero(
    ray_session, tmp_path, capsys
):
    """On a coarse grid many keep-score proposals project onto one architecture. Each is evaluated once;
    repeats are failed in the study without a candidate and followed by a uniform draw, and when nothing
    new comes, rung 0 ends."""
    markers = tmp_path / "markers"
    markers.mkdir()
    trials = nas_prune.search(
        budget_flops=0.5, dataset="synthetic", model="convnet", trials=60, workers=2, pretrain_epochs=1,
        round_to=16, min_fraction=0.5, seeds=("uniform",), gate_epochs=0, startup_trials=4,
        reduction_factor=4, output=str(tmp_path / "run"), quiet=True, evaluator=_fake(markers),
    )  # fmt: skip
    rung0 = [p for p in markers.iterdir() if p.name.split("-")[1] == "0"]
    evaluated = trials[trials["state"].isin(EVALUATED)]
    assert len(rung0) == len(evaluated) == evaluated["widths"].nunique() < 60
    assert "already evaluated" in capsys.readouterr().err
    sampled = evaluated[evaluated["source"] != "uniform"]
    assert (sampled["source"] == "random").sum() > 4  # after a repeat, a uniform draw (start-up: 4)
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    repeats = sum(
        bool(t.user_attrs.get("repeat")) and t.state == optuna.trial.TrialState.FAIL
        for s in optuna.get_all_study_summaries(storage)
        for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
    )
    assert repeats >= 200  # the cap of repeats in a row that ended rung 0
    sampler = json.loads((tmp_path / "run" / "fidelity.json").read_text())["sampler"]
    assert sampler["repeated_proposals"] == repeats and 0 < sampler["repeat_share"] < 1
    scored = trials[trials["state"] != "infeasible"]
    assert sampler["model_share"] == pytest.approx(scored["source"].isin(MODEL_SOURCES).mean())
    assert sum(sampler["sources"].values()) == len(scored)


def test_a_worker_that_dies_mid_ladder_is_restarted_and_its_calls_retried(ray_session, tmp_path):
    from search_fakes import CrashOnceEvaluator

    markers = tmp_path / "markers"
    markers.mkdir()
    evaluator = functools.partial(
        CrashOnceEvaluator, crash_trial=6, marker_dir=str(markers), dense_total=DENSE_TOTAL
    )
    trials = nas_prune.search(
        budget_flops=0.5, dataset="synthetic", model="convnet", trials=16, workers=2, pretrain_epochs=1,
        epochs_per_trial=0.5, reduction_factor=4, gate_epochs=0, startup_trials=4, output=str(tmp_path / "run"),
        quiet=True, evaluator=evaluator,
    )  # fmt: skip
    assert (markers / "crashed").exists()  # the worker did die on trial 6
    assert not (trials["state"] == "failed").any(), trials.loc[trials["state"] == "failed", "error"].tolist()
    assert trials.loc[trials["trial_id"] == 6, "rung0_accuracy"].notna().all()
    assert trials["rung0_accuracy"].notna().sum() == 16
