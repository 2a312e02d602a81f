"""Benchmark: searched widths vs the pruning baselines, same FLOPs budget, same training epochs.

    python scripts/benchmark.py [--full] [--model convnet] [--budget-flops 0.3] [--seeds 3]
        [--subset N] [--output results] [--checkpoint dense.pt] [--dataset fashion-mnist]

Steps, in this order (each one skipped on a restart when its result is already on disk):

1. Train ONE dense model for ``--dense-epochs`` (or reuse ``--checkpoint``): ``OUTPUT/bench/dense.pt``.
2. Two width searches from that checkpoint, with the same ``--trials`` x ``--epochs-per-trial``: the
   search (the search's default sampler, seed and gate architectures first) in ``OUTPUT/bench/search``
   and its control, a random search without seed architectures or gates (``sampler="random",
   seeds=(), gate_epochs=0``; with ``--supernet-epochs`` it reuses the search's supernet, trained with
   the same settings) in ``OUTPUT/bench/search-random``.
3. For every seed: every baseline method (``nas_prune.baselines.METHODS``) and a from-scratch retrain
   of the search's best architecture, of its ``uniform`` and ``l2`` seed trials and of the random
   search's best; with ``--supernet-epochs`` > 0, the rows of ``benchmark_report.SUPERNET_ROWS``
   instead (the searched best inherited from the supernet, through ``--top 3`` and from the dense
   weights; the random control's best; uniform and l2-structured at equal final and equal total epochs;
   iterative-l2). Every finished run is appended at once to ``OUTPUT/bench/runs.csv``; a restart skips
   those runs, and a baseline interrupted mid-training continues from its last finished epoch.
4. ``OUTPUT/benchmark.md`` (table: test accuracy mean ± std over seeds, MACs, params, latency at batch 1,
   wall time; which rows share an architecture; the command line; the machine; one verdict per row,
   first whether the search beats the random search) and ``OUTPUT/benchmark.png``.

Same training per method. D = ``--dense-epochs``, E = ``--epochs`` (defaults D = E = 3). Every method
trains its pruned network for E epochs: fine-tuning from the shared dense model (l1-unstructured,
l2-structured), soft-filter from the same dense model (half of E soft-pruned, the other half fine-tuning
the cut network: ``nas_prune.baselines.FINETUNE_SHARE``), E split over the pruning steps (iterative-l2: ``--iterative-step`` of the remaining
FLOPs per step, E / steps epochs after each step), from scratch at lr 0.1 (uniform-scratch and the four
search retrains), and lottery-ticket, which trains its own dense model from theta0 (so it gets no
``--checkpoint``), gets (D + E) / 2 epochs for the dense model and again for the ticket, so D + E in all
like the others. The searches' own fine-tuning (its fidelity ladder: rung-0 scores and short fine-tunes) is extra cost of the
search rows, shown in the report with the searches' wall time. The searches use the validation split
only; test accuracy is measured once per trained model at the end.

Defaults (CPU, 2 cores): Fashion-MNIST with a fixed training subset of 20,000 images (18,000 train,
2,000 validation; the full 10,000 test images), ``convnet``, 30% of the FLOPs, 3 dense epochs, 3 epochs
per method, each search 240 rung-0 candidates, top rung 0.5 epochs, on 2 workers, 3 seeds: 1 dense + 2 searches + 30 runs.
The CPU default is ``convnet`` and not ``resnet20`` because the report must stay well under 2 hours on a
shared 2-core CPU: the 27-run report took 13 min with convnet, and a resnet20 epoch took 2.2x a convnet
one here, which would put the default near an hour or beyond on a loaded machine (``--model resnet20``
still works). ``--full`` (GPU): resnet20, full data, ``--device cuda``, 30 dense epochs, 30 epochs per
method, 1000 rung-0 candidates, top rung 2 epochs, per search, 4 workers sharing the GPU; explicit flags still win over the
presets. A rerun into the same ``--output`` must use the same settings (``--seeds`` may grow).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmark_report, beside this script

from benchmark_report import (  # noqa: E402
    COLUMNS,
    FINAL_PATHS,
    ORDER,
    SEARCH_ROWS,
    SUPERNET_ROWS,
    goal_lines,
    judge_lines,
    markdown_table,
    shared_architectures,
    spread_lines,
    summarize,
    verdict,
    verdict_lines,
    write_plot,
    write_report,
)

import nas_prune  # noqa: E402
from nas_prune.baselines import METHODS, BaselineConfig, iterative_targets, run_baseline  # noqa: E402
from nas_prune.data import load_dataset  # noqa: E402
from nas_prune.models import create_model, model_spec  # noqa: E402
from nas_prune.retrain import retrain  # noqa: E402
from nas_prune.train import fit, resolve_device, save_checkpoint, seed_everything  # noqa: E402

__all__ = [  # the report's parts are re-exported: tests and callers use them from here
    "ORDER", "SEARCH_ROWS", "goal_lines", "markdown_table", "shared_architectures", "verdict", "verdict_lines",
    "main",
]  # fmt: skip

CPU_DEFAULTS = dict(
    model="convnet", subset=20000, dense_epochs=3.0, epochs=3.0, trials=240, epochs_per_trial=0.5,
    workers=2, gpus_per_trial=0.0, device="cpu",
)  # fmt: skip
FULL_DEFAULTS = dict(
    model="resnet20", subset=None, dense_epochs=30.0, epochs=30.0, trials=1000, epochs_per_trial=2.0,
    workers=4, gpus_per_trial=0.25, device="cuda",
)  # fmt: skip
NOT_SETTINGS = ("output", "seeds", "full")  # may differ between a run and its restart
VERSION = 2  # of the runs in runs.csv: 1 had a broken soft-filter, no random-search control, no widths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="GPU size (see above)")
    parser.add_argument("--model", default=None, help="default: convnet (CPU), resnet20 (--full)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--budget-flops", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--subset", type=int, default=None, help="fixed training subset; 0 = all")
    parser.add_argument("--checkpoint", default=None, help="reuse this dense model")
    parser.add_argument("--dense-epochs", type=float, default=None)
    parser.add_argument("--epochs", type=float, default=None, help="training epochs per method")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--epochs-per-trial", type=float, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--gpus-per-trial", type=float, default=None)
    parser.add_argument("--iterative-step", type=float, default=0.1)
    parser.add_argument(
        "--supernet-epochs", type=float, default=0.0,
        help="> 0: both searches train a width-shared supernet of these epochs (rung 0 slices it) and the "
        "report is issue 24's: SUPERNET_ROWS at equal final and equal total epochs",
    )  # fmt: skip
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", default="results")
    args = parser.parse_args(argv)
    for key, value in (FULL_DEFAULTS if args.full else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.subset == 0:
        args.subset = None
    return args


def dense_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    """``--checkpoint``, or ``work/dense.pt`` (trained here for ``--dense-epochs`` if missing)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    path = work / "dense.pt"
    if not path.is_file():
        print(f"Training the dense {args.model} for {args.dense_epochs:g} epochs ...", flush=True)
        data = load_dataset(args.dataset, args.data_dir, seed=0, subset=args.subset)
        seed_everything(0)
        model = create_model(args.model, in_channels=data.in_channels, num_classes=data.num_classes)
        spec = model_spec(args.model, data.in_channels, data.num_classes, data.input_shape)
        history = fit(
            model, data, epochs=args.dense_epochs, device=resolve_device(args.device), seed=0,
            progress=False,
        )  # fmt: skip
        save_checkpoint(
            path, model.cpu(), spec, epochs=args.dense_epochs, val_accuracy=history[-1]["val_accuracy"]
        )
    return path


