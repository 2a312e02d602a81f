"""Stand-ins for CandidateEvaluator, importable by Ray workers (the tests put this folder on their path).

They make search outcomes deterministic and cheap: accuracy grows with the kept width and with the
fine-tuning epochs, some widths fail or are planted as hopeless, and each evaluation leaves a marker
file ``<trial_id>-<epochs>`` so tests can count what was evaluated.
"""

from __future__ import annotations

from pathlib import Path

FIRST = "features.conv1.conv"  # convnet's first channel group


class FakeEvaluator:
    """``FakeEvaluator(settings, marker_dir=..., dense_total=...)(widths, epochs, seed)``."""

    def __init__(self, settings, marker_dir, dense_total, fail_widths=(), hopeless_widths=(), delay=0.0):
        self.settings, self.marker_dir, self.dense_total = settings, Path(marker_dir), dense_total
        self.fail_widths, self.hopeless_widths, self.delay = set(fail_widths), set(hopeless_widths), delay

    def __call__(self, widths, epochs=0.0, seed=0):
        import time

        (self.marker_dir / f"{seed}-{epochs:g}").touch()
        time.sleep(self.delay)
        if widths[FIRST] in self.fail_widths:
            raise RuntimeError("planted failure")
        if widths[FIRST] in self.hopeless_widths:
            return {"val_accuracy": 0.05, "epochs": epochs}
        share = sum(widths.values()) / self.dense_total
        jitter = ((seed * 7919) % 97) / 9700  # fixed per candidate: ties broken, ranks kept across rungs
        return {
            "val_accuracy": min(1.0, (0.2 + 0.6 * share) * (0.7 + 0.2 * min(epochs, 1.0)) + jitter),
            "epochs": epochs,
        }


class CrashOnceEvaluator(FakeEvaluator):
    """Kills its worker process the first time it scores ``crash_trial`` (a marker file remembers it)."""

    def __init__(self, settings, crash_trial, **kwargs):
        super().__init__(settings, **kwargs)
        self.crash_trial = crash_trial

    def __call__(self, widths, epochs=0.0, seed=0):
        import os

        crashed = self.marker_dir / "crashed"
        if seed == self.crash_trial and not crashed.exists():
            crashed.touch()
            os._exit(1)  # the process dies mid-call, as a killed worker does
        return super().__call__(widths, epochs, seed)
