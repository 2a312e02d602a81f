"""Tests for ``retrain --top K`` (the finalists as Ray Tune trials) and ``--inherit-from``.

They reuse :mod:`test_retrain`'s tiny run directory (synthetic data, ``convnet``, three complete
trials, trial 2 the most accurate) and its injected latency; Tune runs on the module's one Ray session.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import test_retrain as base
import test_search_cli as cli_tests
import torch

from nas_prune import prune
from nas_prune.cli import run_cli
from nas_prune.errors import NasPruneError
from nas_prune.prune import channel_importance
from nas_prune.retrain import RetrainConfig, main, retrain
from nas_prune.retrain.run import plan_job
from nas_prune.supernet import Supernet, save_supernet
from nas_prune.task import resolve_task

EXAMPLE, widths_of = base.EXAMPLE, base.widths_of
template, run_dir, no_timing = base.template, base.run_dir, base.no_timing  # the fixtures, used here too
FAST = {"batch_size": 32, "progress": False, "quiet": True, "export": False, "latency_batch_large": 4}


def result_epochs(trial_dir: Path) -> list[float]:
    """The epochs a Tune trial reported, in order, over every session of the experiment."""
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def trial_dirs(run_dir: Path, name: str) -> list[Path]:
    return sorted(p for p in (run_dir / "retrain" / "tune" / name).iterdir() if (p / "result.json").is_file())


def test_top2_runs_two_tune_trials_and_picks_by_validation(run_dir, ray_session):
    picked = retrain(run_dir, top=2, epochs=2, **FAST)

    dirs = trial_dirs(run_dir, "scratch-top2")
    assert len(dirs) == 2 and all(result_epochs(d) == [1.0, 2.0] for d in dirs)  # one report per epoch
    assert all(any(p.name.startswith("checkpoint_") for p in d.iterdir()) for d in dirs)
    finalists = {row["name"]: row for row in picked["finalists"]}
    assert set(finalists) == {"scratch-trial2", "scratch-trial1"}  # the two most accurate of trials.csv
    best = max(finalists.values(), key=lambda row: row["val_accuracy"])
    assert picked["name"] == best["name"] and picked["val_accuracy"] == best["val_accuracy"]

    summary = pd.read_csv(run_dir / "retrain" / "summary.csv").set_index("name")
    for name, row in finalists.items():
        assert summary.loc[name, "test_accuracy"] == pytest.approx(row["test_accuracy"])
        assert bool(summary.loc[name, "top_pick"]) == (name == picked["name"])
        metrics = json.loads((run_dir / "retrain" / name / "metrics.json").read_text())
        assert metrics["epochs"] == 2 and [h["epoch"] for h in metrics["history"]] == [1.0, 2.0]
    assert pd.isna(summary.loc["dense", "top_pick"])
    top = json.loads((run_dir / "retrain" / "top.json").read_text())
    assert (
        top["runs"]["scratch"]["picked"] == picked["name"] and len(top["runs"]["scratch"]["finalists"]) == 2
    )


@dataclasses.dataclass
class FailInSecondEpoch:
    """A training step that raises in the second epoch of a model while ``sentinel`` exists."""

    step: object
    sentinel: str
    steps_per_epoch: int

    def __call__(self, model, batch):
        model.steps_taken = getattr(model, "steps_taken", 0) + 1
        if model.steps_taken > self.steps_per_epoch and os.path.exists(self.sentinel):
            raise RuntimeError("injected failure")
        return self.step(model, batch)


def test_an_interrupted_top2_resumes_without_redoing_an_epoch(run_dir, ray_session, tmp_path):
    task = resolve_task(None, "synthetic", subset=96)
    steps = len(task.loader("train", 32, train=True, seed=0, drop_last=True))
    sentinel = tmp_path / "fail"
    sentinel.touch()
    failing = dataclasses.replace(
        task, training_step=FailInSecondEpoch(task.training_step, str(sentinel), steps)
    )
    with (
        pytest.raises(NasPruneError, match="no finalist of --top 2 finished"),
        pytest.warns(UserWarning, match="injected"),
    ):
        retrain(run_dir, top=2, epochs=2, task=failing, **FAST)
    outs = [run_dir / "retrain" / name for name in ("scratch-trial2", "scratch-trial1")]
    for out in outs:
        assert torch.load(out / "checkpoint.pt", weights_only=True)["rounds_done"] == 1
        assert not (out / "metrics.json").exists()
    (outs[0] / "checkpoint.pt").unlink()  # this one can only continue from Tune's checkpoint
    sentinel.unlink()

    picked = retrain(run_dir, top=2, epochs=2, task=failing, **FAST)
    assert {row["name"] for row in picked["finalists"]} == {out.name for out in outs}
    for out in outs:
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["resumed_from_epoch"] == 1.0 and [h["epoch"] for h in metrics["history"]] == [1.0, 2.0]
    assert all(result_epochs(d) == [1.0, 2.0] for d in trial_dirs(run_dir, "scratch-top2"))  # no epoch twice
    summary = pd.read_csv(run_dir / "retrain" / "summary.csv")
    assert summary["test_accuracy"].notna().all() and summary["top_pick"].sum() == 1


def test_top2_killed_with_sigkill_resumes_without_redoing_an_epoch(run_dir):
    """kill -9 of the whole ``retrain --top 2`` process group (driver, Ray, both Tune trials) once a trial
    has reported an epoch; the same command again restores the experiment, reports and trains no epoch
    twice, and finishes both finalists."""
    epochs, tmp = 30, tempfile.mkdtemp(prefix="rt", dir="/tmp")
    args = [sys.executable, "-m", "nas_prune.retrain", str(run_dir), "--top", "2", "--epochs", str(epochs),
            "--batch-size", "32", "--no-export", "--no-progress", "--latency-batch-large", "4"]  # fmt: skip
    tune_dir = run_dir / "retrain" / "tune" / "scratch-top2"
    proc = subprocess.Popen(
        args,
        env=cli_tests._env(tmp),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if tune_dir.is_dir() and any(result_epochs(d) for d in trial_dirs(run_dir, "scratch-top2")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        cli_tests._end_processes_under(tmp)
    before = {d.name: result_epochs(d) for d in trial_dirs(run_dir, "scratch-top2")}
    assert 0 < max(map(len, before.values())) and min(map(len, before.values())) < epochs  # killed mid-way
    try:
        again = subprocess.run(args, env=cli_tests._env(tmp), capture_output=True, text=True, timeout=400)
    finally:
        cli_tests._end_processes_under(tmp)
    assert again.returncode == 0, again.stderr[-2000:]
    for trial in trial_dirs(run_dir, "scratch-top2"):
        reported = result_epochs(trial)
        assert reported[: len(before.get(trial.name, []))] == before.get(trial.name, [])
        assert reported == sorted(set(reported)) and reported[-1] == epochs  # no epoch reported twice
    resumed = []
    for name in ("scratch-trial2", "scratch-trial1"):
        metrics = json.loads((run_dir / "retrain" / name / "metrics.json").read_text())
        assert [h["epoch"] for h in metrics["history"]] == [float(e) for e in range(1, epochs + 1)]
        resumed.append(metrics["resumed_from_epoch"])
    assert max(resumed) >= 1.0  # continued from a checkpoint, not from the start
    summary = pd.read_csv(run_dir / "retrain" / "summary.csv")
    assert summary["top_pick"].sum() == 1


def make_supernet(run_dir: Path) -> Supernet:
    """A supernet.pt whose weights and ranking both differ from the dense model's."""
    torch.manual_seed(1)
    dense = plan_job(run_dir, RetrainConfig(trial=0)).run.dense
    shared = {
        k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in dense.state_dict().items()
    }
    ranking = {
        k: -v for k, v in channel_importance(dense, EXAMPLE, "l2").items()
    }  # the least important first
    supernet = Supernet(shared, ranking)
    save_supernet(run_dir / "supernet.pt", supernet, {"epochs": 1.0})
    return supernet


