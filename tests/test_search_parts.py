"""The search's pure parts without Ray: projection onto the budget, the ladder's arithmetic, the journal."""

from __future__ import annotations

import json
import random

import pytest
import torch

import nas_prune
from nas_prune.config import SearchConfig
from nas_prune.search.inputs import build_space
from nas_prune.search.journal import Journal
from nas_prune.search.ladder import Ladder, correlations, fidelity_warning, judges
from nas_prune.search.latency import MAX_MARGIN, LatencyGuard
from nas_prune.search.projection import KEEP_MIN, Projector, level_schedule, scores_of
from nas_prune.space import Budget


@pytest.fixture(scope="module")
def resnet20():
    model = nas_prune.create_model("resnet20", in_channels=1)
    _, space, cost = build_space(SearchConfig(model="resnet20"), model, torch.zeros(2, 1, 28, 28))
    return space, cost


def test_every_projection_lands_within_two_percent_under_each_level(resnet20):
    space, cost = resnet20
    projector = Projector(space, cost, Budget(flops=0.3))
    rng = random.Random(0)
    usages = []
    for level in (1.0, 0.8, 0.6):
        for _ in range(30):
            widths = projector.project({n: rng.uniform(KEEP_MIN, 1.0) for n in space.names}, level)
            assert widths is not None and space.snap(widths) == widths  # on the grid
            macs, _ = cost.cost(widths)
            usages.append(macs / cost.dense[0] / (0.3 * level))
    assert max(usages) <= 1.0 + 1e-12
    assert sum(u >= 0.98 for u in usages) == len(usages)  # 90 of 90 within the 2% band


def test_the_allocation_decides_which_groups_keep_more(resnet20):
    space, cost = resnet20
    projector = Projector(space, cost, Budget(flops=0.3))
    first, last = space.names[0], space.names[-1]
    favour_first = projector.project({n: (1.0 if n == first else 0.2) for n in space.names})
    favour_last = projector.project({n: (1.0 if n == last else 0.2) for n in space.names})
    dense = space.dense()
    assert favour_first[first] / dense[first] > favour_last[first] / dense[first]
    assert favour_last[last] / dense[last] > favour_first[last] / dense[last]


def test_projection_is_infeasible_only_below_the_smallest(resnet20):
    space, cost = resnet20
    smallest = cost.cost(space.smallest())[0] / cost.dense[0]
    below = Projector(space, cost, Budget(flops=smallest * 0.9))
    assert below.project(dict.fromkeys(space.names, 0.5)) is None
    assert Projector(space, cost, Budget(flops=smallest * 1.01)).project(dict.fromkeys(space.names, 0.5))


def test_an_untrusted_latency_prediction_aims_but_never_makes_a_proposal_infeasible(resnet20):
    space, cost = resnet20
    hopeless = (lambda widths: 1e9, 1.0)  # predicts every architecture far over the limit
    assert (
        Projector(space, cost, Budget(flops=0.5), hopeless, latency_binding=True).project(
            dict.fromkeys(space.names, 0.5)
        )
        is None
    )
    widths = Projector(space, cost, Budget(flops=0.5), hopeless, latency_binding=False).project(
        dict.fromkeys(space.names, 0.5)
    )
    assert widths is not None and cost.cost(widths)[0] / cost.dense[0] <= 0.5


def test_latency_prediction_drives_the_projection(resnet20):
    space, cost = resnet20
    predict = lambda widths: cost.cost(widths)[0] / cost.dense[0] * 10.0  # noqa: E731 - a MAC-proportional LUT
    projector = Projector(space, cost, Budget(latency_ms=4.0), (predict, 4.0))
    widths = projector.project(dict.fromkeys(space.names, 0.7))
    assert 0.98 * 4.0 <= predict(widths) <= 4.0


def test_two_thirds_of_the_sampled_candidates_target_the_budget():
    levels = [level_schedule(i, (1.0, 0.8, 0.6)) for i in range(12)]
    assert levels.count(1.0) == 8 and levels.count(0.8) == 2 and levels.count(0.6) == 2
    assert {level_schedule(i, (1.0,)) for i in range(5)} == {1.0}


def test_seed_widths_become_keep_scores(resnet20):
    space, _ = resnet20
    scores = scores_of(space.dense(), space)
    assert set(scores) == set(space.names) and all(s == 1.0 for s in scores.values())


