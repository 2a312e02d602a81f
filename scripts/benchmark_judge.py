"""Benchmark: how well each rung-0 judge ranks on-budget architectures against their fine-tuned truth.

    python scripts/benchmark_judge.py --checkpoint dense.pt [--budget-flops 0.1 0.3] [--archs 20]
        [--supernet-epochs 2] [--students budget] [--grad-clip 5] [--supernet-top] [--top-epochs 0.5]
        [--output results/judge]

For each budget: ``--archs`` random architectures projected onto the budget (as ``--sampler random``
proposes them, all distinct). Each is scored by both judges and fine-tuned with two seeds:

* ``dense_judge``: rung 0 without a supernet: sliced from the dense weights (L2 order), adaptive BN, the
  validation score;
* ``supernet_judge``: rung 0 with a supernet: sliced from the width-shared supernet trained
  ``--supernet-epochs`` from the dense weights by the sandwich rule (:mod:`nas_prune.supernet`), its
  random students drawn on the budget (``--students budget``, the search's choice) or from the whole
  grid (``grid``), adaptive BN, the validation score;
* the truth, ``truth_seed0`` and ``truth_seed1``: sliced from the dense weights, adaptive BN and
  fine-tuned ``--top-epochs`` (the search's default top rung) with training seeds 0 and 1, as the
  ladder's top rung does without a supernet and as ``retrain --init inherit`` starts by default;
* ``both`` (summary only): the mean of the two judges' ranks, what rung 0 ranks by with
  ``--rung0-judge both``;
* with ``--supernet-top``, ``supernet_top_seed0``: the ladder's top rung with ``--fine-tune-from supernet``: sliced from the
  supernet, adaptive BN, fine-tuned ``--top-epochs`` with training seed 0. Its Kendall against the truth
  says whether fine-tune rungs that start from the supernet rank as the dense-started final training
  ends (measured: far less well than a dense-started one, hence ``--fine-tune-from dense`` by default;
  a row from before this column gets it on the next run).

The goal (issue 24): a judge's Kendall tau against the mean of the two seeds is at least 0.8x the two
seeds' Kendall with each other (the ceiling: no judge ranks a noisy truth better than another draw of
it). Per-architecture rows go to ``OUTPUT/judge-flops<B>-<students>-e<E>[-clip<C>].csv`` as they finish
(a rerun skips finished ones; the supernet is cached beside them; ``-clip<C>``: the supernet's
gradient-norm clip, none without it; the truth of an architecture another setting's rows already hold
is reused, since no supernet changes it); the summary, to ``OUTPUT/judge_study.json`` (one entry per
budget and supernet setting) and the terminal. Search on the validation split only:
the test set is not read.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import time
from pathlib import Path

import pandas as pd
from scipy import stats

from nas_prune.checkpoint import load_checkpoint
from nas_prune.config import SearchConfig, hardware_info
from nas_prune.models import build_from_spec
from nas_prune.objective import CandidateEvaluator, TrialSettings
from nas_prune.resumable import Resumable
from nas_prune.search.inputs import build_space
from nas_prune.search.projection import KEEP_MIN, Projector
from nas_prune.search.seeding import budget_sampler
from nas_prune.space import Budget
from nas_prune.supernet import (
    SupernetSettings,
    load_supernet,
    save_supernet,
    supernet_key,
    train_supernet,
)
from nas_prune.task import resolve_task

SUPERNET_TOP = "supernet_top_seed0"
"""Column: the top rung fine-tuned from the supernet's weights (training seed 0)."""


def _archs(projector: Projector, count: int, seed: int) -> list[dict]:
    """``count`` distinct random architectures projected onto the budget."""
    rng, seen, archs = random.Random(seed), set(), []
    for _ in range(100 * count):
        widths = projector.project({n: rng.uniform(KEEP_MIN, 1.0) for n in projector.space.names})
        key = tuple(sorted(widths.items())) if widths else None
        if key is not None and key not in seen:
            seen.add(key)
            archs.append(widths)
        if len(archs) == count:
            break
    return archs


