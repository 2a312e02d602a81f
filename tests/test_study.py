"""search/study.py and search/evolution.py: the samplers in the search's own proposal loop (no Ray).

The loop is scripts/benchmark_sampler.py's: the Driver with an in-process worker pool and a synthetic
rung-0 score of the widths, on resnet20's real channel groups and width grid.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import optuna
import pytest
import torch

import nas_prune
from nas_prune.config import SearchConfig
from nas_prune.results import MODEL_SOURCES
from nas_prune.search.evolution import breed, neighbour
from nas_prune.search.inputs import build_space
from nas_prune.search.journal import Journal
from nas_prune.search.study import Proposals

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_sampler.py"
_spec = importlib.util.spec_from_file_location("benchmark_sampler", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def resnet20():
    model = nas_prune.create_model("resnet20", in_channels=1)
    _, space, cost = build_space(SearchConfig(model="resnet20"), model, torch.zeros(2, 1, 28, 28))
    return space, cost


def _repeats_in_study(run_dir: Path) -> int:
    storage = f"sqlite:///{run_dir / 'study.db'}"
    return sum(
        bool(t.user_attrs.get("repeat")) and t.state == optuna.trial.TrialState.FAIL
        for s in optuna.get_all_study_summaries(storage)
        for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
    )


def test_evolution_proposes_no_repeats_where_tpe_did(resnet20, tmp_path, monkeypatch):
    """At a latency limit (few architectures just under it) TPE's proposals, without the moves to grid
    neighbours (as before issue 24), repeat evaluated ones; evolution's come from its model (>= 80%)
    and none is a repeat."""
    space, cost = resnet20
    with monkeypatch.context() as patch:
        patch.setattr("nas_prune.search.study.MAX_RETRIES", 0)
        tpe = bench.run_loop(space, cost, "latency0.5", "tpe", 0, 80, tmp_path / "tpe")
    evo = bench.run_loop(space, cost, "latency0.5", "evolution", 0, 80, tmp_path / "evo")
    assert tpe["repeated_proposals"] >= 5
    assert evo["repeated_proposals"] == 0 and evo["model_share"] >= 0.8
    assert evo["rung0"] == tpe["rung0"] == 80
    journal = Journal.open(tmp_path / "evo" / "evaluations.jsonl")
    widths = [tuple(sorted(c["widths"].items())) for c in journal.candidates.values()]
    assert len(widths) == len(set(widths))


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_fidelity_sampler_block_counts_what_happened(resnet20, tmp_path, monkeypatch, sampler):
    """model_share, sources, repeats and neighbour retries in fidelity.json's sampler block are what
    the proposal loop did; the random control never moves a proposal to a neighbour."""
    space, cost = resnet20
    dropped, sources = [], []
    drop, propose = Proposals.drop, Proposals.propose
    monkeypatch.setattr(Proposals, "drop", lambda self, t: (dropped.append(t), drop(self, t))[1])
    monkeypatch.setattr(
        Proposals, "propose", lambda self, *a, **k: sources.append(propose(self, *a, **k)) or sources[-1]
    )
    block = bench.run_loop(space, cost, "latency0.5", sampler, 1, 60, tmp_path)
    kept = [p for p in sources if not p.repeats]
    assert len(kept) == 56 and block["sources"]["random"] == sum(p.source == "random" for p in kept)
    modelled = sum(p.source in MODEL_SOURCES for p in kept)
    assert block["model_share"] == pytest.approx(modelled / 60)
    assert (modelled > 0) == (sampler == "tpe")
    assert block["repeated_proposals"] == len(dropped) == _repeats_in_study(tmp_path)
    assert block["repeat_share"] == pytest.approx(len(dropped) / (len(dropped) + 56))
    assert block["neighbour_retries"] == sum(p.retries for p in sources)
    assert (block["neighbour_retries"] > 0) == (sampler == "tpe")


def test_evolution_resumes_from_the_journal_without_repeating(resnet20, tmp_path):
    """A second session on the same run directory breeds from the first one's rung-0 scores at once
    (a uniform draw only after a repeat) and adds only new architectures."""
    space, cost = resnet20
    first = bench.run_loop(space, cost, "flops0.1", "evolution", 0, 40, tmp_path)
    second = bench.run_loop(space, cost, "flops0.1", "evolution", 0, 80, tmp_path)
    journal = Journal.open(tmp_path / "evaluations.jsonl")
    resumed = [c for t, c in journal.candidates.items() if t >= 40]
    assert first["rung0"] == 40 and second["rung0"] == 80 and len(resumed) == 40
    assert resumed[0]["source"] == "evolution"  # bred at once from the first session's scores
    assert sum(c["source"] != "evolution" for c in resumed) <= second["repeated_proposals"]
    widths = [tuple(sorted(c["widths"].items())) for c in journal.candidates.values()]
    assert len(widths) == len(set(widths))


def test_children_stay_on_the_grid_and_neighbours_move_two_groups(resnet20):
    space, _ = resnet20
    rng = random.Random(0)
    parents = [(rng.random(), space.random(rng)) for _ in range(20)]
    for _ in range(50):
        space.encode(breed(parents, space, rng))  # raises off the grid
    start = space.uniform(0.5)
    moved = neighbour(start, space, rng)
    steps = {n: space.choices[n].index(moved[n]) - space.choices[n].index(start[n]) for n in space.names}
    assert sorted(steps.values())[0] == -1 and sorted(steps.values())[-1] == 1
    assert sum(v != 0 for v in steps.values()) == 2


@pytest.fixture(scope="module")
def convnet():
    model = nas_prune.create_model("convnet", in_channels=1)
    _, space, cost = build_space(SearchConfig(model="convnet"), model, torch.zeros(2, 1, 28, 28))
    return space, cost


def test_evolution_keeps_proposing_new_architectures_on_a_small_grid(convnet, tmp_path):
    """convnet's 5 groups at 10% of the FLOPs: a converged population's one-step children project back
    onto their parents (a third of the proposals repeated before children that repeat were bred again
    with stronger mutations); now the model chooses >= 80% of the candidates with < 10% repeats, and
    nearly all budget-level candidates stay within the band under the budget."""
    space, cost = convnet
    block = bench.run_loop(space, cost, "flops0.1", "evolution", 1, 160, tmp_path)
    assert block["rung0"] == 160
    assert block["model_share"] >= 0.8 and block["repeat_share"] < 0.1
    assert block["band_share"] >= 0.8


def test_a_repeat_walks_to_a_neighbour_inside_the_budget_band(resnet20, tmp_path):
    """The neighbour walk never leaves ``--budget-band`` under the budget for a proposal inside it."""
    space, cost = resnet20
    projector = bench._projector(space, cost, "flops0.3")
    proposals = Proposals(tmp_path, space, (1.0,), "tpe", 0, 0, band=0.02)
    rng = random.Random(0)
    moved_count = 0
    for _ in range(30):
        widths = projector.project({n: rng.uniform(0.05, 1) for n in space.names})
        if projector.usage(widths) < 0.98:
            continue
        moved, steps = proposals._move(widths, 1.0, projector, {tuple(sorted(widths.items()))})
        assert steps >= 1 and 0.98 <= projector.usage(moved) <= 1.0 + 1e-9
        moved_count += moved != widths
    assert moved_count >= 20
