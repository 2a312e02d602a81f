"""The width-gate supernet: exact masking, the BinaryConnect gradient, training, and gate seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import Residual, TwoLayer, randomize_bn

from nas_prune import NasPruneError, channel_groups, prune
from nas_prune.cost import CostModel
from nas_prune.gates import GateResult, GateSettings, WidthGates, alpha_gradient, train_gates
from nas_prune.resumable import Resumable
from nas_prune.space import Budget, WidthSpace
from nas_prune.task import CrossEntropyStep


def _space(model, x, **kwargs):
    return WidthSpace.build(channel_groups(model, x), **kwargs)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_masking_equals_dense_at_full_width_and_prune_below(coupling_model):
    _, model, x = coupling_model
    model, x = model.double(), x.double()
    state = _state(model)
    space = _space(model, x, min_fraction=0.25)
    gen = torch.Generator().manual_seed(0)
    with WidthGates(model, x, space) as gates:
        gates.model.eval()
        assert torch.equal(gates(x), model(x))  # every gate at full width: bit-identical to the dense model
        for _ in range(2):
            widths = space.decode(
                {n: int(torch.randint(len(c), (1,), generator=gen)) for n, c in space.choices.items()}
            )
            gates.set_widths(widths)
            assert torch.allclose(gates(x), prune(model, x, widths)(x), atol=1e-6, rtol=0)
    assert not gates._handles and _no_hooks(gates.model)
    assert _no_hooks(model) and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_residual_group_is_cut_consistently():
    torch.manual_seed(0)
    model, x = randomize_bn(Residual()).eval().double(), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    space = _space(model, x, min_fraction=0.25)
    assert "stem.0" in space.choices  # the group shared by the stem and both residual blocks
    with WidthGates(model, x, space) as gates:
        gates.model.eval()
        for width in space.choices["stem.0"]:
            widths = {**space.dense(), "stem.0": width}
            gates.set_widths(widths)
            assert torch.allclose(gates(x), prune(model, x, widths)(x), atol=1e-6, rtol=0)


class _LinearInGates(nn.Module):
    """conv -> flatten -> linear: the network output is linear in the gate of the conv's group."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def test_alpha_gradient_matches_finite_difference_of_expected_loss():
    """With a loss linear in the gates, dL/dgate_k = L_k + const, so the BinaryConnect estimator equals
    the exact gradient of the expected loss sum_k p_k L_k (full) and of its renormalised pair (two-path)."""
    torch.manual_seed(0)
    model, x = _LinearInGates().double(), torch.randn(4, 1, 6, 6, dtype=torch.float64)
    direction = torch.randn(4, 3, dtype=torch.float64)
    space = _space(model, x, grid=(1 / 3, 2 / 3, 1.0), min_fraction=0.3)
    assert space.choices == {"conv": (2, 4, 6)}
    alpha = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)

    with WidthGates(model, x, space) as gates:

        def loss_at(gate):
            gates.gates["conv"] = gate
            return (gates(x) * direction).sum()

        losses = torch.stack([loss_at(torch.eye(3, dtype=torch.float64)[k]).detach() for k in range(3)])
        assert torch.allclose(
            loss_at(torch.eye(3, dtype=torch.float64)[0]), (prune(model, x, {"conv": 2})(x) * direction).sum()
        )

        def numeric(fn, a, eps=1e-6):
            return torch.stack([(fn(a + eps * e) - fn(a - eps * e)) / (2 * eps) for e in torch.eye(len(a))])

        expected = numeric(lambda a: F.softmax(a, 0) @ losses, alpha)
        pair, pair_expected = [2, 0], numeric(lambda a: F.softmax(a, 0) @ losses[[2, 0]], alpha[[2, 0]])
        for active in range(3):  # the estimate does not depend on which width is active
            gate = torch.eye(3, dtype=torch.float64)[active].requires_grad_()
            (gate_grad,) = torch.autograd.grad(loss_at(gate), gate)
            assert torch.allclose(alpha_gradient(gate_grad, F.softmax(alpha, 0)), expected, atol=1e-7)
            q = F.softmax(alpha[pair], 0)
            assert torch.allclose(alpha_gradient(gate_grad[pair], q), pair_expected, atol=1e-7)