def check_settings(args: argparse.Namespace, work: Path) -> None:
    """Refuse to mix runs of other settings or of an older benchmark :data:`VERSION` into ``work``
    (``--seeds`` may change between restarts)."""
    path = work / "settings.json"
    now = {"version": VERSION, **{k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}}
    before = json.loads(path.read_text()) if path.is_file() else None
    if before is None and (work / "runs.csv").is_file():
        before = {"version": 1}  # runs of a benchmark from before settings.json
    if before is not None:
        diff = [f"{k} {before.get(k)!r} there vs {v!r} now" for k, v in now.items() if before.get(k) != v]
        if diff:
            sys.exit(
                f"error: {work} holds a benchmark with other settings ({', '.join(diff[:3])}); delete it or use another --output"
            )
    path.write_text(json.dumps(now, indent=2) + "\n")


def run_search(
    args: argparse.Namespace, checkpoint: Path, run_dir: Path, sampler: str = "default"
) -> pd.DataFrame:
    """A width search from ``checkpoint`` (resumed if interrupted, reused if finished).

    ``sampler="random"`` is the control: uniform random widths, no seed architectures, same trials.
    """
    if (run_dir / "best_arch.json").is_file():
        return pd.read_csv(run_dir / "trials.csv")
    print(
        f"Searching, {sampler} sampler ({args.trials} rung-0 candidates, top rung {args.epochs_per_trial:g} epochs) ...",
        flush=True,
    )
    common = dict(trials=args.trials, workers=args.workers, device=args.device, quiet=True)
    if (run_dir / "config.yaml").is_file():
        return nas_prune.search(resume=run_dir, **common)
    control = dict(sampler="random", seeds=(), gate_epochs=0.0) if sampler == "random" else {}
    shared = run_dir.parent / "search" / "supernet.pt"
    if sampler == "random" and shared.is_file():  # the same settings train the same supernet: reuse it
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared, run_dir / "supernet.pt")
    if args.supernet_epochs > 0:
        control["supernet_epochs"] = args.supernet_epochs
    return nas_prune.search(
        model=args.model, dataset=args.dataset, data_dir=args.data_dir, subset=args.subset,
        checkpoint=str(checkpoint), budget_flops=args.budget_flops,
        epochs_per_trial=args.epochs_per_trial, gpus_per_trial=args.gpus_per_trial, seed=0,
        output=str(run_dir), **control, **common,
    )  # fmt: skip


