import torch

from nas_prune import create_model, prune
from nas_prune.models import model_spec
from nas_prune.objective import CandidateEvaluator, TrialSettings, adapt_batchnorm, evaluate_candidate
from nas_prune.train import evaluate


def _settings(**kw):
    torch.manual_seed(0)
    model = create_model("convnet", in_channels=1)
    spec = model_spec("convnet", 1, 10, (1, 28, 28))
    return TrialSettings(spec=spec, dense_state=model.state_dict(), dataset="synthetic", batch_size=32, **kw)


def test_rung_zero_is_adaptive_bn_and_the_unfolded_accuracy():
    """Rung 0 = slim, adapt BN on the evaluator's fixed batches, validate; folding BN changes nothing."""
    settings = _settings()
    evaluator = CandidateEvaluator(settings)
    widths = {"features.conv1.conv": 8, "features.conv5.conv": 64}
    result = evaluator(widths, 0.0, seed=3)
    assert result["epochs"] == 0.0 and result["wall_s"] > 0
    slim = prune(settings.dense_model(), torch.zeros(2, 1, 28, 28), widths)
    adapt_batchnorm(slim, evaluator.bn_batches, len(evaluator.bn_batches), "cpu")
    plain = evaluate(slim, settings.data().loader("val", 100, train=False))["accuracy"]
    assert result["val_accuracy"] == plain


def test_the_validation_batch_follows_the_device_and_never_changes_the_score(monkeypatch):
    """CPU workers validate in cache-sized batches (faster, scripts/benchmark_rung0.py); same score."""
    import nas_prune.objective as objective

    widths = {"features.conv1.conv": 8, "features.conv5.conv": 64}
    default = CandidateEvaluator(_settings())
    monkeypatch.setitem(objective.VAL_BATCH, "cpu", 16)
    small = CandidateEvaluator(_settings())
    assert {len(batch[0]) for batch in small.val[:-1]} == {16} and len(small.val) > 1
    assert small(widths)["val_accuracy"] == default(widths)["val_accuracy"]


def test_fine_tune_rung_trains_the_asked_epochs_and_changes_the_score():
    settings = _settings()
    evaluator = CandidateEvaluator(settings)
    widths = {"features.conv1.conv": 8}
    tuned = evaluator(widths, 0.5, seed=1)
    assert 0.4 < tuned["epochs"] <= 0.6
    assert evaluator(widths, 0.5, seed=1)["val_accuracy"] == tuned["val_accuracy"]  # same seed, same score
    assert (
        evaluate_candidate(widths, settings, 0.0, 1)["val_accuracy"]
        == evaluator(widths, 0.0, 1)["val_accuracy"]
    )


def test_adaptive_bn_recomputes_statistics_without_touching_weights():
    model = create_model("convnet", in_channels=1)
    bn = model.features.conv1.bn
    bn.running_mean.fill_(5.0)
    weights = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    batches = [(torch.randn(16, 1, 28, 28), torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    adapt_batchnorm(model, batches, batches=2, device="cpu")
    assert bn.running_mean.abs().max() < 5.0 and bn.momentum == 0.1 and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_validation_split_does_not_depend_on_the_training_seed():
    assert torch.equal(_settings(seed=0).data().val.indices, _settings(seed=5).data().val.indices)
