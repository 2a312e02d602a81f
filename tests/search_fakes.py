"""Stand-ins for evaluate_candidate, importable by Ray workers (the tests put this folder on their path).

They make search outcomes deterministic and cheap: accuracy grows with the kept width, some widths
fail or are planted as hopeless, and each training leaves a marker file so tests can count them.
"""

from __future__ import annotations

from pathlib import Path

FIRST = "features.conv1.conv"  # convnet's first channel group


def fake_evaluate(widths, settings, report, trial_seed=0):
    extra = settings.extra
    Path(extra["marker_dir"], str(trial_seed)).touch()
    if widths[FIRST] in extra.get("fail_widths", ()):
        raise RuntimeError("planted failure")
    share = sum(widths.values()) / extra["dense_total"]
    hopeless = widths[FIRST] in extra.get("hopeless_widths", ())
    metrics = {}
    for step in range(1, settings.reports + 1):
        accuracy = 0.05 if hopeless else (0.2 + 0.6 * share) * (0.7 + 0.3 * step / settings.reports)
        metrics = {
            "val_accuracy": accuracy,
            "epochs": settings.epochs * step / settings.reports,
            "step": step,
        }
        report(metrics)
    return metrics
