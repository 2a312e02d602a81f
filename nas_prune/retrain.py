"""Retrain a searched architecture, export it and compare it with the dense model.

Liu et al. (2019, "Rethinking the Value of Network Pruning") found that for structured pruning the
architecture is what matters: the found widths trained from random initialisation match or beat
fine-tuning the inherited weights. This module does both, so a run can show it:

* ``--init scratch`` (default): the slim model is re-initialised (fixed seed) and trained for the dense
  model's epochs ("Scratch-E"); ``--budget-matched`` scales the epochs by 1 / FLOPs ratio so training
  costs as many FLOPs as the dense model's did ("Scratch-B").
* ``--init inherit``: the kept filters keep their dense weights; BatchNorm statistics are re-estimated
  (adaptive BN) and the model is fine-tuned at a lower learning rate.
* ``--distill``: either one learns from the dense model too (Hinton et al. 2015):
  ``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``.

Read top to bottom: choosing the architecture, the pruned-model file (``model.pt``), distillation,
the resumable training loop, :func:`retrain` (the Python API), the summary table and plot, and the CLI
``python -m nas_prune.retrain RUN_DIR``. Output goes to ``RUN_DIR/retrain/<init>[-distill][-budget]-
trial<ID>/``: ``metrics.json``, ``model.pt``, ``model.onnx`` (or ``model.pt2``) and, while training,
``checkpoint.pt``, from which an interrupted run continues.

Example:
    >>> metrics = retrain("results/convnet-fashion-mnist-flops0.3-...", init="scratch", epochs=10)
    >>> model = load_pruned(Path(metrics["output"]) / "model.pt")
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write_text
from .checkpoint import checked_widths, load_checkpoint, load_pruned, save_pruned, settings_mismatch
from .cli import ArgumentParser, ensure_output_dir, run_cli
from .config import SearchConfig, device_label, load_config
from .cost import count_macs, measure_latency, measure_speedup
from .data import DataSplits, load_dataset
from .errors import NasPruneError
from .export import export_model
from .models import MODELS, build_from_spec, init_weights
from .objective import adapt_batchnorm
from .prune import prune
from .results import read_trials
from .train import (
    Checkpointing,
    epoch_reporter,
    evaluate,
    fit,
    resolve_device,
    resumed_epochs,
    seed_everything,
)

__all__ = [
    "final_accuracy",
    "final_costs",
    "METRICS_SCHEMA_VERSION",
    "MODEL_SCHEMA_VERSION",
    "SUMMARY_COLUMNS",
    "Architecture",
    "choose_architecture",
    "distillation_loss",
    "load_pruned",
    "main",
    "output_name",
    "reinitialize",
    "retrain",
    "save_pruned",
    "distillation",
    "write_summary",
]

MODEL_SCHEMA_VERSION = 1
METRICS_SCHEMA_VERSION = 1
INITS = ("scratch", "inherit")
DEFAULT_LR = {"scratch": 0.1, "inherit": 0.01}
BN_BATCHES = 20  # batches of adaptive BN before fine-tuning inherited weights (as in the search)
CHECKPOINT = "checkpoint.pt"
_REMEDY = "delete it or pass --output DIR"

SUMMARY_COLUMNS = [
    "name",
    "trial_id",
    "init",
    "distill",
    "budget_matched",
    "seed",
    "epochs",
    "test_accuracy",
    "val_accuracy",
    "macs",
    "flops",
    "params",
    "latency_ms",
    "latency_large_ms",
    "speedup",
    "speedup_large",
    "dense_latency_ms",
    "dense_latency_large_ms",
    "speedup_low",
    "speedup_high",
    "speedup_large_low",
    "speedup_large_high",
]


# ---------------------------------------------------------------------------------------------------
# Which architecture
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """An architecture picked from a run: its trial, widths and what the search measured."""

    trial_id: int
    widths: dict[str, int]
    val_accuracy: float | None
    flops: int | None
    how: str
    state: str = "complete"
    feasible: bool = True
    source: str | None = None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NasPruneError(f"{path} is not readable JSON ({type(err).__name__}); {what}") from err
    if not isinstance(content, dict):
        raise NasPruneError(f"{path} holds a {type(content).__name__}, not a JSON object; {what}")
    return content


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return read_trials(path)
    except (ValueError, KeyError, pd.errors.ParserError) as err:
        raise NasPruneError(f"{path} is not a nas_prune trials table: {err}") from err


def _optional(value: Any, kind: type) -> Any:
    return None if value is None or pd.isna(value) else kind(value)


def _from_row(row: pd.Series, where: str, how: str) -> Architecture:
    """An :class:`Architecture` from a trials.csv / pareto.csv row."""
    return Architecture(
        trial_id=int(row["trial_id"]),
        widths=checked_widths(row["widths"], where),
        val_accuracy=_optional(row["val_accuracy"], float),
        flops=_optional(row["flops"], int),
        how=how,
        state=str(row["state"]),
        feasible=bool(row["feasible"]),
        source=str(row["source"]),
    )


def choose_architecture(
    run_dir: str | os.PathLike, rank: int | None = None, trial: int | None = None
) -> Architecture:
    """The architecture to retrain: ``rank`` K of the Pareto front or trial ``trial`` of trials.csv.

    Rank 0 (the default) is ``best_arch.json``, the most accurate feasible architecture. Rank K > 0 is
    the K-th row of ``pareto.csv`` sorted by validation accuracy (descending), then FLOPs, then
    trial_id. A trial must have been evaluated (``complete`` at the top rung, or ``stopped`` below it); an infeasible one
    is allowed with a warning.

    Raises:
        NasPruneError: both selectors, a missing or unreadable file, a rank out of range, an unknown
            or untrained trial.
    """
    run_dir = Path(run_dir)
    if rank is not None and trial is not None:
        raise NasPruneError("give either --rank or --trial, not both")
    if trial is not None:
        path = run_dir / "trials.csv"
        if not path.is_file():
            raise NasPruneError(f"{run_dir} has no trials.csv, so --trial {trial} cannot be looked up")
        trials = _read_table(path)
        rows = trials[trials["trial_id"] == int(trial)]
        if rows.empty:
            known = ", ".join(str(t) for t in sorted(trials["trial_id"].tolist())) or "none"
            raise NasPruneError(f"trial {trial} is not in {path} (trial ids: {known})")
        row = rows.iloc[0]
        if row["state"] not in ("complete", "stopped"):
            raise NasPruneError(
                f"trial {trial} is {row['state']} (never trained); pick a complete or stopped trial"
            )
        if not bool(row["feasible"]):
            warnings.warn(f"trial {trial} does not meet the run's budget (feasible=False)", stacklevel=2)
        return _from_row(row, f"trial {trial} in {path}", f"trial {trial}")

    rank = 0 if rank is None else int(rank)
    if rank < 0:
        raise NasPruneError(f"--rank must be >= 0, got {rank}")
    pareto_path = run_dir / "pareto.csv"
    front = None
    if pareto_path.is_file():
        front = _read_table(pareto_path).assign(_neg=lambda d: -d["val_accuracy"])
        front = front.sort_values(["_neg", "flops", "trial_id"], kind="mergesort").reset_index(drop=True)
    if rank == 0:
        path = run_dir / "best_arch.json"
        if not path.is_file():
            raise NasPruneError(
                f"{run_dir} has no best_arch.json (no complete feasible trial yet); use --trial ID"
            )
        best = _read_json(path, "it should be the search's best_arch.json")
        if "widths" not in best or "trial_id" not in best:
            raise NasPruneError(f"{path} is not a nas_prune best_arch.json (no 'widths' or 'trial_id')")
        arch = Architecture(
            trial_id=int(best["trial_id"]),
            widths=checked_widths(best["widths"], str(path)),
            val_accuracy=_optional(best.get("val_accuracy"), float),
            flops=_optional(best.get("flops"), int),
            how="rank 0 (best_arch.json)",
        )
        if front is not None and len(front) and int(front.at[0, "trial_id"]) != arch.trial_id:
            warnings.warn(
                f"best_arch.json names trial {arch.trial_id} but pareto.csv's most accurate row is trial "
                f"{int(front.at[0, 'trial_id'])}; using best_arch.json",
                stacklevel=2,
            )
        return arch
    if front is None:
        raise NasPruneError(f"{run_dir} has no pareto.csv, so --rank {rank} cannot be looked up")
    if rank >= len(front):
        raise NasPruneError(
            f"--rank {rank} is out of range: {pareto_path} has {len(front)} architectures (ranks 0..{len(front) - 1})"
        )
    row = front.iloc[rank]
    return _from_row(row, f"rank {rank} of {pareto_path}", f"rank {rank} (pareto.csv by accuracy)")


def output_name(init: str, trial_id: int, distill: bool = False, budget_matched: bool = False) -> str:
    """``<init>[-distill][-budget]-trial<ID>``, the folder under ``RUN_DIR/retrain/``."""
    return f"{init}{'-distill' if distill else ''}{'-budget' if budget_matched else ''}-trial{int(trial_id)}"


# ---------------------------------------------------------------------------------------------------
# The pruned-model file: model.pt
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Initialisation and distillation
# ---------------------------------------------------------------------------------------------------


def reinitialize(model: nn.Module, seed: int, zoo_init: bool = True) -> nn.Module:
    """Re-initialise every weight of ``model`` in place (from ``seed``) and reset BatchNorm statistics.

    Every module with ``reset_parameters`` is reset (PyTorch's default initialisation); with
    ``zoo_init`` the zoo's scheme is applied on top (Kaiming-normal convs, BN 1/0, small-normal linear),
    so a scratch-trained zoo model starts the way its dense model did.
    """
    seed_everything(seed)
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    if zoo_init:
        init_weights(model)
    return model


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, targets)``.

    Both distributions are softened by ``temperature``; the ``T^2`` factor keeps the soft term's
    gradients on the scale of the hard one (Hinton et al. 2015). The KL term is averaged over samples.
    """
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits.float(), targets)
    return alpha * t * t * soft + (1.0 - alpha) * hard