def test_gate_gradient_is_exact_for_the_relaxed_supernet():
    """Through BatchNorm and ReLU, autograd's dL/dgate is the derivative of sum_k gate_k (x * mask_k)."""
    torch.manual_seed(0)
    model, x = randomize_bn(TwoLayer()).eval().double(), torch.randn(3, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    space = _space(model, x, min_fraction=0.25)
    with WidthGates(model, x, space) as gates:
        gates.model.eval()
        name, k = "conv1", len(space.choices["conv1"])

        def loss_at(gate):
            gates.gates[name] = gate
            return F.cross_entropy(gates(x), y)

        base = torch.eye(k, dtype=torch.float64)[2]
        gate = base.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss_at(gate), gate)
        eps = 1e-6
        with torch.no_grad():
            numeric = torch.stack(
                [
                    (loss_at(base + eps * e) - loss_at(base - eps * e)) / (2 * eps)
                    for e in torch.eye(k).double()
                ]
            )
        assert torch.allclose(grad, numeric, atol=1e-7)
        assert grad[3:].abs().sum() > 0  # wider widths get a signal: masks sit after the activation


def _batches(x, n, seed):
    """Synthetic classification batches labelled by a fixed random teacher of the input."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(x[0].numel(), 5, generator=gen)
    out = []
    for _ in range(n):
        xb = torch.randn(16, *x.shape[1:], generator=gen)
        out.append((xb, (xb.flatten(1) @ teacher).argmax(1)))
    return out


def test_training_pushes_expected_flops_to_budget_and_seeds_meet_it():
    torch.manual_seed(0)
    model, x = randomize_bn(Residual()), torch.randn(2, 3, 16, 16)
    state = _state(model)
    space, cost, budget = _space(model, x, min_fraction=0.25), CostModel(model, x), Budget(flops=0.3)
    settings = GateSettings(epochs=4, arch_lr=0.2, progress=False, seed=1, num_seeds=3)
    result = train_gates(model, x, space, cost, budget, _batches(x, 6, 0), _batches(x, 3, 1), settings)

    flops = result.log["flops_ratio"].to_numpy()
    assert flops[0] > 0.3 and flops[-1] < flops[0] - 0.05
    assert list(result.history.columns) == ["step", "epoch", "group", "width", "probability"]
    sums = result.history.groupby(["step", "group"])["probability"].sum()
    assert sums.sub(1).abs().max() < 1e-5 and set(result.history["group"]) == set(space.names)
    seeds = result.seeds()
    assert 1 <= len(seeds) <= 3 and len({tuple(s.values()) for s in seeds}) == len(seeds)
    for widths in seeds:
        assert space.decode(space.encode(widths)) == widths  # on the grid
        assert budget.met(*cost.cost(widths), *cost.dense)
    assert _no_hooks(model) and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


class _Killed(Exception):
    """Stands in for a kill in the middle of a step."""


def test_an_interrupted_gate_training_continues_where_it_stopped_and_ends_as_if_never_stopped(tmp_path):
    torch.manual_seed(0)
    model, x = randomize_bn(Residual()), torch.randn(2, 3, 16, 16)
    space, cost, budget = _space(model, x, min_fraction=0.25), CostModel(model, x), Budget(flops=0.3)
    settings = GateSettings(epochs=4, arch_lr=0.2, progress=False, seed=1, num_seeds=3)
    train, val, calls = _batches(x, 6, 0), _batches(x, 3, 1), []

    def run(key, kill_at=None):
        def step(net, batch):
            calls.append(1)
            if len(calls) == kill_at:
                raise _Killed
            return CrossEntropyStep()(net, batch)

        calls.clear()
        torch.manual_seed(0)
        resumable = Resumable(tmp_path / "gates.partial.pt", key, every_s=0.0)
        return train_gates(model, x, space, cost, budget, train, val, settings, step, resumable)

    whole = run({"run": 1})
    total = len(calls)
    assert not (tmp_path / "gates.partial.pt").exists()  # removed once trained
    with pytest.raises(_Killed):
        run({"run": 1}, kill_at=total // 2)
    resumed = run({"run": 1})
    assert 0 < len(calls) <= total - total // 2 + 2  # only the steps not finished before the kill
    assert all(torch.equal(resumed.alphas[n], a) for n, a in whole.alphas.items())
    pd.testing.assert_frame_equal(resumed.history, whole.history)
    pd.testing.assert_frame_equal(resumed.log, whole.log)
    assert resumed.seeds() == whole.seeds()
    with pytest.raises(_Killed):
        run({"run": 1}, kill_at=total // 2)
    run({"run": 2})  # another key: the stale state is not taken
    assert len(calls) == total


def _saturated(result, widths):
    """No single grid step up keeps the budget."""
    space = result.space
    return all(
        i + 1 == len(c) or not result.feasible({**widths, n: c[i + 1]})
        for n, c in space.choices.items()
        for i in [c.index(widths[n])]
    )


def test_seeds_walk_the_argmax_to_the_budget():
    torch.manual_seed(0)
    model, x = randomize_bn(Residual()).eval(), torch.randn(2, 3, 16, 16)
    space, cost = _space(model, x, min_fraction=0.25), CostModel(model, x)
    budget = Budget(flops=0.4, params=0.5)
    alphas = {n: torch.linspace(0, 3, len(c)) for n, c in space.choices.items()}  # favours full width
    empty = pd.DataFrame()
    result = GateResult(space, cost, budget, budget, alphas, history=empty, log=empty, seed=0)
    assert result.argmax() == space.dense() and not result.feasible(result.argmax())
    repaired = result.fit_budget(result.argmax(), grow=False)
    assert result.feasible(repaired) and _saturated(result, repaired)  # lowered just enough
    grown = result.fit_budget(space.smallest())
    assert result.feasible(grown) and _saturated(result, grown)  # raised until the budget binds

    seeds = result.seeds(5)
    assert len(seeds) == 5 and len({tuple(s.values()) for s in seeds}) == 5
    for widths in seeds:
        assert space.decode(space.encode(widths)) == widths and budget.met(*cost.cost(widths), *cost.dense)
    probs = result.probs()
    log_prob = [sum(np.log(probs[n][space.choices[n].index(s[n])]) for n in space.names) for s in seeds]
    assert log_prob[1:] == sorted(log_prob[1:], reverse=True)  # after the fitted argmax: most probable first
    impossible = Budget(flops=0.01)
    assert GateResult(space, cost, impossible, impossible, alphas, history=empty, log=empty).seeds() == []


def test_latency_only_budget_needs_a_target():
    model, x = TwoLayer(), torch.randn(2, 1, 8, 8)
    space, cost = _space(model, x, min_fraction=0.25), CostModel(model, x)
    batches = _batches(x, 2, 0)
    with pytest.raises(NasPruneError, match="target"):
        train_gates(
            model,
            x,
            space,
            cost,
            Budget(latency_fraction=0.5),
            batches,
            batches,
            GateSettings(progress=False),
        )
    settings = GateSettings(epochs=1, target_flops=0.5, progress=False)
    result = train_gates(model, x, space, cost, Budget(latency_fraction=0.5), batches, batches, settings)
    assert result.targets.flops == 0.5
    assert all(cost.cost(s)[0] <= 0.5 * cost.dense[0] for s in result.seeds())
    with pytest.raises(NasPruneError, match="positive"):
        train_gates(model, x, space, cost, Budget(flops=0.5), batches, batches, GateSettings(epochs=0))
    with pytest.raises(NasPruneError, match="at least one training and one validation batch"):
        train_gates(model, x, space, cost, Budget(flops=0.5), batches, [], GateSettings(progress=False))