def _supernet(args, model, example, space, task, projector, path: Path):
    """The supernet of this budget and setting: cached at ``path``, else trained now (and timed)."""
    clip = args.grad_clip if args.grad_clip > 0 else None
    settings = SupernetSettings(
        epochs=args.supernet_epochs, lr=args.lr, batch_size=128, progress=True, grad_clip=clip
    )
    key = supernet_key(settings, args.students)
    found = load_supernet(path, key)
    if found is not None:
        return found, json.loads(path.with_suffix(".json").read_text())["seconds"]
    sample = budget_sampler(projector, (1.0,)) if args.students == "budget" else None
    start = time.perf_counter()
    resumable = Resumable(path.with_suffix(".partial.pt"), key)  # a killed study keeps its training
    supernet = train_supernet(model, example, space, task, settings, sample, resumable)
    seconds = time.perf_counter() - start
    save_supernet(path, supernet, key)
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds}))
    return supernet, seconds


def _known_truth(out: Path, budget: float, top_epochs: float, widths: str) -> dict:
    """The truth of ``widths`` from another supernet setting's rows at this budget (it is fine-tuned from
    the dense weights, so no supernet changes it), or nothing."""
    summary_path = out / "judge_study.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for path in sorted(out.glob(f"judge-flops{budget:g}-*.csv")):
        rows = pd.read_csv(path)
        same = rows[rows["widths"] == widths].dropna(subset=["truth_seed0", "truth_seed1"])
        if len(same) and summary.get(path.stem.removeprefix("judge-"), {}).get("top_epochs") == top_epochs:
            keys = ("truth_seed0", "truth_seconds0", "truth_seed1", "truth_seconds1")
            return {k: same.iloc[0][k] for k in keys}
    return {}


def _kendall(a, b) -> float:
    return float(stats.kendalltau(a, b).statistic)