def distillation(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> Callable:
    """A ``loss_fn`` for :func:`nas_prune.train.train_one_epoch` that distils from ``teacher`` (eval
    mode, no gradients) with :func:`distillation_loss`."""
    teacher.eval()

    def loss_fn(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        return distillation_loss(logits, teacher_logits, y, temperature, alpha)

    return loss_fn


# ---------------------------------------------------------------------------------------------------
# The run directory and its dense model
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    run_dir: Path
    cfg: SearchConfig
    spec: dict[str, Any]
    dense: nn.Module
    dense_epochs: float
    epochs_from: str


def _open_run(run_dir: Path) -> _Run:
    """Config, dense checkpoint and dense model of a search run; every problem is a NasPruneError."""
    if not run_dir.is_dir():
        raise NasPruneError(f"run directory {run_dir} does not exist")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise NasPruneError(f"{run_dir} has no config.yaml, so it is not a nas_prune search run")
    try:
        cfg = load_config(config_path)
    except Exception as err:  # YAML errors, a missing "settings" key, unknown value types
        raise NasPruneError(
            f"{config_path} is not a readable nas_prune config ({type(err).__name__})"
        ) from err
    dense_path = run_dir / "dense.pt"
    if not dense_path.is_file():
        raise NasPruneError(f"{run_dir} has no dense.pt (the dense weights the search pruned)")
    ckpt = load_checkpoint(dense_path)
    spec = ckpt["spec"]
    dense = build_from_spec(spec)
    if not isinstance(spec.get("input_shape"), list):
        raise NasPruneError(f"{dense_path} has a spec without 'input_shape'")
    try:
        dense.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise NasPruneError(f"{dense_path} does not fit model {spec['model']!r}: {first}") from None
    epochs = ckpt.get("epochs")
    if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs > 0:
        return _Run(run_dir, cfg, spec, dense.eval(), float(epochs), "dense.pt")
    source = ckpt.get("copied_from")  # the search copies --checkpoint without its training record
    if isinstance(source, str) and Path(source).is_file():
        try:
            epochs = load_checkpoint(source).get("epochs")
        except Exception:  # any unreadable file: fall back to the config below
            epochs = None
        if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs > 0:
            return _Run(run_dir, cfg, spec, dense.eval(), float(epochs), source)
    return _Run(run_dir, cfg, spec, dense.eval(), float(cfg.pretrain_epochs), "config pretrain_epochs")


# ---------------------------------------------------------------------------------------------------
# retrain: the Python API
# ---------------------------------------------------------------------------------------------------


def _say_now(line: str) -> None:
    print(line, flush=True)


def _check_number(name: str, value: float | None, low: float, high: float = math.inf, closed: bool = False):
    if value is None:
        return
    ok = math.isfinite(value) and (low <= value if closed else low < value) and value <= high
    if not ok:
        span = f"in [{low:g}, {high:g}]" if high < math.inf else ("a number >= 0" if closed else "positive")
        raise NasPruneError(f"{name} must be {span}, got {value}")


def final_accuracy(
    model: nn.Module, data: DataSplits, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Validation and test accuracy: the test split's only use, once per model at the very end."""
    model = model.to(device).eval()
    val = evaluate(model, data.loader("val", batch_size, train=False, device=device), device=device)
    test = evaluate(model, data.loader("test", batch_size, train=False, device=device), device=device)
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": val["accuracy"]}


def _dense_accuracy(run: _Run, data: DataSplits, device: torch.device, batch_size: int) -> dict[str, float]:
    """The dense model's accuracy, measured once per dense.pt and kept in ``RUN_DIR/retrain/dense.json``."""
    stat = (run.run_dir / "dense.pt").stat()
    key = {"dense_pt_size": stat.st_size, "dense_pt_mtime_ns": stat.st_mtime_ns}
    cache = run.run_dir / "retrain" / "dense.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["accuracy"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    accuracy = final_accuracy(run.dense, data, device, batch_size)
    atomic_write_text(cache, json.dumps({"key": key, "accuracy": accuracy}, indent=2) + "\n")
    return accuracy


SPEEDUP_ROUNDS = 5
"""Rounds of dense-then-pruned timings behind every reported speed-up (see :func:`final_costs`)."""


def final_costs(
    dense: nn.Module,
    slim: nn.Module,
    counts: tuple[tuple[int, int], tuple[int, int]],
    example: torch.Tensor,
    device: torch.device,
    latency_fn: Callable[..., float],
    batch: int,
    large: int,
    rounds: int = SPEEDUP_ROUNDS,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """MACs, FLOPs, params and latency of the dense and the pruned model, and the speed-up.

    Both latencies come from one :func:`~nas_prune.cost.measure_speedup` per batch size: dense and
    pruned timed interleaved for ``rounds`` rounds, each model's latency the median of its rounds, the
    speed-up the median of the rounds' ratios with their range (``_low``/``_high``).

    Args:
        counts: ``(dense, slim)`` ``(macs, params)`` from :func:`count_macs`.
        latency_fn: ``fn(model, example, device=, batch=, **kw) -> ms``.
        batch, large: the two batch sizes (latency, throughput).

    Returns:
        ``(dense figures, slim figures, speed-up figures)``.
    """
    dense, slim = dense.to(device).eval(), slim.to(device).eval()
    example = example.to(device)
    small = measure_speedup(dense, slim, example, device, batch, rounds, latency_fn)
    big = measure_speedup(dense, slim, example, device, large, rounds, latency_fn, warmup=3, repeats=20)
    figures = []
    for (macs, params), ms, large_ms in zip(
        counts, (small.dense_ms, small.pruned_ms), (big.dense_ms, big.pruned_ms), strict=True
    ):
        figures.append(
            {
                "macs": int(macs),
                "flops": 2 * int(macs),
                "params": int(params),
                "latency_ms": ms,
                "latency_batch": int(batch),
                "latency_large_ms": large_ms,
                "latency_large_batch": int(large),
                "latency_device": device_label(device),
            }
        )
    speed = {
        "speedup": small.ratio,
        "speedup_low": small.low,
        "speedup_high": small.high,
        "speedup_large": big.ratio,
        "speedup_large_low": big.low,
        "speedup_large_high": big.high,
        "speedup_rounds": int(rounds),
    }
    return figures[0], figures[1], speed


def retrain(
    run_dir: str | os.PathLike,
    *,
    rank: int | None = None,
    trial: int | None = None,
    epochs: float | None = None,
    init: str = "scratch",
    budget_matched: bool = False,
    distill: bool = False,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float = 5e-4,
    latency_batch_large: int = 256,
    export: bool = True,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    quiet: bool = False,
    latency_fn: Callable[..., float] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Retrain one architecture of a search run and write model, export and metrics.

    Args:
        run_dir: a search run directory (config.yaml, dense.pt, trials.csv, pareto.csv, best_arch.json).
        rank, trial: which architecture (see :func:`choose_architecture`); default rank 0.
        epochs: training epochs (fractions allowed); default: the dense model's training epochs.
        init: ``"scratch"`` (re-initialise) or ``"inherit"`` (keep the dense filters, adapt BN, fine-tune).
        budget_matched: multiply the epochs by dense FLOPs / slim FLOPs (Scratch-B).
        distill: learn from the dense model too, with ``temperature`` and ``alpha``.
        seed: seed of initialisation and batch order (default: the run's seed).
        device: ``auto``, ``cpu`` or ``cuda`` for training and latency.
        batch_size, lr: defaults: the run's batch size; lr 0.1 (scratch) or 0.01 (inherit).
        latency_batch_large: the second latency batch (throughput); the first is the run's
            ``latency_batch``.
        export: write ``model.onnx`` (or ``model.pt2``) and check it against PyTorch.
        output: the output folder (default ``RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID>``).
        progress, quiet: per-batch progress bars; no printed lines at all.
        latency_fn: ``fn(model, example, device=, batch=, **kw) -> ms`` (default
            :func:`nas_prune.measure_latency`); tests inject a fake.
        on_epoch_end: ``fn(epoch_index, history_row)`` after every epoch's checkpoint.

    Returns:
        The content of ``metrics.json`` plus ``output`` (the folder). An already finished retrain with
        the same settings is not trained again: its metrics are returned.

    Raises:
        NasPruneError: bad arguments, or a run directory, architecture or data that cannot be used.
    """
    # 1. Cheap checks, the run, the architecture: every bad input fails here, before any training.
    if init not in INITS:
        raise NasPruneError(f"--init must be scratch or inherit, got {init!r}")
    _check_number("--epochs", epochs, 0.0)
    _check_number("--lr", lr, 0.0)
    _check_number("--weight-decay", weight_decay, 0.0, closed=True)
    _check_number("--temperature", temperature, 0.0)
    _check_number("--alpha", alpha, 0.0, 1.0, closed=True)
    for name, value in (("--batch-size", batch_size), ("--latency-batch-large", latency_batch_large)):
        if value is not None and int(value) < 1:
            raise NasPruneError(f"{name} must be at least 1, got {value}")
    run_dir = Path(run_dir)
    run = _open_run(run_dir)
    arch = choose_architecture(run_dir, rank=rank, trial=trial)
    cfg = run.cfg
    torch_device = resolve_device(device)
    latency_fn = latency_fn or measure_latency
    example = torch.zeros(2, *run.spec["input_shape"])
    slim = prune(run.dense, example, arch.widths, cfg.importance)  # unknown group -> NasPruneError
    dense_counts, slim_counts = count_macs(run.dense, example), count_macs(slim, example)
    flops_ratio = slim_counts[0] / dense_counts[0]

    base_epochs = float(epochs) if epochs is not None else run.dense_epochs
    settings = {
        "trial_id": arch.trial_id,
        "widths": dict(arch.widths),
        "init": init,
        "distill": bool(distill),
        "temperature": float(temperature) if distill else None,
        "alpha": float(alpha) if distill else None,
        "budget_matched": bool(budget_matched),
        "epochs": base_epochs / flops_ratio if budget_matched else base_epochs,
        "base_epochs": base_epochs,
        "seed": int(cfg.seed if seed is None else seed),
        "lr": float(lr if lr is not None else DEFAULT_LR[init]),
        "batch_size": int(batch_size or cfg.batch_size),
        "weight_decay": float(weight_decay),
        "importance": str(cfg.importance),
    }
    name = output_name(init, arch.trial_id, distill, budget_matched)
    out = Path(output) if output is not None else run_dir / "retrain" / name
    say = (lambda *a, **k: None) if quiet else print

    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        done = _read_json(metrics_path, "delete the folder to retrain")
        if done.get("settings") != settings:
            raise NasPruneError(settings_mismatch(out, "a retrain", done.get("settings"), settings, _REMEDY))
        say(f"{out} is already retrained with these settings; not training again (delete it to redo).")
        write_summary(run_dir / "retrain")
        _print_table(done, out, run_dir / "retrain", say)
        return {**done, "output": str(out)}

    if (out / CHECKPOINT).is_file():  # an interrupted retrain: continue it only with the same settings
        previous = load_checkpoint(out / CHECKPOINT).get("settings")
        if previous != settings:
            raise NasPruneError(settings_mismatch(out, "a retrain", previous, settings, _REMEDY))

    say(
        f"Retraining {arch.how}: trial {arch.trial_id}, {flops_ratio:.3f} of the dense FLOPs, "
        f"init {init}{', distilled' if distill else ''}, {settings['epochs']:g} epochs"
        f"{f' (= {base_epochs:g} / {flops_ratio:.3f}, budget-matched)' if budget_matched else ''}"
        f"{f' (the dense model trained {base_epochs:g}, from {run.epochs_from})' if epochs is None else ''}, "
        f"lr {settings['lr']:g}, seed {settings['seed']}, device {torch_device}"
    )

    # 2. Data, initial weights, training (resumable).
    data = load_dataset(cfg.dataset, cfg.data_dir, seed=0, subset=cfg.subset)
    if list(data.input_shape) != list(run.spec["input_shape"]):
        raise NasPruneError(
            f"dataset {cfg.dataset} gives inputs {data.input_shape}, but dense.pt expects {run.spec['input_shape']}"
        )
    slim = slim.to(torch_device)
    ensure_output_dir(out)
    if not (out / CHECKPOINT).is_file():
        if init == "scratch":
            reinitialize(slim, settings["seed"], zoo_init=run.spec["model"] in MODELS)
        else:
            bn_loader = data.loader(
                "train", settings["batch_size"], train=True, seed=settings["seed"], device=torch_device
            )
            adapt_batchnorm(slim, bn_loader, BN_BATCHES, torch_device)
    loss_fn = distillation(run.dense.to(torch_device), temperature, alpha) if distill else None
    resumed_from = resumed_epochs(out / CHECKPOINT)
    if resumed_from:
        say(
            f"Resuming {out.name} after {resumed_from:g} of {settings['epochs']:g} epochs (from {out / CHECKPOINT})"
        )
    start = time.perf_counter()
    try:
        history = fit(
            slim, data, epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
            weight_decay=settings["weight_decay"], device=torch_device, seed=settings["seed"], progress=progress,
            on_epoch_end=epoch_reporter(None if quiet else _say_now, settings["epochs"], on_epoch_end),
            loss_fn=loss_fn, checkpoint=Checkpointing(out / CHECKPOINT, settings, run.spec),
        )  # fmt: skip
    except KeyboardInterrupt:
        if (out / CHECKPOINT).is_file() and not quiet:
            print(
                f"Interrupted: rerun the same command to continue from the last finished epoch "
                f"({out / CHECKPOINT}).",
                file=sys.stderr,
            )
        raise
    train_seconds = sum(row["train_seconds"] for row in history)

    # 3. Final figures (the only use of the test split), model.pt, export, metrics.json, summary.
    say("Measuring test accuracy and latency of the dense and the retrained model ...")
    large = int(latency_batch_large)
    dense_costs, slim_costs, speed = final_costs(
        run.dense,
        slim,
        (dense_counts, slim_counts),
        example,
        torch_device,
        latency_fn,
        cfg.latency_batch,
        large,
    )
    dense_fig = {**_dense_accuracy(run, data, torch_device, settings["batch_size"]), **dense_costs}
    slim_fig = {**final_accuracy(slim, data, torch_device, settings["batch_size"]), **slim_costs}
    slim = slim.cpu().eval()
    save_pruned(out / "model.pt", slim, arch.widths, run.spec, cfg.importance)
    exported: dict[str, Any] = {
        "export": None,
        "export_format": None,
        "export_max_abs_diff": None,
        "export_verified": None,
        "export_error": None,
    }
    if export:
        say("Exporting ...")
        exported = export_model(slim, example, out)
        if exported["export"] is None:
            warnings.warn(f"export failed: {exported['export_error']}", stacklevel=2)
        elif exported["export_verified"] is False:
            warnings.warn(
                f"the export differs from PyTorch by {exported['export_max_abs_diff']:.2e}", stacklevel=2
            )
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "name": out.name,
        **slim_fig,
        "epochs": settings["epochs"],
        "init": init,
        "seed": settings["seed"],
        "trial_id": arch.trial_id,
        "widths": dict(arch.widths),
        "distill": bool(distill),
        "temperature": settings["temperature"],
        "alpha": settings["alpha"],
        "budget_matched": bool(budget_matched),
        "flops_ratio": slim_fig["flops"] / dense_fig["flops"],
        "params_ratio": slim_fig["params"] / dense_fig["params"],
        **speed,
        "lr": settings["lr"],
        "batch_size": settings["batch_size"],
        "importance": settings["importance"],
        "model": run.spec["model"],
        "dataset": cfg.dataset,
        "architecture": {
            "how": arch.how,
            "search_val_accuracy": arch.val_accuracy,
            "state": arch.state,
            "feasible": arch.feasible,
            "source": arch.source,
        },
        "model_file": "model.pt",
        **exported,
        "train_seconds": train_seconds,
        "wall_s": time.perf_counter() - start,
        "resumed_from_epoch": resumed_from,
        "history": history,
        "dense": {**dense_fig, "epochs": run.dense_epochs, "init": "dense", "seed": cfg.seed},
        "settings": settings,
    }
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    (out / CHECKPOINT).unlink(missing_ok=True)
    write_summary(run_dir / "retrain")
    _print_table(metrics, out, run_dir / "retrain", say)
    return {**metrics, "output": str(out)}


def _print_table(metrics: Mapping[str, Any], out: Path, summary: Path, say: Callable[..., None]) -> None:
    dense = metrics["dense"]
    b, big = metrics["latency_batch"], metrics["latency_large_batch"]
    header = (
        f"{'':<28} {'test acc':>8} {'MMACs':>9} {'params':>10} {f'ms (b={b})':>11} {'speed-up':>8} "
        f"{f'ms (b={big})':>12} {'speed-up':>8}"
    )
    say(header)
    for label, m, up, up_large in (
        ("dense", dense, 1.0, 1.0),
        (metrics["name"], metrics, metrics["speedup"], metrics["speedup_large"]),
    ):
        say(
            f"{label:<28} {m['test_accuracy']:>8.4f} {m['macs'] / 1e6:>9.2f} {m['params']:>10,} "
            f"{m['latency_ms']:>11.3f} {up:>7.2f}x {m['latency_large_ms']:>12.2f} {up_large:>7.2f}x"
        )
    say(
        f"speed-ups: median of {metrics['speedup_rounds']} rounds timing dense and pruned back to back; "
        f"range {metrics['speedup_low']:.2f}-{metrics['speedup_high']:.2f}x (b={b}), "
        f"{metrics['speedup_large_low']:.2f}-{metrics['speedup_large_high']:.2f}x (b={big})"
    )
    files = ["model.pt", "metrics.json"] + ([metrics["export"]] if metrics.get("export") else [])
    say(f"files: {out}/ ({', '.join(files)}); summary: {summary / 'summary.csv'}, summary.png")


# ---------------------------------------------------------------------------------------------------
# Summary of every retrained variant
# ---------------------------------------------------------------------------------------------------


def _summary_row(name: str, m: Mapping[str, Any], dense: Mapping[str, Any]) -> dict[str, Any]:
    """One variant's row; its speed-up is against the dense latency timed in the same rounds."""
    speedup = m.get("speedup", dense["latency_ms"] / m["latency_ms"])  # older files: one timing each
    speedup_large = m.get("speedup_large", dense["latency_large_ms"] / m["latency_large_ms"])
    return {
        "name": name,
        "trial_id": m.get("trial_id"),
        "init": m.get("init"),
        "distill": m.get("distill"),
        "budget_matched": m.get("budget_matched"),
        "seed": m.get("seed"),
        "epochs": m.get("epochs"),
        "test_accuracy": m.get("test_accuracy"),
        "val_accuracy": m.get("val_accuracy"),
        "macs": m.get("macs"),
        "flops": m.get("flops"),
        "params": m.get("params"),
        "latency_ms": m.get("latency_ms"),
        "latency_large_ms": m.get("latency_large_ms"),
        "speedup": speedup,
        "speedup_large": speedup_large,
        "dense_latency_ms": dense["latency_ms"],
        "dense_latency_large_ms": dense["latency_large_ms"],
        "speedup_low": m.get("speedup_low", speedup),
        "speedup_high": m.get("speedup_high", speedup),
        "speedup_large_low": m.get("speedup_large_low", speedup_large),
        "speedup_large_high": m.get("speedup_large_high", speedup_large),
    }


def _dense_row(found: list[tuple[float, str, dict, dict]]) -> dict[str, Any]:
    """The dense model's row: its own epochs (from its checkpoint, via the newest metrics.json) and the
    median of the dense latencies timed alongside each variant (each variant's speed-up uses its own)."""
    newest = max(found, key=lambda f: f[0])[3]
    dense = {
        **newest,
        "init": "dense",
        "distill": False,
        "budget_matched": False,
        "latency_ms": float(np.median([d["latency_ms"] for *_, d in found])),
        "latency_large_ms": float(np.median([d["latency_large_ms"] for *_, d in found])),
    }
    dense.update(dict.fromkeys(["speedup", "speedup_large", "speedup_low", "speedup_high"], 1.0))
    dense.update(dict.fromkeys(["speedup_large_low", "speedup_large_high"], 1.0))
    return _summary_row("dense", dense, dense)


def write_summary(retrain_dir: str | os.PathLike) -> pd.DataFrame:
    """Write ``summary.csv`` and ``summary.png`` for every ``retrain_dir/*/metrics.json``.

    One row for the dense model (see :func:`_dense_row`), then one per variant sorted by name. Each
    variant's speed-up is the median ratio of its own dense and pruned latencies timed interleaved in the
    same rounds (``speedup_low``/``_high``: the range over rounds), so speed-ups stay comparable when
    machine load drifts between retrains; ``dense_latency_ms`` is the dense latency of those rounds.

    Returns:
        The summary table (:data:`SUMMARY_COLUMNS`).
    """
    retrain_dir = Path(retrain_dir)
    found = []
    for path in sorted(retrain_dir.glob("*/metrics.json")):
        try:
            m = json.loads(path.read_text())
            _summary_row(path.parent.name, m, m["dense"])  # every figure the table needs is there
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as err:
            warnings.warn(f"skipping {path} in the summary ({type(err).__name__}: {err})", stacklevel=2)
            continue
        found.append((path.stat().st_mtime, path.parent.name, m, m["dense"]))
    rows = []
    if found:
        rows.append(_dense_row(found))
        rows.extend(_summary_row(name, m, d) for _, name, m, d in found)
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({"trial_id": "Int64", "seed": "Int64"})
    atomic_write_text(retrain_dir / "summary.csv", table.to_csv(index=False))
    _plot_summary(table, retrain_dir / "summary.png")
    return table


def _plot_summary(table: pd.DataFrame, path: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing left open

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.margins(x=0.15, y=0.2)  # room for the labels
    if table.empty:
        ax.text(0.5, 0.5, "no retrained model yet", transform=ax.transAxes, ha="center", va="center")
    colors = {"dense": "black", "scratch": "C0", "inherit": "C1"}
    seen: dict[float, int] = {}  # variants of one architecture share their MACs: alternate label sides
    for _, row in table.iterrows():
        dense = row["name"] == "dense"
        nth = seen[row["macs"]] = seen.get(row["macs"], -1) + 1
        marker = (
            "*" if dense else ("^" if bool(row["distill"]) else ("s" if bool(row["budget_matched"]) else "o"))
        )
        ax.scatter(
            row["macs"] / 1e6,
            row["test_accuracy"],
            s=160 if dense else 60,
            marker=marker,
            color=colors.get(str(row["init"]), "C2"),
            edgecolor="black",
            linewidth=0.5,
            zorder=3,
        )
        note = row["name"] if dense else f"{row['name']}\n{row['speedup']:.2f}x faster"
        ax.annotate(note, (row["macs"] / 1e6, row["test_accuracy"]), textcoords="offset points",
                    xytext=(-6 if nth % 2 else 6, 4), ha="right" if nth % 2 else "left", fontsize=7)  # fmt: skip
    ax.set_xlabel("MMACs per sample")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    legend = [("dense", "black", "*"), ("scratch", "C0", "o"), ("inherit (fine-tune)", "C1", "o"),
              ("distilled", "white", "^"), ("budget-matched", "white", "s")]  # fmt: skip
    for label, color, marker in legend:
        ax.scatter([], [], marker=marker, color=color, edgecolor="black", linewidth=0.5, label=label)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(
        "Retrained architectures: test accuracy vs MACs\n(speed-up = dense latency / latency, "
        "measured back to back)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, format="png")
    fig.clear()
    return path


# ---------------------------------------------------------------------------------------------------
# CLI: python -m nas_prune.retrain RUN_DIR
# ---------------------------------------------------------------------------------------------------


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nas_prune.retrain",
        description="Retrain an architecture found by a search (from scratch or from the inherited "
        "weights, optionally distilled from the dense model), export it and compare it with the dense "
        "model. Writes RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID>/ (metrics.json, model.pt, "
        "model.onnx) and RUN_DIR/retrain/summary.csv + summary.png. Rerun the same command to continue "
        "an interrupted retrain.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a search run directory (results/<run>)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--rank",
        type=int,
        default=None,
        help="K-th most accurate architecture of pareto.csv (ties: fewer FLOPs, then lower trial_id); "
        "0 = best_arch.json (default: 0)",
    )
    which.add_argument("--trial", type=int, default=None, help="retrain this trial_id of trials.csv instead")
    parser.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="training epochs, fractions allowed (default: as many as the dense model was trained, "
        "from dense.pt or the run's --pretrain-epochs)",
    )
    parser.add_argument(
        "--init",
        choices=INITS,
        default="scratch",
        help="scratch: re-initialise the weights (fixed seed) and train; inherit: keep the dense model's "
        "kept filters, re-estimate BatchNorm statistics and fine-tune (default: scratch)",
    )
    parser.add_argument(
        "--budget-matched",
        action="store_true",
        help="multiply the epochs by dense FLOPs / pruned FLOPs, so training costs what the dense "
        "model's did (Scratch-B of Liu et al. 2019)",
    )
    parser.add_argument(
        "--distill",
        action="store_true",
        help="knowledge distillation from the dense model: alpha * T^2 * KL(teacher || student) + "
        "(1 - alpha) * cross-entropy",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="distillation temperature T (with --distill; default: 4)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="weight of the distillation term, in [0, 1] (with --distill; default: 0.9)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of initialisation and batch order (default: the run's seed)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu or cuda, for training and latency (default: auto)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch size (default: the run's batch size)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak SGD learning rate, cosine decay to 0 (default: 0.1 with scratch, 0.01 with inherit)",
    )
    parser.add_argument(
        "--weight-decay", type=float, default=5e-4, help="weight decay on conv/linear weights (default: 5e-4)"
    )
    parser.add_argument(
        "--latency-batch-large",
        type=int,
        default=256,
        help="batch of the second (throughput) latency measurement; the first uses the run's "
        "--latency-batch (default: 256)",
    )
    parser.add_argument(
        "--no-export", action="store_true", help="skip the ONNX (or torch.export .pt2) export and its check"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="write here instead of RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID> (e.g. for "
        "another --seed; only folders directly inside RUN_DIR/retrain/ appear in its summary)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the per-batch progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nas_prune.retrain RUN_DIR``: retrain, export and report one architecture."""
    args = _parser().parse_args(argv)
    if not args.distill and (args.temperature is not None or args.alpha is not None):
        raise NasPruneError("--temperature and --alpha only apply with --distill")
    with warnings.catch_warnings():
        warnings.showwarning = _warn_line  # one line per warning, no source line
        retrain(
            args.run_dir,
            rank=args.rank,
            trial=args.trial,
            epochs=args.epochs,
            init=args.init,
            budget_matched=args.budget_matched,
            distill=args.distill,
            temperature=4.0 if args.temperature is None else args.temperature,
            alpha=0.9 if args.alpha is None else args.alpha,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            latency_batch_large=args.latency_batch_large,
            export=not args.no_export,
            output=args.output,
            progress=not args.no_progress,
        )


def _warn_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_cli(main))