def best_trial(trials: pd.DataFrame, run_dir: Path) -> tuple[int, str] | None:
    """trial_id and source of the search's best_arch.json; None if it found no feasible architecture."""
    if not (run_dir / "best_arch.json").is_file():
        return None
    best = json.loads((run_dir / "best_arch.json").read_text())
    source = trials.loc[trials["trial_id"] == best["trial_id"], "source"]
    return int(best["trial_id"]), str(source.iloc[0])


def search_architectures(
    trials: pd.DataFrame, run_dir: Path, random_trials: pd.DataFrame, random_dir: Path
) -> dict[str, tuple[Path, int, str]]:
    """Run folder, trial_id and source of every search row: the searched best (once per final path), the
    ``uniform`` and ``l2`` seed trials and the random search's best (rows that do not exist are skipped
    with a warning)."""
    chosen = {}
    for name, found in (("search-best", best_trial(trials, run_dir)),
                        ("search-random-best", best_trial(random_trials, random_dir))):  # fmt: skip
        if found is None:
            print(f"warning: no feasible trained architecture for {name}; skipping it", flush=True)
        elif name == "search-best":
            chosen.update(dict.fromkeys(FINAL_PATHS, (run_dir, *found)))
        else:
            chosen[name] = (random_dir, *found)
    trained = trials[trials["state"] == "complete"]  # seeds climb to the top rung
    for source in ("uniform", "l2"):
        rows = trained[trained["source"] == source]
        if rows.empty:
            print(f"warning: the search has no trained {source!r} seed trial; skipping it", flush=True)
            continue
        chosen[f"search-{source}-seed"] = (run_dir, int(rows["trial_id"].iloc[0]), source)
    return chosen