def test_ladder_geometry_and_promotion_counts():
    ladder = Ladder.build(0.5, 2, 8)
    assert ladder.epochs == (0.0, 0.5 / 8, 0.5) and ladder.top == 2
    assert [ladder.keep(n) for n in (0, 1, 7, 8, 17)] == [0, 1, 1, 1, 2]
    assert ladder.planned([120, 60, 60]) == [15 + 7 + 7, 1 + 1 + 1]


def _journal(tmp_path, scores: dict[int, tuple[float, list[float]]]) -> Journal:
    tmp_path.mkdir(parents=True, exist_ok=True)
    journal = Journal.open(tmp_path / "evaluations.jsonl")
    for trial_id, (level, by_rung) in scores.items():
        journal.append(
            {
                "kind": "candidate",
                "trial_id": trial_id,
                "source": "random",
                "level": level,
                "widths": {"a": 1},
            }
        )
        for rung, accuracy in enumerate(by_rung):
            journal.append(
                {
                    "kind": "result",
                    "trial_id": trial_id,
                    "rung": rung,
                    "epochs": rung,
                    "val_accuracy": accuracy,
                }
            )
    return journal


def test_promotion_is_within_each_level_and_skips_the_seeds(tmp_path):
    journal = _journal(tmp_path, {i: (1.0 if i < 16 else 0.6, [i / 100]) for i in range(24)})
    ladder = Ladder.build(1.0, 1, 8)
    assert ladder.promoted(journal, 0, seeds=set()) == [14, 15, 23]  # 16 at 1.0 -> 2; 8 at 0.6 -> 1
    assert ladder.promoted(journal, 0, seeds={15}) == [14, 23]  # 15 non-seeds at 1.0 -> 1


def test_correlations_and_the_weak_rung_warning(tmp_path):
    agree = _journal(tmp_path / "a", {i: (1.0, [i / 10, i / 10 + 0.01]) for i in range(6)})
    pairs = correlations(agree, Ladder.build(1.0, 1, 2))
    assert (
        pairs[0]["n"] == 6 and pairs[0]["kendall"] == pytest.approx(1.0) and fidelity_warning(pairs) is None
    )
    disagree = _journal(tmp_path / "b", {i: (1.0, [i / 10, 1 - i / 10]) for i in range(6)})
    pairs = correlations(disagree, Ladder.build(1.0, 1, 2))
    assert pairs[0]["kendall"] == pytest.approx(-1.0) and "does not predict" in fidelity_warning(pairs)


def test_both_judges_are_ranked_against_the_top_rung_on_the_same_candidates(tmp_path):
    """With a supernet, rung 0 is the supernet judge and the fine-tune jobs' ``dense_judge`` the dense one;
    only candidates with all three scores count, for both."""
    ladder = Ladder.build(1.0, 2, 2)
    journal = _journal(tmp_path, {i: (1.0, [i / 10, 0.5, i / 10 + 0.1]) for i in range(5)})
    journal.append(*({"kind": "result", "trial_id": i, "rung": 1, "val_accuracy": 0.5,
                      "dense_judge": 1 - i / 10} for i in range(4)))  # fmt: skip
    journal.append({"kind": "candidate", "trial_id": 9, "source": "random", "level": 1.0, "widths": {"a": 1}})
    journal.append({"kind": "result", "trial_id": 9, "rung": 0, "val_accuracy": 0.9})  # never fine-tuned
    both = judges(journal, ladder, supernet=True)
    assert (
        both["top_rung"] == 2 and both["supernet"]["n"] == both["dense"]["n"] == 4
    )  # trial 4: no dense_judge
    assert both["supernet"]["kendall"] == pytest.approx(1.0) and both["dense"]["kendall"] == pytest.approx(
        -1.0
    )
    without = judges(journal, ladder, supernet=False)  # rung 0 is the dense judge itself
    assert without["supernet"] is None and without["dense"]["n"] == 5
    assert without["dense"]["kendall"] == pytest.approx(1.0)
    assert judges(journal, Ladder.build(1.0, 0, 2), supernet=True)["supernet"]["n"] == 0  # no fine-tune rung