def summarize(rows: pd.DataFrame) -> dict:
    """Each judge's Kendall/Spearman against the two-seed mean, and the seeds' with each other."""
    truth = (rows["truth_seed0"] + rows["truth_seed1"]) / 2
    ceiling = _kendall(rows["truth_seed0"], rows["truth_seed1"])
    out = {"n": len(rows), "ceiling_kendall": ceiling, "goal_kendall": 0.8 * ceiling}
    for judge in ("dense_judge", "supernet_judge"):
        kendall = _kendall(rows[judge], truth)
        out[judge] = {
            "kendall": kendall,
            "spearman": float(stats.spearmanr(rows[judge], truth).statistic),
            "min": float(rows[judge].min()),
            "max": float(rows[judge].max()),
            "goal_met": bool(kendall >= 0.8 * ceiling),
        }
    both = stats.rankdata(rows["dense_judge"]) + stats.rankdata(rows["supernet_judge"])
    kendall = _kendall(both, truth)
    out["both"] = {  # what rung 0 ranks by with --rung0-judge both: the two judges' mean rank
        "kendall": kendall,
        "spearman": float(stats.spearmanr(both, truth).statistic),
        "goal_met": bool(kendall >= 0.8 * ceiling),
    }
    if SUPERNET_TOP in rows and rows[SUPERNET_TOP].notna().all():
        top = rows[SUPERNET_TOP]
        out[SUPERNET_TOP] = {
            "kendall": _kendall(top, truth),
            "spearman": float(stats.spearmanr(top, truth).statistic),
            "kendall_with_supernet_judge": _kendall(rows["supernet_judge"], top),
            "min": float(top.min()),
            "max": float(top.max()),
        }
    out["truth"] = {"min": float(truth.min()), "max": float(truth.max())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="the dense model (nas_prune.train's checkpoint)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--subset", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--budget-flops", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--archs", type=int, default=20, help="random on-budget architectures per budget")
    parser.add_argument("--supernet-epochs", type=float, default=2.0)
    parser.add_argument("--students", choices=("budget", "grid"), default="budget")
    parser.add_argument("--top-epochs", type=float, default=0.5, help="fine-tune epochs of the truth")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tune and supernet learning rate")
    parser.add_argument(
        "--grad-clip",
        type=float,
        default=5.0,
        help="the supernet's gradient-norm clip (0: none, as the search before --supernet-grad-clip)",
    )
    parser.add_argument(
        "--supernet-top",
        action="store_true",
        help="also fine-tune each architecture from the supernet (column supernet_top_seed0)",
    )
    parser.add_argument("--output", default="results/judge")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(args.checkpoint)
    task = resolve_task(None, args.dataset, None, args.subset, 0.1)
    model = build_from_spec(ckpt["spec"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    example = task.example()
    _, space, cost = build_space(SearchConfig(model=ckpt["spec"]["model"]), model, example)
    summary_path = out / "judge_study.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for budget in args.budget_flops:
        tag = f"flops{budget:g}-{args.students}-e{args.supernet_epochs:g}"
        tag += f"-clip{args.grad_clip:g}" if args.grad_clip > 0 else ""
        projector = Projector(space, cost, Budget(flops=budget))
        supernet, seconds = _supernet(
            args, model, example, space, task, projector, out / f"supernet-{tag}.pt"
        )
        common = dict(spec=ckpt["spec"], dataset=args.dataset, subset=args.subset, lr=args.lr)
        dense = CandidateEvaluator(TrialSettings(dense_state=ckpt["state_dict"], **common))
        shared = CandidateEvaluator(
            TrialSettings(dense_state=supernet.state_dict, ranking=supernet.ranking, **common)
        )
        path = out / f"judge-{tag}.csv"
        done = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["arch"])
        for index, widths in enumerate(_archs(projector, args.archs, seed=int(budget * 1000))):
            known = done.index[done["arch"] == index]
            row = done.loc[known[0]].to_dict() if len(known) else {"arch": index}
            if not len(known):
                row.update({"widths": json.dumps(widths),
                            "flops_ratio": cost.cost(widths)[0] / cost.dense[0],
                            "dense_judge": dense(widths)["val_accuracy"],
                            "supernet_judge": shared(widths)["val_accuracy"]})  # fmt: skip
                row.update(_known_truth(out, budget, args.top_epochs, row["widths"]))
                for seed in (0, 1):
                    if f"truth_seed{seed}" in row:
                        continue
                    result = dense(widths, args.top_epochs, seed)
                    row[f"truth_seed{seed}"], row[f"truth_seconds{seed}"] = (
                        result["val_accuracy"],
                        result["wall_s"],
                    )
            widths = json.loads(row["widths"])  # as scored, should the projection have changed since
            if args.supernet_top and pd.isna(row.get(SUPERNET_TOP, float("nan"))):
                row[SUPERNET_TOP] = shared(widths, args.top_epochs, 0)["val_accuracy"]
            done = (
                pd.concat([done.drop(known), pd.DataFrame([row])], ignore_index=True)
                .sort_values("arch")
                .reset_index(drop=True)
            )
            done.to_csv(path, index=False)
            print(f"{tag} arch {index}: dense {row['dense_judge']:.3f} supernet {row['supernet_judge']:.3f} "
                  f"truth {row['truth_seed0']:.4f}/{row['truth_seed1']:.4f} "
                  f"from supernet {row.get(SUPERNET_TOP, float('nan')):.4f}", flush=True)  # fmt: skip
        result = summarize(done)
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout
        summary[tag] = {**result, "budget_flops": budget, "supernet_epochs": args.supernet_epochs,
                        "students": args.students, "supernet_seconds": seconds, "top_epochs": args.top_epochs,
                        "checkpoint": str(args.checkpoint), "commit": commit.strip(),
                        "machine": hardware_info()}  # fmt: skip
        summary_path.write_text(json.dumps(summary, indent=2))
        print(json.dumps({tag: result}, indent=2))


if __name__ == "__main__":
    main()