def test_inherit_from_supernet_slices_the_supernet_and_dense_stays_the_default(run_dir):
    supernet = make_supernet(run_dir)
    widths = widths_of(run_dir, 0)
    from_supernet = plan_job(run_dir, RetrainConfig(trial=0, init="inherit", inherit_from="supernet"))
    from_dense = plan_job(run_dir, RetrainConfig(trial=0, init="inherit"))  # a supernet.pt is there
    assert from_supernet.inherit_from == "supernet" and from_dense.inherit_from == "dense"
    assert "inherit_from" not in from_dense.settings  # as before the supernet: earlier retrains resume
    expected = prune(supernet.model(from_dense.run.dense), EXAMPLE, widths, importance=supernet.ranking)
    dense_slim = prune(from_dense.run.dense, EXAMPLE, widths, "l2")
    for key, value in expected.state_dict().items():
        assert torch.equal(from_supernet.slim.state_dict()[key], value), key
        assert torch.equal(from_dense.slim.state_dict()[key], dense_slim.state_dict()[key]), key
    assert not torch.equal(from_supernet.slim.state_dict()["features.conv1.conv.weight"],
                           from_dense.slim.state_dict()["features.conv1.conv.weight"])  # fmt: skip

    metrics = retrain(run_dir, trial=0, init="inherit", inherit_from="supernet", epochs=0.5, **FAST)
    assert metrics["inherit_from"] == "supernet" and metrics["settings"]["inherit_from"] == "supernet"
    summary = pd.read_csv(run_dir / "retrain" / "summary.csv").set_index("name")
    assert summary.loc["inherit-trial0", "inherit_from"] == "supernet"


def test_inherit_without_a_supernet_is_from_the_dense_model(run_dir):
    metrics = retrain(run_dir, trial=0, init="inherit", epochs=0.5, **FAST)
    assert metrics["inherit_from"] == "dense" and "inherit_from" not in metrics["settings"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top", "0"], "--top must be at least 1"),
        (["--top", "4"], "--top 4 is more than the 3 complete feasible top-rung architectures"),
        (["--top", "2", "--trial", "1"], "not both"),
        (["--top", "2", "--rank", "1"], "not both"),
        (["--asha"], "only apply with --top"),
        (["--inherit-from", "dense"], "only applies with --init inherit"),
        (["--init", "inherit", "--inherit-from", "supernet"], "no supernet.pt"),
    ],
)
def test_bad_top_and_inherit_flags_are_one_line_and_exit_2(run_dir, capsys, extra, message):
    assert run_cli(main, [str(run_dir), "--epochs", "1", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (run_dir / "retrain").exists()


def test_help_explains_the_new_flags(capsys):
    assert run_cli(main, ["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ["--top", "--asha", "--ray-address", "--inherit-from"]:
        assert flag in text
