import torch

from nas_prune import count_macs, create_model, prune
from nas_prune.models import model_spec
from nas_prune.objective import TrialSettings, adapt_batchnorm, evaluate_candidate


def _settings(**kw):
    torch.manual_seed(0)
    model = create_model("convnet", in_channels=1)
    spec = model_spec("convnet", 1, 10, (1, 28, 28))
    return TrialSettings(spec=spec, dense_state=model.state_dict(), dataset="synthetic", batch_size=32, **kw)


def test_reports_at_least_four_times_and_prunes_to_the_widths():
    settings = _settings(epochs=0.5, reports=4)
    reports = []
    widths = {"features.conv1.conv": 8, "features.conv5.conv": 64}
    final = evaluate_candidate(widths, settings, reports.append)
    assert [r["step"] for r in reports] == [1, 2, 3, 4]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in reports)
    assert reports[-1] == final and 0.4 < final["epochs"] <= 0.6
    expected = count_macs(
        prune(settings.dense_model(), torch.zeros(2, 1, 28, 28), widths), torch.zeros(2, 1, 28, 28)
    )
    assert (final["macs"], final["params"]) == expected


def test_zero_epochs_reports_once_after_adaptive_bn():
    reports = []
    evaluate_candidate({"features.conv1.conv": 8}, _settings(epochs=0.0), reports.append)
    assert len(reports) == 1 and reports[0]["epochs"] == 0.0


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


def test_same_seed_same_result():
    settings = _settings(epochs=0.3, reports=1)
    a = evaluate_candidate({"features.conv2.conv": 16}, settings, trial_seed=3)
    b = evaluate_candidate({"features.conv2.conv": 16}, settings, trial_seed=3)
    assert a["val_accuracy"] == b["val_accuracy"]


def test_validation_split_does_not_depend_on_the_training_seed():
    assert torch.equal(_settings(seed=0).data().val.indices, _settings(seed=5).data().val.indices)
