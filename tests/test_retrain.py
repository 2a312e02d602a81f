"""Tests for nas_prune.retrain: choosing, retraining, resuming, saving, loading and exporting.

A tiny run directory (synthetic data, ``convnet``, three hand-made complete trials) is built once
without running a search; each test works on its own copy. Latency is injected, never timed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import nas_prune.retrain.run as retrain_mod
import nas_prune.train as train_mod
from nas_prune import channel_groups, count_macs, prune
from nas_prune.checkpoint import load_pruned, save_checkpoint, save_pruned
from nas_prune.cli import run_cli
from nas_prune.config import SearchConfig, write_config
from nas_prune.errors import NasPruneError
from nas_prune.models import create_model, model_spec
from nas_prune.pareto import write_best_arch, write_pareto
from nas_prune.results import append_trial
from nas_prune.retrain import (
    SUMMARY_COLUMNS,
    choose_architecture,
    distillation_loss,
    main,
    output_name,
    retrain,
)

EXAMPLE = torch.zeros(2, 1, 28, 28)
CONTRACT_KEYS = (
    "schema_version test_accuracy val_accuracy macs flops params latency_ms latency_batch latency_large_ms "
    "latency_large_batch latency_device epochs init seed"
).split()
# trial_id -> (fraction of every group kept, validation accuracy): trial 2 is the most accurate.
TRIALS = {0: (0.25, 0.50), 1: (0.5, 0.70), 2: (0.75, 0.80)}
QUICK = {"epochs": 0.5, "batch_size": 32, "progress": False, "quiet": True, "latency_batch_large": 4}


def fake_latency(model, example, device="cpu", batch=1, **kwargs):
    """Milliseconds proportional to the parameter count: deterministic, never timed."""
    return 1e-4 * sum(p.numel() for p in model.parameters()) * batch


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("convnet", in_channels=1, num_classes=10)
    spec = model_spec("convnet", 1, 10, [1, 28, 28])
    save_checkpoint(run / "dense.pt", model, spec, epochs=1.0)
    cfg = SearchConfig(
        budget_flops=0.7, dataset="synthetic", model="convnet", pretrain_epochs=1, subset=96, batch_size=32
    )
    write_config(run / "config.yaml", cfg)
    groups = channel_groups(model, EXAMPLE)
    dense_macs, dense_params = count_macs(model, EXAMPLE)
    for trial_id, (fraction, acc) in TRIALS.items():
        widths = {g.name: max(1, round(g.channels * fraction)) for g in groups}
        macs, params = count_macs(prune(model, EXAMPLE, widths), EXAMPLE)
        append_trial(
            run / "trials.csv",
            {
                "trial_id": trial_id,
                "state": "complete",
                "source": "optuna",
                "val_accuracy": acc,
                "macs": macs,
                "params": params,
                "flops_ratio": macs / dense_macs,
                "params_ratio": params / dense_params,
                "epochs": 0.3,
                "widths": widths,
                "feasible": True,
            },
        )
    append_trial(run / "trials.csv", {"trial_id": 3, "state": "infeasible", "source": "optuna", "widths": {}})
    write_pareto(run)
    write_best_arch(
        run, model="convnet", dataset="synthetic", dense={"macs": dense_macs, "params": dense_params}
    )
    return run


@pytest.fixture
def run_dir(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "run"))


@pytest.fixture(autouse=True)
def no_timing(monkeypatch):
    monkeypatch.setattr(retrain_mod, "measure_latency", fake_latency)


def widths_of(run_dir: Path, trial_id: int) -> dict[str, int]:
    trials = pd.read_csv(run_dir / "trials.csv")
    return json.loads(trials.loc[trials["trial_id"] == trial_id, "widths"].iloc[0])


def shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- choosing an architecture ----------------------------------------------------------------------


def test_rank_and_trial_select_the_right_rows(run_dir):
    assert choose_architecture(run_dir).trial_id == 2  # best_arch.json
    assert [choose_architecture(run_dir, rank=k).trial_id for k in range(3)] == [2, 1, 0]
    chosen = choose_architecture(run_dir, trial=1)
    assert chosen.trial_id == 1 and chosen.widths == widths_of(run_dir, 1)
    with pytest.raises(NasPruneError, match="out of range"):
        choose_architecture(run_dir, rank=3)
    with pytest.raises(NasPruneError, match="not in"):
        choose_architecture(run_dir, trial=99)
    with pytest.raises(NasPruneError, match="infeasible"):
        choose_architecture(run_dir, trial=3)


def test_output_names():
    assert output_name("scratch", 3) == "scratch-trial3"
    assert output_name("inherit", 12, distill=True, budget_matched=True) == "inherit-distill-budget-trial12"


# --- the CLI end to end: rank 0, model.pt, export, metrics, summary --------------------------------


def test_cli_rank0_writes_model_export_metrics_and_summary(run_dir, capsys, monkeypatch):
    argv = [
        str(run_dir),
        "--epochs",
        "0.5",
        "--batch-size",
        "64",
        "--latency-batch-large",
        "4",
        "--no-progress",
    ]
    assert run_cli(main, argv) == 0
    out_dir = run_dir / "retrain" / "scratch-trial2"
    printed = capsys.readouterr().out
    assert "dense" in printed and "scratch-trial2" in printed and "summary.csv" in printed

    metrics = json.loads((out_dir / "metrics.json").read_text())
    for key in [*CONTRACT_KEYS, "trial_id", "widths", "distill", "budget_matched", "dense", "export"]:
        assert key in metrics, key
    for key in CONTRACT_KEYS[1:-2]:
        assert key in metrics["dense"], key
    assert metrics["widths"] == widths_of(run_dir, 2) and metrics["trial_id"] == 2
    assert metrics["init"] == "scratch" and metrics["epochs"] == 0.5 and metrics["latency_large_batch"] == 4
    assert metrics["flops"] == 2 * metrics["macs"] < metrics["dense"]["flops"]
    assert metrics["dense"]["latency_ms"] == pytest.approx(fake_latency(create_model("convnet", 1, 10), None))

    # model.pt: plain data only, exact contract keys, and a strict round trip
    content = torch.load(out_dir / "model.pt", weights_only=True)
    assert set(content) <= {"schema_version", "state_dict", "widths", "spec", "importance"}
    assert content["schema_version"] == 1 and content["widths"] == metrics["widths"]
    assert content["spec"] == {
        "model": "convnet",
        "kwargs": {"in_channels": 1, "num_classes": 10},
        "input_shape": [1, 28, 28],
    }
    model = load_pruned(out_dir / "model.pt")
    again = load_pruned(out_dir / "model.pt")
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    for key, tensor in content["state_dict"].items():
        assert torch.equal(model.state_dict()[key], tensor)

    # export agrees with PyTorch
    assert metrics["export"] in ("model.onnx", "model.pt2") and (out_dir / metrics["export"]).is_file()
    assert metrics["export_verified"] in (True, None) and not metrics["export_error"]
    if metrics["export"] == "model.onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(got), model(x), atol=1e-4)
    assert not (out_dir / "checkpoint.pt").exists()

    summary = pd.read_csv(run_dir / "retrain" / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary["name"].tolist() == ["dense", "scratch-trial2"]
    assert summary.loc[1, "speedup"] == pytest.approx(metrics["speedup"]) and metrics["speedup"] > 1
    assert (run_dir / "retrain" / "summary.png").stat().st_size > 0

    # a finished retrain is reported, not trained again
    calls = []
    monkeypatch.setattr(train_mod, "train_one_epoch", lambda *a, **k: calls.append(1))
    assert run_cli(main, argv) == 0 and not calls
    assert "already retrained" in capsys.readouterr().out


# --- variants --------------------------------------------------------------------------------------


def test_rank1_trial_inherit_distill_and_budget_matched(run_dir):
    by_rank = retrain(run_dir, rank=1, export=False, **QUICK)
    assert by_rank["widths"] == widths_of(run_dir, 1) and Path(by_rank["output"]).name == "scratch-trial1"
    assert [row["epoch"] for row in by_rank["history"]] == [0.5]  # fractional epochs
    assert shapes(load_pruned(Path(by_rank["output"]) / "model.pt")) == shapes(
        prune(create_model("convnet", 1, 10), EXAMPLE, widths_of(run_dir, 1))
    )

    inherited = retrain(run_dir, trial=0, init="inherit", distill=True, export=False, **QUICK)
    assert Path(inherited["output"]).name == "inherit-distill-trial0"
    assert inherited["widths"] == widths_of(run_dir, 0) and inherited["lr"] == 0.01
    assert inherited["distill"] and inherited["temperature"] == 4.0 and inherited["alpha"] == 0.9

    matched = retrain(run_dir, trial=2, budget_matched=True, export=False, **{**QUICK, "epochs": 0.2})
    assert Path(matched["output"]).name == "scratch-budget-trial2"
    assert matched["epochs"] == pytest.approx(0.2 / matched["flops_ratio"])
    assert matched["epochs"] > 0.2 and matched["budget_matched"]

    summary = pd.read_csv(run_dir / "retrain" / "summary.csv")
    assert sorted(summary["name"]) == sorted(
        ["dense", "scratch-trial1", "inherit-distill-trial0", "scratch-budget-trial2"]
    )


def test_distillation_loss():
    student, teacher, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy(student, y)
    assert distillation_loss(student, teacher, y, alpha=0.0) == pytest.approx(float(ce))
    assert float(distillation_loss(teacher, teacher, y, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(student, teacher, y, alpha=1.0)) > 0


# --- resume ----------------------------------------------------------------------------------------


def test_interrupted_retrain_resumes_from_the_last_epoch(run_dir, monkeypatch):
    args = {**QUICK, "epochs": 2, "export": False, "trial": 0}

    def stop_after_first(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrain(run_dir, output=run_dir / "retrain" / "cut", on_epoch_end=stop_after_first, **args)
    checkpoint = torch.load(run_dir / "retrain" / "cut" / "checkpoint.pt", weights_only=True)
    assert checkpoint["rounds_done"] == 1 and not (run_dir / "retrain" / "cut" / "metrics.json").exists()
    with pytest.raises(NasPruneError, match="other settings"):  # a checkpoint continues only as begun
        retrain(run_dir, output=run_dir / "retrain" / "cut", **{**args, "lr": 0.05})

    epochs_trained = []
    real = train_mod.train_one_epoch

    def counting(*a, **k):
        epochs_trained.append(1)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "train_one_epoch", counting)
    resumed = retrain(run_dir, output=run_dir / "retrain" / "cut", **args)
    assert len(epochs_trained) == 1 and resumed["resumed_from_epoch"] == 1.0
    assert [row["epoch"] for row in resumed["history"]] == [1.0, 2.0]

    # the same as an uninterrupted run: each epoch's batches depend only on the seed and its index
    straight = retrain(run_dir, output=run_dir / "retrain" / "straight", **args)
    a = load_pruned(run_dir / "retrain" / "cut" / "model.pt").state_dict()
    b = load_pruned(run_dir / "retrain" / "straight" / "model.pt").state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert resumed["val_accuracy"] == straight["val_accuracy"]

    with pytest.raises(NasPruneError, match="other settings"):
        retrain(run_dir, output=run_dir / "retrain" / "cut", **{**args, "seed": 7})


# --- model.pt errors -------------------------------------------------------------------------------


def test_load_pruned_rejects_broken_files(tmp_path):
    model = create_model("convnet", 1, 10)
    widths = {"features.conv2.conv": 8}
    slim = prune(model, EXAMPLE, widths)
    spec = model_spec("convnet", 1, 10, [1, 28, 28])
    good = save_pruned(tmp_path / "good.pt", slim, widths, spec)
    assert shapes(load_pruned(good)) == shapes(slim)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:500])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    no_state = tmp_path / "no_state.pt"
    content = torch.load(good, weights_only=True)
    torch.save({k: v for k, v in content.items() if k != "state_dict"}, no_state)
    wrong = tmp_path / "wrong_widths.pt"
    torch.save({**content, "widths": {"features.conv2.conv": 16}}, wrong)
    for path, message in [
        (tmp_path / "missing.pt", "does not exist"),
        (corrupt, "unreadable"),
        (foreign, "not a nas_prune pruned model"),
        (no_state, "no 'state_dict'"),
        (wrong, "does not fit"),
    ]:
        with pytest.raises(NasPruneError, match=message) as err:
            load_pruned(path)
        assert "\n" not in str(err.value)


# --- bad input on the command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("missing", [], "does not exist"),
        ("no_best", [], "no best_arch.json"),
        ("ok", ["--rank", "5"], "out of range"),
        ("ok", ["--trial", "42"], "not in"),
        ("bad_dense", [], "dense.pt"),
        ("ok", ["--alpha", "0.5"], "only apply with --distill"),
        ("ok", ["--distill", "--alpha", "1.5"], "--alpha"),
        ("ok", ["--epochs", "0"], "--epochs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir, capsys, case, extra, message):
    if case == "missing":
        run_dir = run_dir / "nope"
    elif case == "no_best":
        (run_dir / "best_arch.json").unlink()
    elif case == "bad_dense":
        (run_dir / "dense.pt").write_bytes(b"not a torch file")
    assert run_cli(main, [str(run_dir), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (run_dir / "retrain").exists()


def test_output_that_is_a_file_is_one_line_and_exit_2(run_dir, capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert run_cli(main, [str(run_dir), "--epochs", "1", "--output", str(taken)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and len(err.splitlines()) == 1


def test_help_explains_every_flag(capsys):
    assert run_cli(main, ["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ["--rank", "--trial", "--epochs", "--init", "--budget-matched", "--distill", "--temperature",
                 "--alpha", "--seed", "--device", "--batch-size", "--lr", "--latency-batch-large", "--no-export"]:  # fmt: skip
        assert flag in text


def test_export_falls_back_to_torch_export_without_onnx(tmp_path, monkeypatch):
    import nas_prune.export as export_mod

    monkeypatch.setattr(export_mod, "onnx_available", lambda: False)
    slim = prune(create_model("convnet", 1, 10), EXAMPLE, 0.25).eval()
    info = export_mod.export_model(slim, EXAMPLE, tmp_path)
    assert info["export"] == "model.pt2" and info["export_verified"] and info["export_error"] is None
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(tmp_path / "model.pt2").module()(x), slim(x), atol=1e-5)


# --- speed-ups that can be trusted, and the summary's dense row -------------------------------------


class LoadedMachine:
    """Deterministic ``latency_fn`` on a machine whose load drifts ~2x between moments: parameters times a
    load factor that changes every second call, so a dense-then-pruned pair shares its moment."""

    def __init__(self, start: int):
        self.calls = start

    def __call__(self, model, example, device="cpu", batch=1, **kwargs):
        load = (1.0, 2.2, 1.3, 1.9, 1.0, 1.6)[(self.calls // 2) % 6]
        self.calls += 1
        return load * fake_latency(model, example, batch=batch)


def test_two_retrains_of_one_architecture_report_the_same_speedup(run_dir):
    first = retrain(run_dir, trial=1, export=False, latency_fn=LoadedMachine(0), **QUICK)
    second = retrain(run_dir, trial=1, init="inherit", export=False, latency_fn=LoadedMachine(6), **QUICK)
    assert abs(second["speedup"] / first["speedup"] - 1) < 0.1
    assert abs(second["speedup_large"] / first["speedup_large"] - 1) < 0.1
    assert first["speedup_low"] <= first["speedup"] <= first["speedup_high"]
    assert first["speedup_rounds"] == 5
    # The dense latencies themselves drift with the load; the paired ratio does not.
    summary = pd.read_csv(run_dir / "retrain" / "summary.csv")
    variants = summary[summary["name"] != "dense"].set_index("name")
    assert variants.loc["scratch-trial1", "dense_latency_ms"] == pytest.approx(first["dense"]["latency_ms"])
    assert variants.loc["inherit-trial1", "speedup"] == pytest.approx(second["speedup"])
    dense = summary[summary["name"] == "dense"].iloc[0]
    expected = sorted([first["dense"]["latency_ms"], second["dense"]["latency_ms"]])
    assert dense["latency_ms"] == pytest.approx(sum(expected) / 2)  # median of each variant's own
    assert dense["speedup"] == 1.0 and dense["epochs"] == 1.0  # dense.pt's own epochs


def test_dense_epochs_come_from_a_copied_checkpoint(run_dir, tmp_path):
    source = tmp_path / "given.pt"
    model = create_model("convnet", in_channels=1, num_classes=10)
    spec = model_spec("convnet", 1, 10, [1, 28, 28])
    save_checkpoint(source, model, spec, epochs=7.0)
    save_checkpoint(run_dir / "dense.pt", model, spec, copied_from=str(source))  # as the search copies it
    metrics = retrain(run_dir, trial=0, export=False, **QUICK)
    assert metrics["dense"]["epochs"] == 7.0  # not the search's --pretrain-epochs (1)
    summary = pd.read_csv(run_dir / "retrain" / "summary.csv")
    assert summary.loc[summary["name"] == "dense", "epochs"].item() == 7.0
