"""The width-shared supernet: trained to be sliced, it judges narrow candidates where the dense weights
cannot, and rung 0 uses it when a search has one."""

from __future__ import annotations

import json

import pytest
import torch

import nas_prune
from nas_prune.data import load_dataset
from nas_prune.models import model_spec
from nas_prune.objective import CandidateEvaluator, TrialSettings
from nas_prune.prune import channel_importance
from nas_prune.resumable import Resumable
from nas_prune.search.journal import Journal
from nas_prune.search.ladder import Ladder
from nas_prune.seeds import SEED_SOURCES
from nas_prune.space import WidthSpace
from nas_prune.supernet import SupernetSettings, load_supernet, supernet_key, train_supernet
from nas_prune.task import TensorClassificationTask


@pytest.fixture(scope="module")
def trained():
    """convnet trained 2 epochs on the synthetic set, its space, and a supernet trained 2 epochs from it."""
    torch.manual_seed(0)
    data = load_dataset("synthetic")
    task = TensorClassificationTask.of(data)
    model = nas_prune.create_model("convnet", in_channels=1, num_classes=data.num_classes)
    nas_prune.fit(model, task, epochs=2, batch_size=32, progress=False)
    _, space = WidthSpace.of_model("convnet", model, task.example())
    supernet = train_supernet(
        model, task.example(), space, task, SupernetSettings(epochs=2, batch_size=32, progress=False)
    )
    return data, model, space, supernet


def _judge(data, model, state, ranking=None, batch_size=128, **settings):
    spec = model_spec("convnet", data.in_channels, data.num_classes, data.input_shape)
    return CandidateEvaluator(
        TrialSettings(
            spec=spec, dense_state=state, dataset="synthetic", ranking=ranking, batch_size=batch_size,
            **settings,
        )
    )  # fmt: skip


def test_the_largest_sub_network_scores_like_the_dense_model_and_the_smallest_far_above_chance(trained):
    data, model, space, supernet = trained
    dense_judge = _judge(data, model, model.state_dict())
    supernet_judge = _judge(data, model, supernet.state_dict, supernet.ranking)
    dense_full = dense_judge(space.dense())["val_accuracy"]
    assert supernet_judge(space.dense())["val_accuracy"] >= dense_full - 0.05  # measured: 1.0 and 1.0
    sliced = dense_judge(space.smallest())["val_accuracy"]  # measured 0.22 on 10 classes
    trained_to_slice = supernet_judge(space.smallest())["val_accuracy"]  # measured 0.65
    assert trained_to_slice > 0.4 and trained_to_slice > sliced + 0.2
    assert supernet.history and all(torch.isfinite(torch.tensor(h["distill_loss"])) for h in supernet.history)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize("start", ["dense", "supernet"])
def test_fine_tunes_start_from_the_weights_fine_tune_from_names(trained, start):
    """With a supernet, a fine-tune job starts from the dense slice (the default, as retrain inherits) or
    from the supernet's sub-network; either way it also records the dense judge."""
    data, model, space, supernet = trained
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in every evaluator below
    try:
        _check_fine_tune_start(data, model, space, supernet, start)
    finally:
        torch.set_num_threads(threads)


def _check_fine_tune_start(data, model, space, supernet, start):
    dense = _judge(data, model, model.state_dict())
    alone = _judge(data, model, supernet.state_dict, supernet.ranking)
    both = _judge(data, model, supernet.state_dict, supernet.ranking,
                  judge_state=model.state_dict(), fine_tune_from=start)  # fmt: skip
    widths, epochs = space.smallest(), 0.05  # where the two starts differ most (0.22 vs 0.65 at rung 0)
    result = both(widths, epochs, seed=3)
    expected = (dense if start == "dense" else alone)(widths, epochs, seed=3)["val_accuracy"]
    other = (alone if start == "dense" else dense)(widths, epochs, seed=3)["val_accuracy"]
    assert result["val_accuracy"] == pytest.approx(expected, abs=1e-9)
    assert abs(expected - other) > 0.05  # the test tells the two starts apart
    assert result["dense_judge"] == pytest.approx(dense(widths)["val_accuracy"], abs=1e-9)
    supernet_only = _judge(data, model, supernet.state_dict, supernet.ranking,
                           judge_state=model.state_dict(), fine_tune_from=start, rung0_judge="supernet")  # fmt: skip
    assert "dense_judge" not in supernet_only(widths)  # rung 0 by the supernet alone: half the work
    ranked_by_both = both(widths)  # rung 0, by default: the supernet's score, and the dense slice's too
    assert ranked_by_both["val_accuracy"] == pytest.approx(alone(widths)["val_accuracy"], abs=1e-9)
    assert ranked_by_both["dense_judge"] == pytest.approx(dense(widths)["val_accuracy"], abs=1e-9)


