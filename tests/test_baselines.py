"""Baselines: every method meets its budget, writes loadable outputs, and does what its paper says."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import nas_prune.baselines.context as context
import nas_prune.baselines.runner as runner
from nas_prune.baselines import (
    METHODS,
    BaselineConfig,
    iterative_targets,
    magnitude_prune,
    main,
    make_permanent,
    nonzero_macs,
    prune_channels,
    run_baseline,
    structured_ticket,
    unstructured_ticket,
    weight_positions,
    zero_filters,
)
from nas_prune.checkpoint import load_pruned, save_checkpoint
from nas_prune.cli import run_cli
from nas_prune.cost import count_macs
from nas_prune.data import load_dataset
from nas_prune.errors import NasPruneError
from nas_prune.models import create_model, model_spec
from nas_prune.objective import adapt_batchnorm
from nas_prune.prune import channel_importance, prune
from nas_prune.train import fit, make_optimizer

X = torch.zeros(2, 1, 28, 28)
STRUCTURED = [m for m in METHODS if m != "l1-unstructured"]


def _fake_latency(model, example, device=None, batch=1, **kw) -> float:
    return 1.0 + count_macs(model, example)[0] / 1e7


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dense") / "dense.pt"
    save_checkpoint(path, create_model("convnet", 1, 10), model_spec("convnet", 1, 10, [1, 28, 28]), epochs=0)
    return str(path)


def _run(method, tmp_path, checkpoint=None, budget=0.5, **kw):
    kw = {"epochs": 0.2, "pretrain_epochs": 0.2, "epochs_between": 0.1, "progress": False, **kw}
    settings = BaselineConfig(
        method=method, budget_flops=budget, dataset="synthetic", checkpoint=checkpoint,
        output=str(tmp_path / method), **kw,
    )  # fmt: skip
    return run_baseline(settings, latency_fn=_fake_latency, quiet=True)


@pytest.mark.parametrize("method", STRUCTURED)
def test_structured_methods_meet_the_budget(method, tmp_path, checkpoint):
    metrics = _run(method, tmp_path, None if method == "lottery-ticket" else checkpoint, step=0.2)
    model = load_pruned(tmp_path / method / "model.pt")
    macs = count_macs(model, X)[0]
    dense_macs = count_macs(create_model("convnet", 1, 10), X)[0]
    assert macs / dense_macs <= 0.5
    assert metrics["macs"] == macs and metrics["flops"] == 2 * macs
    saved = json.loads((tmp_path / method / "metrics.json").read_text())
    for key in ("schema_version", "test_accuracy", "val_accuracy", "params", "latency_ms", "latency_batch",
                "latency_large_ms", "latency_large_batch", "latency_device", "epochs", "init", "seed",
                "method", "steps", "widths"):  # fmt: skip
        assert key in saved, key
    assert saved["dense"]["macs"] == dense_macs and saved["method"] == method
    # Dense and pruned timed in the same rounds: the ratio of the medians is the paired ratio here.
    assert saved["speedup_rounds"] == 5 and saved["speedup_low"] <= saved["speedup"] <= saved["speedup_high"]
    assert saved["speedup"] == pytest.approx(saved["dense"]["latency_ms"] / saved["latency_ms"])


def test_l1_unstructured_reaches_sparsity_and_nonzero_macs(tmp_path, checkpoint):
    metrics = _run("l1-unstructured", tmp_path, checkpoint, budget=0.3)
    assert metrics["macs"] == metrics["dense"]["macs"]  # dense MACs: the architecture is unchanged
    assert metrics["nonzero_macs"] <= 0.3 * metrics["macs"]
    assert metrics["sparsity"] > 0.5
    model = load_pruned(tmp_path / "l1-unstructured" / "model.pt")
    assert nonzero_macs(model, X) == metrics["nonzero_macs"]  # the mask survived fine-tuning


@pytest.mark.parametrize("per_layer", [False, True])
def test_magnitude_prune_budget_and_positions(per_layer):
    torch.manual_seed(1)
    model = create_model("convnet", 1, 10)
    positions = weight_positions(model, X)
    total = sum(m.weight.numel() * positions[n] for n, m in model.named_modules() if n in positions)
    assert total == count_macs(model, X)[0]
    info = magnitude_prune(model, X, 0.25, per_layer=per_layer)
    assert info["nonzero_macs"] <= 0.25 * info["macs"]
    assert info["nonzero_macs"] > 0.2 * info["macs"]  # not far below: the smallest k that fits
    make_permanent(model)
    assert not any("weight_orig" in k for k in model.state_dict())


def test_soft_filter_zeroed_filters_receive_updates():
    torch.manual_seed(2)
    model = create_model("convnet", 1, 10)
    for bn in (model.features.conv1.bn, model.features.conv3.bn):  # a trained BN has beta != 0; with
        torch.nn.init.constant_(bn.bias, 0.1)  # beta = 0 a zeroed channel sits at ReLU's kink: no gradient
    drops = zero_filters(model, X, {"features.conv1.conv": 16, "features.conv3.conv": 32})
    conv1 = model.features.conv1.conv.weight
    assert len(drops["features.conv1.conv"]) == 16 and conv1[drops["features.conv1.conv"]].abs().sum() == 0
    optimizer = make_optimizer(model, lr=0.1)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    for layer in (conv1, model.features.conv3.conv.weight):
        zeroed = drops["features.conv1.conv" if layer is conv1 else "features.conv3.conv"]
        assert (layer[zeroed].flatten(1).abs().sum(1) > 0).all()  # every zeroed filter moved


def test_lottery_ticket_structured_rewinds_survivors():
    torch.manual_seed(3)
    initial = create_model("convnet", 1, 10)
    trained = create_model("convnet", 1, 10)  # stands for the trained weights: a different ranking
    widths = {"features.conv1.conv": 12, "features.conv2.conv": 20}
    ticket = structured_ticket(trained, initial, X, widths)
    scores = channel_importance(trained, X)
    kept1 = torch.argsort(scores["features.conv1.conv"], descending=True, stable=True)[:12].sort().values
    kept2 = torch.argsort(scores["features.conv2.conv"], descending=True, stable=True)[:20].sort().values
    w1, w2 = initial.features.conv1.conv.weight, initial.features.conv2.conv.weight
    assert torch.equal(ticket.features.conv1.conv.weight, w1[kept1])
    assert torch.equal(ticket.features.conv2.conv.weight, w2[kept2][:, kept1])
    assert torch.equal(ticket.features.conv2.bn.weight, initial.features.conv2.bn.weight[kept2])
    # the same channels as pruning the trained model: the ticket is chosen on the trained weights
    same = prune(trained, X, widths, "l2")
    assert torch.equal(same.features.conv1.conv.weight, trained.features.conv1.conv.weight[kept1])


def test_lottery_ticket_unstructured_rewinds_survivors():
    torch.manual_seed(4)
    initial, trained = create_model("convnet", 1, 10), create_model("convnet", 1, 10)
    ticket, info = unstructured_ticket(trained, initial, X, 0.4)
    assert info["nonzero_macs"] <= 0.4 * info["macs"]
    for (name, module), (_, start) in zip(ticket.named_modules(), initial.named_modules(), strict=True):
        if hasattr(module, "weight_mask"):
            mask = module.weight_mask.bool()
            assert torch.equal(module.weight[mask], start.weight[mask]), name
            assert (module.weight[~mask] == 0).all()
            assert torch.equal(
                module.weight_mask, (trained.get_submodule(name).weight.abs() > 0).float() * mask
            )


@pytest.mark.parametrize(("budget", "step"), [(0.5, 0.2), (0.3, 0.05), (0.9, 0.05)])
def test_iterative_targets_count(budget, step):
    expected = next(k for k in range(1, 1000) if (1 - step) ** k <= budget)
    targets = iterative_targets(budget, step)
    assert len(targets) == expected and targets[-1] == budget
    assert all(a > b for a, b in zip([1.0, *targets], targets, strict=False))
    assert math.isclose(targets[0], 1 - step)


def test_iterative_run_reports_steps(tmp_path, checkpoint):
    metrics = _run("iterative-l2", tmp_path, checkpoint, budget=0.6, step=0.25)
    assert metrics["steps"] == 2  # 0.75, then 0.5625 <= 0.6
    assert metrics["flops_ratio"] <= 0.6


@pytest.mark.parametrize(
    "argv",
    [
        ["magic", "--budget-flops", "0.5"],
        ["l2-structured", "--budget-flops", "1.5", "--dataset", "synthetic"],
        ["l2-structured", "--budget-flops", "0", "--dataset", "synthetic"],
        ["l2-structured", "--budget-flops", "0.5", "--dataset", "synthetic", "--checkpoint", "/nope.pt"],
        ["soft-filter", "--budget-flops", "0.5", "--dataset", "synthetic", "--finetune-share", "1.5"],
        ["l2-structured"],
        ["l2-structured", "--budget-flops", "0.5", "--dataset", "synthetic", "--output", "/etc/hostname"],
    ],
)
def test_bad_input_one_line_exit_2(argv, capsys):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err


# ---------------------------------------------------------------------------------------------------
# soft-filter: the hard cut after the soft phase
# ---------------------------------------------------------------------------------------------------


def test_soft_filter_cut_scores_like_the_masked_model():
    """After the last zeroing, cutting the zeroed channels (BN re-estimated) changes the outputs only at
    zero-padded borders: predictions and accuracy stay those of the masked model (float64)."""
    data = load_dataset("synthetic", seed=0)
    torch.manual_seed(5)
    model = create_model("convnet", 1, 10)
    fit(model, data, epochs=2, batch_size=64, progress=False)
    widths = {"features.conv1.conv": 16, "features.conv2.conv": 16, "features.conv3.conv": 32,
              "features.conv4.conv": 32, "features.conv5.conv": 64}  # fmt: skip
    drops = zero_filters(model, X, widths)
    masked, cut = copy.deepcopy(model), prune_channels(model, X, drops)
    for net in (masked, cut):
        adapt_batchnorm(net, data.loader("train", 64, train=True, seed=0), 20, torch.device("cpu"))
        net.double().eval()
    x, y = next(iter(data.loader("test", len(data.test), train=False)))
    with torch.no_grad():
        a, b = masked(x.double()), cut(x.double())
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.9
    assert (a - b).abs().mean() <= 0.25 * a.abs().mean()
    assert abs((a.argmax(1) == y).float().mean() - (b.argmax(1) == y).float().mean()) <= 0.05


def test_soft_filter_run_cuts_then_fine_tunes(tmp_path, checkpoint):
    metrics = _run("soft-filter", tmp_path, checkpoint, epochs=1.0, finetune_share=0.5)
    assert metrics["soft_epochs"] == metrics["finetune_epochs"] == 0.5
    assert len(metrics["history"]) == 2  # half an epoch of the soft phase, then of the slim network
    assert metrics["val_accuracy_cut"] >= metrics["val_accuracy_masked"] - 0.1  # the cut costs little


# ---------------------------------------------------------------------------------------------------
# lottery-ticket ignores --checkpoint, and says so
# ---------------------------------------------------------------------------------------------------


def test_lottery_ticket_warns_that_it_ignores_the_checkpoint(tmp_path, checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(runner, "measure_latency", _fake_latency)
    out = tmp_path / "lt"
    argv = ["lottery-ticket", "--budget-flops", "0.5", "--dataset", "synthetic", "--epochs", "0.2",
            "--checkpoint", checkpoint, "--output", str(out), "--no-progress"]  # fmt: skip
    assert run_cli(main, argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--checkpoint" in warnings[0] and "ignored" in warnings[0]
    notes = json.loads((out / "metrics.json").read_text())["notes"]
    assert len(notes) == 1 and checkpoint in notes[0]


# ---------------------------------------------------------------------------------------------------
# Resuming: finished runs are reused, interrupted ones continue
# ---------------------------------------------------------------------------------------------------


def test_finished_run_is_not_recomputed(tmp_path, checkpoint, monkeypatch):
    first = _run("l2-structured", tmp_path, checkpoint)

    def boom(*_args, **_kwargs):
        raise AssertionError("a finished run was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(context, "fit", boom)
        again = _run("l2-structured", tmp_path, checkpoint, progress=True)  # display flags do not count
        assert again == first
        with pytest.raises(NasPruneError, match="other settings.*epochs"):
            _run("l2-structured", tmp_path, checkpoint, epochs=0.4)
    redone = run_baseline(
        BaselineConfig(method="l2-structured", budget_flops=0.5, dataset="synthetic", checkpoint=checkpoint,
                         epochs=0.4, output=str(tmp_path / "l2-structured"), progress=False),
        latency_fn=_fake_latency, quiet=True, force=True,
    )  # fmt: skip
    assert redone["epochs"] == 0.4 and not (tmp_path / "l2-structured" / "phases").exists()


@pytest.mark.parametrize(("method", "epochs"), [("l2-structured", 2.0), ("soft-filter", 4.0)])
def test_interrupted_run_continues_where_it_stopped(method, epochs, tmp_path, checkpoint, monkeypatch):
    """Killed after the first epoch of its first phase, a rerun continues from that epoch's checkpoint
    (soft-filter: with the zeroing of that epoch) and ends with the weights of an uninterrupted run."""
    whole = _run(method, tmp_path / "whole", checkpoint, epochs=epochs)
    real = context.fit
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(kwargs["checkpoint"].settings["phase"])

        def stop(_epoch, _row):
            raise KeyboardInterrupt

        return real(*args, **{**kwargs, "on_epoch_end": stop})

    monkeypatch.setattr(context, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(method, tmp_path / "cut", checkpoint, epochs=epochs)
    phase = calls[0]
    assert (tmp_path / "cut" / method / "phases" / phase / "checkpoint.pt").is_file()
    monkeypatch.setattr(context, "fit", real)
    resumed = _run(method, tmp_path / "cut", checkpoint, epochs=epochs)
    assert [row["epoch"] for row in resumed["history"]] == [row["epoch"] for row in whole["history"]]
    a = load_pruned(tmp_path / "whole" / method / "model.pt").state_dict()
    b = load_pruned(tmp_path / "cut" / method / "model.pt").state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k].double(), b[k].double(), atol=1e-6) for k in a)
    assert resumed["widths"] == whole["widths"]
    assert not (tmp_path / "cut" / method / "phases").exists()  # checkpoints go once the run is done
