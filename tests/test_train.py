"""Tests for nas_prune.train: the loop, evaluation, checkpoints and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nas_prune.checkpoint import load_checkpoint, load_state_dict_into, save_checkpoint
from nas_prune.cli import run_cli
from nas_prune.data import TensorSplit, load_dataset, make_loader
from nas_prune.errors import NasPruneError
from nas_prune.models import build_from_spec, model_spec
from nas_prune.train import (
    Checkpointing,
    evaluate,
    fit,
    main,
    make_optimizer,
    make_scheduler,
    resolve_device,
    steps_for,
    train_one_epoch,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


def tiny_model(in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


# --- training loop ---------------------------------------------------------------------------------


def small_cnn(width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def test_small_cnn_learns_synthetic_above_chance(synthetic):
    model = small_cnn()
    seen = []
    history = fit(
        model,
        synthetic,
        epochs=2,
        batch_size=32,
        progress=False,
        on_epoch_end=lambda i, m: seen.append((i, m["val_accuracy"])),
    )
    assert [i for i, _ in seen] == [0, 1] and [h["epoch"] for h in history] == [1.0, 2.0]
    assert history[-1]["val_accuracy"] > 0.4  # chance is 0.1 (0.76 measured with seed 0)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["lr"] == pytest.approx(0.05)  # cosine half-way at the start of epoch 2
    test = evaluate(model, synthetic.loader("test", 64, train=False))
    assert test["accuracy"] > 0.4 and test["samples"] == 128


def test_fractional_epochs_run_the_right_number_of_batches(synthetic):
    model = tiny_model()
    history = fit(model, synthetic, epochs=1.5, batch_size=64, progress=False)
    per_epoch = len(synthetic.train) // 64  # the ragged last batch is dropped while training
    assert [h["batches"] for h in history] == [per_epoch, round(per_epoch / 2)]
    assert history[-1]["epoch"] == pytest.approx(1 + round(per_epoch / 2) / per_epoch)

    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    loader = synthetic.loader("train", 64, train=True)
    optimizer = make_optimizer(model, lr=0.01)
    metrics = train_one_epoch(model, loader, optimizer, max_batches=3, progress=False)
    assert metrics["batches"] == 3 and metrics["samples"] == 192 and len(calls) == 3


def test_steps_for_is_the_one_rounding_rule():
    assert steps_for(2, 10) == [10, 10]
    assert steps_for(1.25, 10) == [10, 2]  # round(2.5) = 2
    assert steps_for(0.01, 10) == [1]  # a fraction trains at least one batch
    assert steps_for(0, 10) == []
    with pytest.raises(ValueError):
        steps_for(float("nan"), 10)


def test_fit_resumes_from_its_checkpoint_as_if_never_interrupted(synthetic, tmp_path):
    def run(path, on_epoch_end=None):
        torch.manual_seed(0)
        model = tiny_model()
        ckpt = Checkpointing(path, {"run": 1}, {"model": "tiny"})
        kw = {"epochs": 2.5, "batch_size": 64, "progress": False, "checkpoint": ckpt}
        return model, fit(model, synthetic, on_epoch_end=on_epoch_end, **kw)

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut.pt", stop)
    assert load_checkpoint(tmp_path / "cut.pt")["rounds_done"] == 1
    resumed, history = run(tmp_path / "cut.pt")
    straight, expected = run(tmp_path / "straight.pt")
    assert [h["epoch"] for h in history] == [h["epoch"] for h in expected] and len(history) == 3
    a, b = resumed.state_dict(), straight.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float()) for k in a)
    with pytest.raises(NasPruneError, match="other settings"):
        fit(tiny_model(), synthetic, epochs=1, checkpoint=Checkpointing(tmp_path / "cut.pt", {"run": 2}, {}))


def test_scheduler_is_stepped_per_batch(synthetic):
    model = tiny_model()
    optimizer = make_optimizer(model, lr=0.1)
    scheduler = make_scheduler(optimizer, total_steps=4)
    train_one_epoch(
        model, synthetic.loader("train", 64, train=True), optimizer, scheduler=scheduler, max_batches=4
    )
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_evaluate_restores_mode(synthetic):
    model = tiny_model()
    loader = synthetic.loader("val", 64, train=False)
    model.train()
    result = evaluate(model, loader)
    assert model.training and result["samples"] == len(synthetic.val)
    model.eval()
    evaluate(model, loader, max_batches=1)
    assert not model.training
    bn = model[1]
    before = bn.running_mean.clone()
    evaluate(model.train(), loader)
    assert torch.equal(bn.running_mean, before)  # evaluation never updates BN statistics


class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 10)

    def forward(self, x):
        return self.fc(x.mean(dim=(1, 2, 3))[:, None]) * float("nan")


def test_nan_loss_raises(synthetic):
    model = NaNModel()
    with pytest.raises(FloatingPointError, match="nan"):
        train_one_epoch(
            model, synthetic.loader("train", 32, train=True), make_optimizer(model), progress=False
        )


def test_optimizer_skips_decay_on_bn_and_bias():
    model = tiny_model()
    optimizer = make_optimizer(model, weight_decay=1e-3)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[5].weight)}
    assert len(no_decay["params"]) == 3  # BN weight, BN bias, linear bias
    assert optimizer.defaults["nesterov"]


def test_scheduler_warmup_then_cosine():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False)) and lrs[-1] < 0.05


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(NasPruneError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(NasPruneError, match="CUDA is not available"):
            resolve_device("cuda")


# --- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    spec = model_spec("convnet", 1, 10, [1, 28, 28])
    model = build_from_spec(spec).eval()
    path = save_checkpoint(tmp_path / "sub" / "dense.pt", model, spec, dataset="synthetic", val_accuracy=0.5)
    assert [p.name for p in path.parent.iterdir()] == ["dense.pt"]  # no temporary file left

    raw = torch.load(path, weights_only=True)
    assert raw["schema_version"] == 1 and raw["spec"] == spec and raw["dataset"] == "synthetic"
    ckpt = load_checkpoint(path)
    rebuilt = build_from_spec(ckpt["spec"]).eval()
    load_state_dict_into(rebuilt, path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), rebuilt(x))

    plain = tmp_path / "plain.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, plain)  # DataParallel-style
    again = build_from_spec(spec).eval()
    assert "state_dict" in load_state_dict_into(again, plain)
    assert torch.equal(model(x), again(x))


def test_save_checkpoint_rejects_objects(tmp_path):
    with pytest.raises(TypeError, match="plain data"):
        save_checkpoint(tmp_path / "x.pt", tiny_model(), {"model": "t"}, when=object())
    assert not list(tmp_path.iterdir())


def test_bad_checkpoints_raise_one_line_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    no_spec = tmp_path / "no_spec.pt"
    torch.save({"state_dict": {}, "epochs": 3}, no_spec)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "spec": nn.ReLU()}, pickled)  # not loadable with weights_only

    cases = [
        (tmp_path / "missing.pt", "does not exist"),
        (corrupt, "unreadable"),
        (foreign, "no 'state_dict'"),
        (no_spec, "no 'spec'"),
        (pickled, "unreadable"),
    ]
    for path, expected in cases:
        with pytest.raises(NasPruneError) as err:
            load_checkpoint(path)
        assert expected in str(err.value) and "\n" not in str(err.value), path


def test_load_state_dict_into_names_first_mismatch(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny_model(width=8).state_dict(), path)
    with pytest.raises(NasPruneError, match=r"'0\.weight' is \(8, 1, 3, 3\) in the file but \(4, 1, 3, 3\)"):
        load_state_dict_into(tiny_model(width=4), path)
    torch.save({"other": torch.zeros(1)}, path)
    with pytest.raises(NasPruneError, match="it has no '0.weight'"):
        load_state_dict_into(tiny_model(), path)
    torch.save({**tiny_model().state_dict(), "extra": torch.zeros(1)}, path)
    with pytest.raises(NasPruneError, match="unexpected key 'extra'"):
        load_state_dict_into(tiny_model(), path)


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_in_process_writes_loadable_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--model", "convnet", "--dataset", "synthetic", "--epochs", "0.2", "--no-progress"]
    assert run_cli(main, argv) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "s/epoch" in out
    ckpt = load_checkpoint(tmp_path / "results" / "dense-convnet-synthetic.pt")  # the default output
    for key in ("test_accuracy", "val_accuracy", "epochs", "seconds_per_epoch", "dataset", "seed"):
        assert key in ckpt
    assert ckpt["dataset"] == "synthetic" and ckpt["epochs"] == 0.2 and ckpt["history"][0]["batches"] >= 1
    assert ckpt["spec"] == model_spec("convnet", 1, 10, [1, 28, 28])
    load_state_dict_into(build_from_spec(ckpt["spec"]), tmp_path / "results" / "dense-convnet-synthetic.pt")

    assert run_cli(main, [*argv, "--output", "again.pt"]) == 0  # same seed: same weights
    again = load_checkpoint(tmp_path / "again.pt")
    assert all(torch.equal(v, again["state_dict"][k]) for k, v in ckpt["state_dict"].items())


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--epochs", "0"], "--epochs must be a positive number"),
        (["--val-fraction", "1"], "--val-fraction"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(argv, expected, tmp_path, capsys):
    assert run_cli(main, [*argv, "--output", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()


def test_cli_output_that_cannot_be_written_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["--dataset", "synthetic", "--model", "convnet", "--epochs", "1"]
    assert run_cli(main, [*base, "--output", str(blocker / "sub" / "dense.pt")]) == 2
    assert "cannot create" in capsys.readouterr().err
    assert run_cli(main, [*base, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and err.count("\n") == 1


def test_cli_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "dense.pt"
    cmd = [sys.executable, "-m", "nas_prune.train", "--dataset", "synthetic", "--model", "convnet"]
    done = subprocess.run(
        [*cmd, "--epochs", "0.2", "--output", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "saved" in done.stdout and load_checkpoint(out)["test_accuracy"] >= 0

    bad = subprocess.run(
        [*cmd, "--epochs", "-1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--epochs" in bad.stderr


def test_cli_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--dataset", "--epochs", "--output", "--data-dir", "--batch-size", "--lr"):
        assert flag in text
    for flag in ("--weight-decay", "--label-smoothing", "--seed", "--device", "--subset", "--val-fraction"):
        assert flag in text


def test_loader_on_float_split_trains():
    split = TensorSplit(torch.rand(16, 1, 8, 8), torch.arange(16) % 2)
    loader = make_loader(split, 8, train=True, mean=(0.5,), std=(0.25,))
    model = tiny_model(num_classes=2)
    metrics = train_one_epoch(model, loader, make_optimizer(model), progress=False)
    assert metrics["batches"] == 2 and 0 <= metrics["accuracy"] <= 1