def test_the_summed_gradient_is_clipped_and_the_clip_is_part_of_the_cache_key(trained):
    data, model, space, _ = trained
    task = TensorClassificationTask.of(data)

    def moved(clip):
        settings = SupernetSettings(epochs=0.25, batch_size=32, progress=False, grad_clip=clip)
        state = train_supernet(model, task.example(), space, task, settings).state_dict
        return max(float((state[k] - v).abs().max()) for k, v in model.state_dict().items() if v.ndim == 4)

    assert moved(1e-9) < 1e-4 < moved(None)  # a clip this small leaves the conv weights where they were
    unclipped, clipped = (
        supernet_key(SupernetSettings(epochs=1, grad_clip=c), "budget") for c in (None, 1.0)
    )
    assert "grad_clip" not in unclipped and clipped == {**unclipped, "grad_clip": 1.0}  # old files still load


class _Killed(Exception):
    """Stands in for a kill in the middle of a step."""


def test_an_interrupted_supernet_continues_where_it_stopped_and_ends_as_if_never_stopped(trained, tmp_path):
    data, model, space, _ = trained
    task = TensorClassificationTask.of(data)
    settings = SupernetSettings(epochs=1.5, batch_size=32, progress=False, grad_clip=5.0)  # 2 passes
    draws = []

    def sample(rng, kill_at=None):
        draws.append(1)
        if kill_at is not None and len(draws) == kill_at:
            raise _Killed
        return space.random(rng)

    def train(key, kill_at=None):
        draws.clear()
        resumable = Resumable(tmp_path / "supernet.partial.pt", key, every_s=0.0)
        return train_supernet(model, task.example(), space, task, settings,
                              lambda rng: sample(rng, kill_at), resumable)  # fmt: skip

    whole = train({"run": 1})
    steps = len(draws) // 2  # two random students a step
    assert not (tmp_path / "supernet.partial.pt").exists()  # removed once trained
    with pytest.raises(_Killed):
        train({"run": 1}, kill_at=2 * (steps - 3) + 1)  # killed in a step, steps - 3 of them finished
    assert (tmp_path / "supernet.partial.pt").is_file()
    resumed = train({"run": 1})
    assert len(draws) == 2 * 3  # only the three unfinished steps ran
    assert all(torch.equal(resumed.state_dict[k], v) for k, v in whole.state_dict.items())
    assert resumed.history == whole.history
    with pytest.raises(_Killed):
        train({"run": 1}, kill_at=3)
    train({"run": 2})  # another key: the stale state is not taken
    assert len(draws) == 2 * steps


def test_a_fixed_ranking_keeps_the_channels_a_width_was_trained_with(trained):
    data, model, space, _ = trained
    example = torch.randn(4, *data.input_shape)
    widths = space.uniform(0.5)
    ranking = channel_importance(model, example, "l2")
    by_ranking, by_name = (
        nas_prune.prune(model, example, widths, ranking),
        nas_prune.prune(model, example, widths, "l2"),
    )
    with torch.no_grad():
        assert torch.equal(by_ranking.eval()(example), by_name.eval()(example))
    reversed_ranking = {name: -scores for name, scores in ranking.items()}  # the least important kept instead
    other = nas_prune.prune(model, example, widths, reversed_ranking)
    with torch.no_grad():
        assert not torch.allclose(other.eval()(example), by_name(example))


