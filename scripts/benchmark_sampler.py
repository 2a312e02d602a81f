"""Benchmark: the sampler's model share, repeated proposals and best score, without training (issue 24).

    python scripts/benchmark_sampler.py [--model resnet20] [--budgets flops0.1 flops0.3 latency0.5]
        [--samplers evolution tpe random] [--trials 240] [--seeds 0 1 2] [--output results/sampler.csv]

The search's own proposal loop (:class:`nas_prune.search.driver.Driver`: studies, projection, cost
levels, repeats, the ladder) runs on the model's real channel groups and width grid, with the Ray
workers replaced by an in-process pool (two workers, two calls of four candidates each in flight, as
the default search) and the rung-0 score by a cheap synthetic function of the widths
(:func:`fake_score`). A ``latency<f>`` budget aims at ``f`` x the dense latency predicted by a synthetic
step-wise latency model (:func:`fake_latency`: most of the work padded to 8 channels, as SIMD kernels
do, plus a fixed cost per layer), which, like a real LUT, leaves few architectures just under the limit. Four seeds
(uniform and three projected random allocations) are scored first, as a search's seeds are.

Reports per sampler and budget: ``model_share`` and ``repeat_share`` as fidelity.json computes them,
and the best fake score at the budget level among the rung-0 candidates (mean over ``--seeds``).
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import zlib
from pathlib import Path

import pandas as pd
import torch

from nas_prune.config import SearchConfig
from nas_prune.models import create_model
from nas_prune.search.driver import Driver
from nas_prune.search.inputs import build_space
from nas_prune.search.journal import Journal
from nas_prune.search.ladder import Ladder
from nas_prune.search.projection import Projector
from nas_prune.search.report import band_share, fidelity_report
from nas_prune.search.study import Proposals
from nas_prune.space import Budget


class InlinePool:
    """The worker pool's interface, evaluating in-process: ``slots`` calls run at once, the oldest
    finishes first, so the driver proposes batches before their scores arrive, as with Ray."""

    def __init__(self, score, slots: int = 4):
        self.score, self.slots = score, slots
        self.queue: list[list] = []
        self.running: dict[int, tuple[int, list]] = {}
        self.calls = 0

    @property
    def busy(self) -> int:
        return len(self.queue) + len(self.running)

    def submit(self, jobs) -> None:
        if jobs:
            self.queue.append(list(jobs))
        while self.queue and len(self.running) < self.slots:
            self.running[self.calls] = (0, self.queue.pop(0))
            self.calls += 1

    def idle_slots(self) -> int:
        return self.slots - len(self.running) - len(self.queue)

    def results(self, timeout=None):
        if not self.running:
            return
        _, jobs = self.running.pop(min(self.running))
        for job in jobs:
            accuracy = self.score(job.widths) + 0.05 * min(job.epochs, 1.0)
            yield {"trial_id": job.trial_id, "rung": job.rung, "epochs": job.epochs,
                   "val_accuracy": accuracy, "wall_s": 1.0}  # fmt: skip
        self.submit([])


def fake_score(space, seed: int = 12345):
    """A rung-0 score of widths: per group, a random importance times the log of its kept fraction,
    plus a small fixed per-architecture jitter (rung-0 noise). Its optimum under a budget keeps each
    group in proportion to importance over cost, which no seed knows."""
    rng = random.Random(seed)
    weight = {n: rng.uniform(0.2, 1.0) ** 2 for n in space.names}
    total = sum(weight.values())

    def score(widths) -> float:
        value = sum(w * math.log(widths[n] / space.choices[n][-1]) for n, w in weight.items()) / total
        jitter = zlib.crc32(repr(sorted(widths.items())).encode()) % 1000 / 1000 * 0.002
        return 0.9 + 0.1 * value + jitter

    return score


def fake_latency(cost, space):
    """Predicted ms of widths: 0.02 ms a layer, plus MACs of which 80% are counted with every group's
    channels padded up to 8 (AVX2 lanes) and 20% as they are: near-plateaus, as a measured LUT has."""

    def predict(widths) -> float:
        padded = {n: min(c[-1], 8 * math.ceil(widths[n] / 8)) for n, c in space.choices.items()}
        macs = 0.8 * cost.cost(padded)[0] + 0.2 * cost.cost(dict(widths))[0]
        return macs * 1e-6 + 0.02 * len(space.names)

    return predict


def _projector(space, cost, budget: str) -> Projector:
    """``flops<f>`` or ``latency<f>`` (the fake latency model's prediction, a trusted LUT's role)."""
    if budget.startswith("flops"):
        return Projector(space, cost, Budget(flops=float(budget.removeprefix("flops"))))
    fraction, predict = float(budget.removeprefix("latency")), fake_latency(cost, space)
    limit = fraction * predict(space.dense())
    return Projector(space, cost, Budget(latency_fraction=fraction), latency=(predict, limit))


def run_loop(space, cost, budget: str, sampler: str, seed: int, trials: int, run_dir: Path) -> dict:
    """One search's proposal loop on the fake score; fidelity.json's ``sampler`` block plus the best
    rung-0 score at the budget level."""
    cfg = SearchConfig(trials=trials, workers=2, seed=seed, sampler=sampler)
    run_dir.mkdir(parents=True, exist_ok=True)
    projector = _projector(space, cost, budget)
    levels = (1.0, 0.8, 0.6)
    rng = random.Random(seed)
    seeds = [("uniform", projector.project(dict.fromkeys(space.names, 1.0)))]
    seeds += [
        (s, projector.project({n: rng.uniform(0.05, 1) for n in space.names}))
        for s in ("l2", "sensitivity", "gates")
    ]
    journal = Journal.open(run_dir / "evaluations.jsonl")
    ladder = Ladder.build(cfg.epochs_per_trial, cfg.rungs, cfg.reduction_factor)
    proposals = Proposals(run_dir, space, levels, sampler, seed, cfg.startup_trials)
    score = fake_score(space)
    Driver(cfg, journal, ladder, projector, proposals, levels, seeds, InlinePool(score), quiet=True).run()
    block = fidelity_report(journal, ladder, None, cfg.workers)["sampler"]
    at_budget = [journal.score(t, 0) for t, c in journal.candidates.items() if c["level"] == 1.0]
    block["best"] = max(s for s in at_budget if s is not None)
    block["rung0"] = sum(k == 0 for _, k in journal.results)
    block["band_share"] = band_share(journal, projector, cfg.budget_band)
    return block


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budgets", nargs="+", default=["flops0.1", "flops0.3", "latency0.5"])
    parser.add_argument("--samplers", nargs="+", default=["evolution", "tpe", "random"])
    parser.add_argument("--trials", type=int, default=240)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="results/sampler.csv")
    args = parser.parse_args(argv)
    model = create_model(args.model, in_channels=1)
    _, space, cost = build_space(SearchConfig(model=args.model), model, torch.zeros(2, 1, 28, 28))
    rows = []
    for budget in args.budgets:
        for sampler in args.samplers:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    block = run_loop(space, cost, budget, sampler, seed, args.trials, Path(tmp))
                rows.append({"budget": budget, "sampler": sampler, "seed": seed, **block})
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows).drop(columns=["sources"])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output, index=False)
    summary = frame.groupby(["budget", "sampler"], sort=False)[
        [
            "model_share",
            "repeat_share",
            "repeated_proposals",
            "neighbour_retries",
            "band_share",
            "best",
            "rung0",
        ]
    ].mean()
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