def baseline_settings(
    args: argparse.Namespace, method: str, seed: int, checkpoint: Path, out: Path, epochs: float | None = None
):
    """The method's settings with the equal-epoch rule of the module docstring (``epochs``: instead of
    ``--epochs``)."""
    epochs = args.epochs if epochs is None else epochs
    extra = {}
    if method == "iterative-l2":
        steps = len(iterative_targets(args.budget_flops, args.iterative_step))
        epochs = epochs / steps
        extra = dict(step=args.iterative_step, epochs_between=epochs)
    if method == "lottery-ticket":  # trains its own dense model from theta0: no --checkpoint
        epochs = (args.dense_epochs + args.epochs) / 2
    return BaselineConfig(
        method=method, budget_flops=args.budget_flops, model=args.model, dataset=args.dataset,
        data_dir=args.data_dir, subset=args.subset, epochs=epochs, seed=seed, device=args.device,
        checkpoint=None if method == "lottery-ticket" else str(checkpoint), output=str(out),
        progress=False, **extra,
    )  # fmt: skip


def supernet_runs(args, archs: dict, checkpoint: Path, work: Path, finished: set, timed) -> None:
    """The rows of :data:`SUPERNET_ROWS` for every seed, skipping those in runs.csv."""
    for seed in range(args.seeds):
        for name, (what, how, every_seed, total) in SUPERNET_ROWS.items():
            if (name, seed) in finished or (seed > 0 and not every_seed):
                continue
            epochs = args.epochs + (args.supernet_epochs if total else 0.0)
            out = work / "runs" / f"{name}-seed{seed}"
            print(f"seed {seed}: {name} ({epochs:g} epochs) ...", flush=True)
            if what in METHODS:
                settings = baseline_settings(args, what, seed, checkpoint, out, epochs)
                metrics = timed("runs_s", lambda s=settings: run_baseline(s, quiet=True))
                append_row(work / "runs.csv", row_of(name, seed, metrics))
                continue
            if what not in archs:
                continue
            run_dir, trial_id, source = archs[what]
            where = {"trial": trial_id, "output": out}
            if "top" in how:  # Tune's folders live in the run directory: one copy of it per seed
                where, run_dir = {}, _run_copy(run_dir, out / "run")
            metrics = timed(
                "runs_s",
                lambda r=run_dir, s=seed, w=where, h=how, e=epochs: retrain(
                    r, epochs=e, seed=s, device=args.device, quiet=True, progress=False, **w, **h
                ),
            )
            if "top" in how:  # the pick of --top K may be any finalist: its own source
                trials = pd.read_csv(run_dir / "trials.csv")
                source = str(trials.loc[trials["trial_id"] == metrics["trial_id"], "source"].iloc[0])
            append_row(work / "runs.csv", row_of(name, seed, metrics, source))


def _run_copy(run_dir: Path, to: Path) -> Path:
    """A copy of the search run ``run_dir`` without its retrains (made once; a restart reuses it)."""
    if not (to / "config.yaml").is_file():
        shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("retrain"), dirs_exist_ok=True)
    return to


def row_of(method: str, seed: int, m: dict, source: str | None = None) -> dict:
    row = {key: m.get(key) for key in COLUMNS}
    if "train_seconds" in m:  # a retrain: its wall_s includes export; the baselines' is prune + train
        row["wall_s"] = m["train_seconds"]
    widths = json.dumps(m["widths"], sort_keys=True) if m.get("widths") is not None else None
    return {**row, "method": method, "seed": seed, "source": source or m.get("method"), "widths": widths}


def append_row(path: Path, row: dict) -> None:
    frame = pd.DataFrame([row], columns=COLUMNS)
    frame.to_csv(path, mode="a", header=not path.is_file(), index=False)