def test_rung_zero_slices_the_supernet_when_a_search_has_one(ray_session, tmp_path):
    run = tmp_path / "run"
    trials = nas_prune.search(
        budget_flops=0.3, dataset="synthetic", model="convnet", trials=6, workers=1, rungs=1, epochs_per_trial=0.2,
        reduction_factor=2, pretrain_epochs=1, gate_epochs=0, supernet_epochs=0.5, batch_size=32, output=str(run),
        quiet=True,
    )  # fmt: skip
    config = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    assert config["settings"]["supernet_epochs"] == 0.5
    key = {"epochs": 0.5, "random_widths": 2, "lr": 0.01, "batch_size": 32, "importance": "l2", "seed": 0,
           "students": "budget", "grad_clip": 5.0}  # fmt: skip
    supernet = load_supernet(run / "supernet.pt", key)
    assert supernet is not None
    data = load_dataset("synthetic")
    dense = nas_prune.create_model("convnet", in_channels=1, num_classes=data.num_classes)
    judge = _judge(data, dense, supernet.state_dict, supernet.ranking, batch_size=32)  # the search's batches
    for _, row in trials[trials["source"].isin(["uniform", "l2"])].iterrows():
        widths = json.loads(row["widths"])
        assert judge(widths, 0.0, int(row["trial_id"]))["val_accuracy"] == pytest.approx(
            row["rung0_accuracy"]
        )
    # both judges, on the same candidates: every fine-tune also scored the dense-sliced candidate
    judges = json.loads((run / "fidelity.json").read_text())["judges"]
    top = int((trials["state"] == "complete").sum())
    assert judges["top_rung"] == 1 and judges["supernet"]["n"] == judges["dense"]["n"] == top >= 3
    dense_weights = torch.load(run / "dense.pt", weights_only=True)["state_dict"]
    dense_judge = _judge(data, dense, dense_weights, batch_size=32)
    lines = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    fine_tuned = [e for e in lines if e["kind"] == "result" and e["rung"] == 1]
    widths = {e["trial_id"]: e["widths"] for e in lines if e["kind"] == "candidate"}
    for event in fine_tuned:  # the dense judge is rung 0 as it would be without the supernet
        assert event["dense_judge"] == pytest.approx(dense_judge(widths[event["trial_id"]])["val_accuracy"])
    assert config["settings"]["fine_tune_from"] == "dense"  # the default (see the test above for its effect)


def test_rung_zero_can_rank_by_both_judges(ray_session, tmp_path):
    """``rung0_judge="both"`` (the default): every rung-0 result also holds the dense judge, the promotions follow the two
    judges' mean rank (:meth:`Journal.rung0_scores`) and fidelity.json reports that ranking's Kendall."""
    run = tmp_path / "run"
    trials = nas_prune.search(
        budget_flops=0.3, dataset="synthetic", model="convnet", trials=8, workers=1, rungs=1, epochs_per_trial=0.2,
        reduction_factor=2, pretrain_epochs=1, gate_epochs=0, supernet_epochs=0.25,
        batch_size=32, output=str(run), quiet=True,
    )  # fmt: skip
    journal = Journal.open(run / "evaluations.jsonl")
    rung0 = [r for (_, rung), r in journal.results.items() if rung == 0]
    assert len(rung0) >= 8 and all(0.0 <= r["dense_judge"] <= 1.0 for r in rung0)
    seeds = set(trials.loc[trials["source"].isin(SEED_SOURCES), "trial_id"])
    ladder = Ladder.build(0.2, 1, 2)
    promoted = {t for (t, rung) in journal.results if rung == 1} - seeds
    assert promoted == set(ladder.promoted(journal, 0, seeds))
    judges = json.loads((run / "fidelity.json").read_text())["judges"]
    assert judges["both"]["n"] == judges["supernet"]["n"] == int((trials["state"] == "complete").sum())