def test_rung_zero_with_both_judges_ranks_by_their_mean_rank_within_each_level(tmp_path):
    """``--rung0-judge both``: promotion, evolution's parents and fidelity.json's ``both`` judge follow the
    mean of the two judges' ranks within a level, not the supernet's score alone."""
    journal = Journal.open(tmp_path / "evaluations.jsonl")
    supernet = [0.80, 0.81, 0.82, 0.83]  # ranks 1..4
    dense = [0.30, 0.10, 0.09, 0.20]  # ranks 4, 2, 1, 3: near chance, on another scale
    for i, (own, judged) in enumerate(zip(supernet, dense, strict=True)):
        journal.append(
            {"kind": "candidate", "trial_id": i, "source": "random", "level": 1.0, "widths": {"a": i}}
        )
        journal.append(
            {"kind": "result", "trial_id": i, "rung": 0, "val_accuracy": own, "dense_judge": judged}
        )
    journal.append({"kind": "candidate", "trial_id": 8, "source": "random", "level": 0.5, "widths": {"a": 8}})
    journal.append({"kind": "result", "trial_id": 8, "rung": 0, "val_accuracy": 0.5, "dense_judge": 0.1})
    scores = journal.rung0_scores()
    assert [scores[i] for i in (0, 1, 2, 3, 8)] == pytest.approx([5 / 8, 4 / 8, 4 / 8, 7 / 8, 1.0])
    ladder = Ladder.build(1.0, 1, 2)
    assert ladder.promoted(journal, 0, seeds=set()) == [0, 3, 8]  # the supernet alone: 2, 3, 8
    journal.append(*({"kind": "result", "trial_id": i, "rung": 1, "val_accuracy": top}
                     for i, top in enumerate([0.90, 0.70, 0.60, 0.95])))  # fmt: skip
    agreement = judges(journal, ladder, supernet=True)
    assert agreement["both"]["n"] == agreement["supernet"]["n"] == 4
    assert agreement["supernet"]["kendall"] == pytest.approx(0.0)  # 3 pairs agree, 3 disagree
    assert agreement["both"]["kendall"] == pytest.approx(5 / 30**0.5)  # 5 agree, 1 tied
    single = _journal(tmp_path / "single", {i: (1.0, [i / 10, 0.5]) for i in range(3)})
    assert judges(single, ladder, supernet=True)["both"] is None  # rung 0 did not record the dense judge
    assert single.rung0_scores() == {0: 0.0, 1: 0.1, 2: 0.2}  # one judge: its own score


def test_journal_survives_a_torn_last_line(tmp_path):
    journal = _journal(tmp_path / "j", {0: (1.0, [0.5, 0.6])})
    with open(journal.path, "a") as f:
        f.write('{"kind": "result", "trial_id": 0, "ru')  # killed mid-write
    again = Journal.open(journal.path)
    assert again.score(0, 1) == 0.6 and len(again.results) == 2
    lines = journal.path.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "candidate"


def test_proposals_aimed_at_the_limit_less_the_lut_error_measure_under_it(resnet20):
    """A LUT that predicts 6% low, with that median error on held-out architectures: proposals aimed at
    the limit itself measure over it; aimed at ``LatencyGuard.aim_ms`` they all measure under it."""
    space, cost = resnet20
    measured = lambda widths: 0.3 + cost.cost(widths)[0] / cost.dense[0] * 10.0  # noqa: E731
    predict = lambda widths: measured(widths) / 1.06  # noqa: E731
    guard = LatencyGuard(None, measured(space.dense()), 4.0, True, space, margin=0.06)
    rng = random.Random(0)
    proposals = [{n: rng.uniform(KEEP_MIN, 1.0) for n in space.names} for _ in range(20)]
    at_limit = Projector(space, cost, Budget(latency_ms=4.0), (predict, guard.limit_ms))
    aimed = Projector(space, cost, Budget(latency_ms=4.0), (predict, guard.aim_ms()))
    assert all(measured(at_limit.project(p)) > guard.limit_ms for p in proposals)
    assert all(measured(aimed.project(p)) <= guard.limit_ms for p in proposals)
    assert guard.aim_ms() == pytest.approx(4.0 * 0.94)
    assert LatencyGuard(None, 1.0, 4.0, False, space, margin=0.9).aim_ms() == pytest.approx(
        4.0 * (1 - MAX_MARGIN)
    )
