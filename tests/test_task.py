"""A user's own model and task, end to end: search, retrain and baselines of a dict-output regressor
given as Python objects and as ``pkg.module:factory`` paths; bad tasks end in one line and exit 2.

One Ray session for the module, with ``tests/`` on the workers' path (so ``--task task_fakes:...``
imports there). The object runs use a copy of ``task_fakes`` loaded under another name from a folder
the workers cannot import: only Ray's serialisation can bring them its classes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import nas_prune
from nas_prune.baselines import BaselineConfig
from nas_prune.baselines import main as baselines_main
from nas_prune.cli import run_cli
from nas_prune.errors import NasPruneError
from nas_prune.retrain import main as retrain_main
from nas_prune.search import main as search_main
from nas_prune.task import Task, TaskError, check_task, resolve_task

TESTS = Path(__file__).parent
LADDER = dict(trials=6, workers=1, rungs=1, epochs_per_trial=0.2, reduction_factor=2, batch_size=16)
CLI_LADDER = ["--trials", "5", "--workers", "1", "--rungs", "1", "--epochs-per-trial", "0.2",
              "--reduction-factor", "2", "--gate-epochs", "0"]  # fmt: skip
PATHS = ["--task", "task_fakes:regression_task", "--model", "task_fakes:two_head_net"]


@pytest.fixture(scope="module")
def user_script(tmp_path_factory):
    """``task_fakes`` as a user's own script: a module the Ray workers cannot import."""
    folder = tmp_path_factory.mktemp("user")
    shutil.copy(TESTS / "task_fakes.py", folder / "my_training_script.py")
    spec = importlib.util.spec_from_file_location("my_training_script", folder / "my_training_script.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_training_script"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["my_training_script"]


@pytest.fixture(scope="module")
def trained(user_script):
    """The user's trained model and task (objects), trained here as the user would."""
    torch.manual_seed(0)
    model, task = user_script.two_head_net(), user_script.regression_task()
    nas_prune.fit(model, task, epochs=3, batch_size=16, lr=0.05, progress=False)
    return model, task


@pytest.fixture(scope="module")
def api_run(ray_session, trained, tmp_path_factory):
    model, task = trained
    run = tmp_path_factory.mktemp("api") / "run"
    trials = nas_prune.search(
        model=model, task=task, budget_flops=0.5, gate_epochs=0.5, gate_seeds=1, output=str(run), quiet=True,
        **LADDER,
    )  # fmt: skip
    return run, trials


def test_a_search_of_a_dict_output_model_given_as_objects(api_run, trained):
    run, trials = api_run
    assert "val_score" in trials.columns and "val_accuracy" not in trials.columns
    header = (run / "trials.csv").read_text().splitlines()[0].split(",")
    assert "val_score" in header and "val_accuracy" not in header
    assert "val_score" in (run / "pareto.csv").read_text().splitlines()[0].split(",")
    done = trials[trials["state"].isin(["complete", "stopped"])]
    assert len(done) >= 4 and set(trials["state"]) <= {"complete", "stopped"}  # nothing failed
    assert (done["val_score"] < 0).all() and (done["rung0_accuracy"] < 0).all()  # minus an MSE
    assert {"uniform", "l2", "sensitivity", "gates"} <= set(trials["source"])
    assert (trials["flops_ratio"] <= 0.5 + 1e-9).all()
    best = json.loads((run / "best_arch.json").read_text())
    assert best["score_name"] == "neg_mse" and "val_score" in best and "val_score" in best["dense"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["score_name"] == "neg_mse" and config["given"] == {"model": "object", "task": "object"}
    assert config["settings"]["model"] == "TwoHeadNet"
    dense = torch.load(run / "dense.pt", weights_only=True)
    model, _ = trained
    assert all(torch.equal(dense["state_dict"][k], v) for k, v in model.state_dict().items())


def test_retrain_and_a_baseline_of_it_through_the_python_api(api_run, trained, tmp_path):
    run, _ = api_run
    model, task = trained
    metrics = nas_prune.retrain(
        run, model=model, task=task, init="inherit", epochs=0.3, quiet=True, progress=False,
        latency_fn=lambda *a, **k: 1.0,
    )  # fmt: skip
    assert metrics["score_name"] == "neg_mse" and math.isfinite(metrics["test_score"])
    assert "test_accuracy" not in metrics and metrics["dense"]["test_score"] < 0
    assert metrics["flops_ratio"] <= 0.5 + 1e-9
    assert metrics["export"] and metrics["export_verified"]  # reloads without the user's source
    with pytest.raises(NasPruneError, match="given as a Python object"):
        nas_prune.load_pruned(Path(metrics["output"]) / "model.pt")
    summary = pd.read_csv(run / "retrain" / "summary.csv")
    assert {"test_score", "val_score"} <= set(summary.columns)
    distilled = nas_prune.retrain(
        run, model=model, task=task, init="inherit", distill=True, epochs=0.2, quiet=True, progress=False,
        export=False, latency_fn=lambda *a, **k: 1.0,
    )  # fmt: skip
    assert distilled["distill"] and math.isfinite(distilled["test_score"])

    config = BaselineConfig(method="l2-structured", budget_flops=0.5, epochs=0.2, batch_size=16,
                            output=str(tmp_path / "l2"), progress=False)  # fmt: skip
    baseline = nas_prune.run_baseline(
        config, model=model, task=task, quiet=True, latency_fn=lambda *a, **k: 1.0
    )
    assert baseline["score_name"] == "neg_mse" and math.isfinite(baseline["test_score"])
    assert baseline["flops_ratio"] <= 0.5 + 1e-9


def test_a_run_searched_with_objects_needs_them_again(api_run, trained):
    run, _ = api_run
    model, task = trained
    with pytest.raises(NasPruneError, match="given as a Python object"):
        nas_prune.search(resume=run, quiet=True)
    with pytest.raises(NasPruneError, match="model given as a Python object"):
        nas_prune.retrain(run, task=task, quiet=True)
    with pytest.raises(NasPruneError, match="task given as a Python object"):
        nas_prune.retrain(run, model=model, quiet=True)


def test_search_retrain_and_baseline_through_task_paths(ray_session, trained, tmp_path, capsys):
    model, _ = trained
    weights = tmp_path / "my_weights.pt"
    torch.save(model.state_dict(), weights)  # a plain state_dict from the user's own training
    run = tmp_path / "run"
    argv = [*PATHS, "--checkpoint", str(weights), "--budget-flops", "0.5", *CLI_LADDER, "--output", str(run)]
    assert run_cli(search_main, argv) == 0
    trials = pd.read_csv(run / "trials.csv")
    assert "val_score" in trials.columns and trials["val_score"].notna().sum() >= 3
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["given"] == {"model": "name", "task": "path"} and config["settings"]["task"] == PATHS[1]
    assert run_cli(search_main, ["--resume", str(run), "--trials", "6"]) == 0  # rebuilt from the path
    assert pd.read_csv(run / "trials.csv")["rung0_accuracy"].notna().sum() == 6

    assert (
        run_cli(
            retrain_main, [str(run), "--init", "inherit", "--epochs", "0.2", "--no-export", "--no-progress"]
        )
        == 0
    )
    metrics = json.loads(next((run / "retrain").glob("inherit-trial*/metrics.json")).read_text())
    assert metrics["score_name"] == "neg_mse" and "test_score" in metrics
    reloaded = nas_prune.load_pruned(next((run / "retrain").glob("inherit-trial*/model.pt")))
    assert set(reloaded(torch.zeros(1, 1, 12, 12))) == {"heat", "level"}

    out = tmp_path / "baseline"
    argv = ["uniform-scratch", *PATHS, "--budget-flops", "0.5", "--epochs", "0.2", "--pretrain-epochs", "0.2",
            "--output", str(out), "--no-progress"]  # fmt: skip
    assert run_cli(baselines_main, argv) == 0
    assert json.loads((out / "metrics.json").read_text())["score_name"] == "neg_mse"
    capsys.readouterr()


def test_a_score_that_fails_only_during_the_ladder_is_a_failed_row(ray_session, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--task", "task_fakes:narrow_fails_task", "--model", "task_fakes:two_head_net",
            "--pretrain-epochs", "0.5", "--budget-flops", "0.9", *CLI_LADDER, "--output", str(run)]  # fmt: skip
    assert run_cli(search_main, argv) == 0
    trials = pd.read_csv(run / "trials.csv", keep_default_na=False)
    failed = trials[trials["state"] == "failed"]
    assert len(failed) >= 1 and len(trials[trials["state"] != "failed"]) >= 1
    assert failed["error"].str.contains("the task's score raised ValueError: too few parameters").all()
    capsys.readouterr()


@pytest.mark.parametrize(
    "task, message",
    [
        ("task_fakes:not_a_task", "returned a dict, not a nas_prune Task"),
        ("task_fakes:vector_loss_task", "not a scalar loss tensor"),
        ("task_fakes:nan_loss_task", "returned nan, not a finite number"),
        ("task_fakes:raising_score_task", "the task's score raised RuntimeError: the metric library"),
        ("task_fakes:text_score_task", "the task's score returned a str, not a number"),
        ("task_fakes:wrong_batch_task", "a training batch does not run through the model"),
        ("task_fakes:bad_example_task", "the model rejects the example inputs"),
        ("task_fakes:no_such_factory", "has no attribute 'no_such_factory'"),
        ("no-colon", "is not of the form pkg.module:factory"),
    ],
)
def test_a_bad_task_is_one_line_and_exit_2_before_any_work(task, message, tmp_path, capsys):
    argv = [
        "--task",
        task,
        "--model",
        "task_fakes:two_head_net",
        "--budget-flops",
        "0.5",
        "--output",
        str(tmp_path / "r"),
    ]
    assert run_cli(search_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r" / "dense.pt").exists()  # nothing was trained


def test_train_and_baselines_refuse_a_bad_task_the_same_way(tmp_path, capsys):
    from nas_prune.train import main as train_main

    argv = [
        "--task",
        "task_fakes:raising_score_task",
        "--model",
        "task_fakes:two_head_net",
        "--output",
        str(tmp_path / "d.pt"),
    ]
    assert run_cli(train_main, argv) == 2
    assert "the task's score raised" in capsys.readouterr().err
    argv = ["l2-structured", *PATHS[:1], "task_fakes:vector_loss_task", *PATHS[2:], "--budget-flops", "0.5",
            "--output", str(tmp_path / "b")]  # fmt: skip
    assert run_cli(baselines_main, argv) == 2
    assert "not a scalar loss tensor" in capsys.readouterr().err


def test_a_task_needs_its_model_and_distillation_needs_a_hook(trained, tmp_path, capsys):
    assert run_cli(search_main, ["--task", "task_fakes:regression_task", "--budget-flops", "0.5"]) == 2
    assert "a task needs its model" in capsys.readouterr().err
    _, task = trained
    import dataclasses

    plain = dataclasses.replace(task, distill_loss=None)
    with pytest.raises(TaskError, match="--distill does not apply"):
        plain.distillation_step(torch.nn.Identity())


def test_the_train_cli_trains_a_task_and_names_its_score(tmp_path, capsys):
    from nas_prune.train import main as train_main

    out = tmp_path / "dense.pt"
    argv = [*PATHS, "--epochs", "0.5", "--output", str(out), "--no-progress"]
    assert run_cli(train_main, argv) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["score_name"] == "neg_mse" and ckpt["test_score"] < 0 and "test_accuracy" not in ckpt
    assert "test neg_mse" in capsys.readouterr().out


def test_a_task_carves_validation_streams_batches_and_keeps_subsets(user_script):
    task = user_script.regression_task()
    assert (task.size("train"), task.size("val"), task.size("test")) == (144, 16, 48)
    small = resolve_task(task, subset=40)
    assert (small.size("train"), small.size("val"), small.size("test")) == (36, 4, 40)
    first = [b[0] for b in task.loader("train", 32, train=True, seed=3)]
    again = [b[0] for b in task.loader("train", 32, train=True, seed=3)]
    assert len(first) == 5 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert isinstance(task, Task) and task.score_key == "score"
    check_task(task, user_script.two_head_net())


class _KeywordBatches(torch.utils.data.Dataset):
    """Items ``({"image", "scale"}, target)`` for ``conftest.DictDetector``, which takes keyword inputs."""

    def __init__(self, count: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.x, self.s = torch.randn(count, 3, 16, 16, generator=gen), torch.rand(count, generator=gen) + 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "scale": self.s[i]}, self.x[i, :1, ::2, ::2].clone()


def _boxes_step(model, batch):
    inputs, target = batch
    return torch.nn.functional.mse_loss(model(**inputs)["boxes"][:, :1], target)


def _boxes_score(model, batches):
    return -sum(float(torch.nn.functional.mse_loss(model(**i)["boxes"][:, :1], t)) for i, t in batches)


def test_a_latency_budget_on_a_model_with_keyword_inputs(ray_session, tmp_path):
    from conftest import DictDetector, detector_inputs

    task = Task(
        train=_KeywordBatches(96, 0), test=_KeywordBatches(32, 1), training_step=_boxes_step, score=_boxes_score,
        score_name="neg_mse", example_inputs=detector_inputs(), name="boxes",
    )  # fmt: skip
    model = DictDetector()
    nas_prune.fit(model, task, epochs=1, batch_size=16, progress=False)
    latency = lambda m, inputs, device=None, batch=1, **kw: nas_prune.count_macs(m, inputs)[0] / 1e4  # noqa: E731
    trials = nas_prune.search(
        model=model, task=task, budget_latency="0.7", trials=5, workers=1, rungs=0, gate_epochs=0, batch_size=16,
        lut_samples=2, output=str(tmp_path / "run"), quiet=True, latency_fn=latency,
    )  # fmt: skip
    assert (trials["state"] == "complete").all() and trials["feasible"].all()
    assert (trials["latency_ratio"] <= 0.7 + 1e-9).all() and trials["val_score"].notna().all()
    metrics = nas_prune.retrain(
        tmp_path / "run", model=model, task=task, init="inherit", epochs=0.2, quiet=True, progress=False,
        latency_fn=latency,
    )  # fmt: skip
    assert metrics["export_verified"] and metrics["speedup"] > 1.0
