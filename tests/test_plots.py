"""Each figure is a valid, non-empty PNG for a typical run and for an empty one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nas_prune.pareto import pareto_front
from nas_prune.plots import _seed_styles, plot_gates, plot_pareto, plot_progress, plot_widths
from nas_prune.results import PROPOSAL_SOURCES, append_trial, read_trials, sources
from nas_prune.seeds import SEED_SOURCES, SEEDS, register_seed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DENSE = {"macs": 1000, "params": 500, "val_accuracy": 0.91}
SOURCES = sources()


def is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    """A run of 40 proposals in every state and from every source."""
    path = tmp_path_factory.mktemp("run") / "trials.csv"
    rng = np.random.default_rng(0)
    for i in range(40):
        state = ["complete", "complete", "stopped", "infeasible", "failed"][i % 5]
        macs = int(rng.integers(100, 1000))
        row = {
            "trial_id": i,
            "state": state,
            "source": SOURCES[i % len(SOURCES)],
            "macs": macs,
            "params": 250,
            "flops_ratio": macs / DENSE["macs"],
            "widths": {"conv1": 4},
            "feasible": state != "infeasible" and macs <= 600,
        }
        if state in ("complete", "stopped"):
            row["val_accuracy"] = float(0.5 + 0.4 * macs / 1000 - rng.random() * 0.1)
        append_trial(path, row)
    return read_trials(path)


@pytest.fixture
def empty(tmp_path):
    return read_trials(tmp_path / "missing.csv")


def test_plot_pareto(tmp_path, trials, empty):
    front = pareto_front(trials)
    out = plot_pareto(trials, front, tmp_path / "pareto.png", dense=DENSE, budget_flops_ratio=0.6, title="t")
    assert out == tmp_path / "pareto.png" and is_png(out)
    assert is_png(plot_pareto(empty, pareto_front(empty), tmp_path / "empty.png", dense=None))
    only_infeasible = trials[trials["state"] == "infeasible"]
    assert is_png(plot_pareto(only_infeasible, pareto_front(only_infeasible), tmp_path / "infeasible.png"))


@pytest.mark.parametrize("groups", [5, 60])
def test_plot_widths(tmp_path, groups):
    dense = {f"layer{i}.conv": 16 * (1 + i % 4) for i in range(groups)}
    widths = {name: max(1, c // 3) for name, c in list(dense.items())[:-1]}  # last group unpruned
    assert is_png(plot_widths(dense, widths, tmp_path / "widths.png", title="kept"))


def test_plot_widths_empty_and_unknown_group(tmp_path):
    assert is_png(plot_widths({}, {}, tmp_path / "widths.png"))
    with pytest.raises(ValueError, match="lacks"):
        plot_widths({"a": 4}, {"b": 2}, tmp_path / "bad.png")


def test_plot_progress(tmp_path, trials, empty):
    assert is_png(plot_progress(trials, tmp_path / "progress.png", budget_note="FLOPs <= 0.6 of dense"))
    assert is_png(plot_progress(empty, tmp_path / "empty.png"))


def _gate_history(groups, records):
    """Per group, a width distribution drifting from uniform towards a narrow width."""
    rows = []
    for g, widths in enumerate(groups):
        for step in range(records):
            logits = -np.abs(np.arange(len(widths)) - 1) * step / 4
            p = np.exp(logits) / np.exp(logits).sum()
            rows += [
                (step * 5, step / 4, f"layer{g}.conv", w, float(q)) for w, q in zip(widths, p, strict=True)
            ]
    return pd.DataFrame(rows, columns=["step", "epoch", "group", "width", "probability"])


@pytest.mark.parametrize(
    "groups,records", [([(4, 8, 12, 16), (2, 4), (8, 16, 24, 32, 64)], 12), ([(1, 2, 3)], 1)]
)
def test_plot_gates(tmp_path, groups, records):
    out = plot_gates(_gate_history(groups, records), tmp_path / "gates.png", title="gates")
    assert out == tmp_path / "gates.png" and is_png(out)
    assert is_png(plot_gates(_gate_history([], 0), tmp_path / "empty.png"))


@pytest.fixture
def seed_registry():
    """The seed registry as it was, restored after the test."""
    saved = dict(SEEDS), list(SEED_SOURCES)
    yield
    SEEDS.clear()
    SEEDS.update(saved[0])
    SEED_SOURCES[:] = saved[1]


def test_a_newly_registered_seed_kind_is_recorded_and_plotted(tmp_path, trials, seed_registry):
    path = tmp_path / "trials.csv"
    with pytest.raises(ValueError, match="source must be one of"):
        append_trial(path, {"trial_id": 0, "state": "failed", "source": "mine", "widths": {"conv1": 4}})

    @register_seed("mine")
    def mine(ctx):
        return ctx.space.dense()

    base = {"state": "complete", "macs": 300, "params": 250, "flops_ratio": 0.3, "widths": {"conv1": 4}}
    append_trial(path, {**base, "trial_id": 0, "source": "mine", "val_accuracy": 0.7, "feasible": True})
    append_trial(path, {**base, "trial_id": 1, "source": "optuna", "val_accuracy": 0.6, "feasible": True})
    table = read_trials(path)
    assert table["source"].tolist() == ["mine", "optuna"]
    both = pd.concat([trials, table.assign(trial_id=table["trial_id"] + 100)], ignore_index=True)
    assert is_png(plot_pareto(both, pareto_front(both), tmp_path / "pareto.png", dense=DENSE))
    assert is_png(plot_progress(both, tmp_path / "progress.png"))
    styles = _seed_styles(both["source"])  # drawn as a seed, in a style of its own
    assert set(styles) == set(both["source"]) - set(PROPOSAL_SOURCES) and "mine" in styles
    assert styles["mine"] not in [style for source, style in styles.items() if source != "mine"]
