"""Benchmark: should the gate seeds be learned on the dense weights or on the width-shared supernet's?

    python scripts/benchmark_gate_source.py RUN [--top-epochs 0.5] [--output results/gate_source]

Issue 24 asks whether gate learning (the ProxylessNAS-style seeds) should stay its own training on the
dense weights, before the supernet (what the search does), or follow the supernet's training. ``RUN`` is
a finished search with ``--supernet-epochs`` > 0 and gate seeds (its ``seeds.json``, ``supernet.pt``,
``dense.pt`` and ``config.yaml`` are read, nothing in it is written). The script:

* takes the run's gate seeds: ``gates-dense``, learned on the dense weights;
* learns gates again, with the run's settings (``--gate-epochs``, ``--gate-seeds``, budget, seed), on the
  supernet's weights: ``gates-supernet`` (the channels ordered by the supernet weights' own L2 norms,
  as gate training orders any model's);
* scores both sets as the search scores its seeds: rung 0 (sliced from the supernet, adaptive BN) and
  the top rung (``--top-epochs`` of fine-tuning from the supernet's weights) with training seeds 0 and 1.

Rows go to ``OUTPUT/gate_source.csv`` as they finish (a rerun skips finished ones; the supernet-learned
gates are cached in ``OUTPUT/gates-supernet.json``); the summary (the best and mean top-rung score of each
set, and the gate trainings' wall time) to ``OUTPUT/gate_source.json`` and the terminal. The validation
split only; the test set is not read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from nas_prune.checkpoint import load_checkpoint
from nas_prune.config import hardware_info, load_config
from nas_prune.models import build_from_spec
from nas_prune.objective import CandidateEvaluator, TrialSettings
from nas_prune.search.inputs import build_space, make_budget
from nas_prune.search.seeding import gate_seeds
from nas_prune.supernet import load_supernet
from nas_prune.task import resolve_task


def _supernet_gates(cfg, model, example, space, cost, budget, task, out: Path) -> tuple[list, float]:
    """Gate seeds learned on ``model`` (the supernet's weights); cached in ``out``."""
    cached = out / "gates-supernet.json"
    if cached.is_file():
        found = json.loads(cached.read_text())
        return found["seeds"], found["seconds"]
    start = time.perf_counter()
    seeds = gate_seeds(cfg, model, example, space, cost, budget, task, "cpu", out, None, None, quiet=False)
    seconds = time.perf_counter() - start
    cached.write_text(json.dumps({"seeds": seeds, "seconds": seconds}))
    return seeds, seconds


def summarize(rows: pd.DataFrame) -> dict:
    """Per gate source: how many seeds, the best and mean top-rung score (mean of the two seeds)."""
    rows = rows.assign(top=(rows["top_seed0"] + rows["top_seed1"]) / 2)
    return {
        source: {
            "n": len(group),
            "best_top": float(group["top"].max()),
            "mean_top": float(group["top"].mean()),
            "mean_rung0": float(group["rung0"].mean()),
        }  # fmt: skip
        for source, group in rows.groupby("source")
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a finished search run with a supernet and gate seeds")
    parser.add_argument("--top-epochs", type=float, default=0.5, help="fine-tune epochs of the top rung")
    parser.add_argument("--output", default="results/gate_source")
    args = parser.parse_args()
    run, out = Path(args.run), Path(args.output)
    missing = [f for f in ("config.yaml", "dense.pt", "seeds.json", "supernet.pt") if not (run / f).is_file()]
    if missing:
        print(
            f"error: {run} is not a finished search with a supernet (no {', '.join(missing)})",
            file=sys.stderr,
        )
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(run / "config.yaml")
    ckpt = load_checkpoint(run / "dense.pt")
    supernet = load_supernet(run / "supernet.pt", None)
    task = resolve_task(None, cfg.dataset, cfg.data_dir, cfg.subset)
    model = build_from_spec(ckpt["spec"])
    model.load_state_dict(ckpt["state_dict"])
    example = task.example()
    _, space, cost = build_space(cfg, model, example)
    budget = make_budget(cfg)
    learned, seconds = _supernet_gates(
        cfg, supernet.model(model).eval(), example, space, cost, budget, task, out
    )
    dense_gates = [w for source, w in json.loads((run / "seeds.json").read_text()) if source == "gates"]
    evaluator = CandidateEvaluator(
        TrialSettings(
            dense_state=supernet.state_dict,
            ranking=supernet.ranking,
            spec=ckpt["spec"],
            dataset=cfg.dataset,
            data_dir=cfg.data_dir,
            subset=cfg.subset,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )  # fmt: skip
    )
    path = out / "gate_source.csv"
    done = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    keys = set(zip(done["source"], done["index"], strict=True)) if len(done) else set()
    for source, seeds in (("gates-dense", dense_gates), ("gates-supernet", learned)):
        for index, widths in enumerate(seeds):
            if (source, index) in keys:
                continue
            row = {"source": source, "index": index, "widths": json.dumps(widths, sort_keys=True),
                   "flops_ratio": cost.cost(widths)[0] / cost.dense[0],
                   "rung0": evaluator(widths)["val_accuracy"]}  # fmt: skip
            for seed in (0, 1):
                row[f"top_seed{seed}"] = evaluator(widths, args.top_epochs, seed)["val_accuracy"]
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            done.to_csv(path, index=False)
            print(f"{source} {index}: rung 0 {row['rung0']:.4f} top {row['top_seed0']:.4f}/{row['top_seed1']:.4f}",
                  flush=True)  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    summary = {"run": str(run), "sources": summarize(done), "gate_epochs": cfg.gate_epochs,
               "supernet_gates_seconds": seconds, "top_epochs": args.top_epochs, "commit": commit.strip(),
               "machine": hardware_info()}  # fmt: skip
    (out / "gate_source.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["sources"], indent=2))


if __name__ == "__main__":
    main()