def main(argv: list[str] | None = None) -> Path:
    """Run (or continue) the benchmark; returns the report's path."""
    args = parse_args(argv)
    out = Path(args.output)
    work = out / "bench"
    work.mkdir(parents=True, exist_ok=True)
    check_settings(args, work)
    runs_csv, timings_path = work / "runs.csv", work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def timed(key: str, fn, *a):
        start = time.time()
        result = fn(*a)
        if key not in timings:
            timings[key] = time.time() - start
        timings["total_s"] = timings.get("total_s", 0.0) + time.time() - start
        timings_path.write_text(json.dumps(timings, indent=2))
        return result

    # 1-2. The dense model, the search, its random-search control and the architectures they found.
    checkpoint = timed("dense_s", dense_checkpoint, args, work)
    search_dir, random_dir = work / "search", work / "search-random"
    trials = timed("search_s", run_search, args, checkpoint, search_dir)
    random_trials = timed("search_random_s", run_search, args, checkpoint, random_dir, "random")
    archs = search_architectures(trials, search_dir, random_trials, random_dir)

    # 3. Every method x every seed, skipping runs already in runs.csv.
    done = pd.read_csv(runs_csv) if runs_csv.is_file() else pd.DataFrame(columns=COLUMNS)
    finished = set(zip(done["method"], done["seed"].astype(int), strict=True))
    if args.supernet_epochs > 0:
        supernet_runs(args, archs, checkpoint, work, finished, timed)
    for seed in range(args.seeds if args.supernet_epochs <= 0 else 0):
        for method in METHODS:
            if (method, seed) in finished:
                continue
            print(f"seed {seed}: {method} ...", flush=True)
            settings = baseline_settings(
                args, method, seed, checkpoint, work / "runs" / f"{method}-seed{seed}"
            )
            metrics = timed("runs_s", lambda s=settings: run_baseline(s, quiet=True))
            append_row(runs_csv, row_of(method, seed, metrics))
        for name, (run_dir, trial_id, source) in archs.items():
            if (name, seed) in finished:
                continue
            how = FINAL_PATHS.get(name, {"init": "scratch"})
            print(f"seed {seed}: {name} (trial {trial_id}, {source}) retrained {how} ...", flush=True)
            folder = f"retrain-{'random-' if run_dir == random_dir else ''}trial{trial_id}-seed{seed}"
            folder += "".join(f"-{k}" for k, v in how.items() if v is True) + f"-{how['init']}"
            metrics = timed(
                "runs_s",
                lambda r=run_dir, t=trial_id, s=seed, f=folder, h=how: retrain(
                    r, trial=t, epochs=args.epochs, seed=s, device=args.device,
                    output=work / "runs" / f, quiet=True, progress=False, **h,
                ),
            )  # fmt: skip
            append_row(runs_csv, row_of(name, seed, metrics, source))

    # 4. Report and plot.
    runs = pd.read_csv(runs_csv)
    runs = runs[runs["seed"] < args.seeds]
    order = list(SUPERNET_ROWS) if args.supernet_epochs > 0 else ORDER
    table = summarize(runs, order)
    shared = shared_architectures(runs, order)
    notes = [
        "Rows with the same architecture (identical widths in every seed; their differences come from "
        "how they were trained, not from the widths):",
        "",
        *["- " + " = ".join(f"`{m}`" for m in group) for group in shared],
    ] if shared else []  # fmt: skip
    command = sys.argv[1:] if argv is None else argv
    spread = spread_lines(random_trials)
    if args.supernet_epochs > 0:
        spread = [*judge_lines(search_dir, random_dir), "", *spread]
    write_report(args, table, timings, out, notes, command, spread)
    write_plot(table, out)
    print(f"Wrote {out / 'benchmark.md'} and {out / 'benchmark.png'}", flush=True)
    return out / "benchmark.md"


if __name__ == "__main__":
    main()
