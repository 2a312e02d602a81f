"""Retrain one architecture of a search run: :func:`retrain`, the Python API of ``python -m nas_prune.retrain``.

Steps: open the run (config.yaml, dense.pt), choose the architecture, prune the dense model to it,
start it (re-initialised or inherited with adapted BatchNorm), train it with :func:`nas_prune.train.fit`
(resumable from ``checkpoint.pt``), and report it (:mod:`nas_prune.final`): ``model.pt``, the export,
``metrics.json`` and the summary of every variant.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint, save_pruned, settings_mismatch
from ..cli import ensure_output_dir
from ..config import SearchConfig, load_config
from ..cost import count_macs, measure_latency
from ..data import DataSplits, load_dataset
from ..errors import NasPruneError
from ..export import export_model
from ..final import cached_accuracy, final_figures, metrics_record, write_metrics
from ..models import MODELS, build_from_spec
from ..objective import adapt_batchnorm
from ..prune import prune
from ..train import Checkpointing, epoch_reporter, fit, resolve_device, resumed_epochs
from .choose import Architecture, choose_architecture, output_name, read_json
from .config import DEFAULT_LR, RetrainConfig
from .summary import print_comparison, write_summary
from .weights import distillation, reinitialize

__all__ = ["retrain"]

BN_BATCHES = 20  # batches of adaptive BN before fine-tuning inherited weights (as in the search)
CHECKPOINT = "checkpoint.pt"
_REMEDY = "delete it or pass --output DIR"
_NO_EXPORT = dict.fromkeys(
    ["export", "export_format", "export_max_abs_diff", "export_verified", "export_error"]
)


@dataclass
class _Run:
    """A search run: its settings, the dense model it pruned and how many epochs that model trained."""

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


@dataclass
class _Job:
    """One retrain: the run, the architecture and its pruned model, the settings a rerun must match."""

    run: _Run
    arch: Architecture
    cfg: RetrainConfig
    slim: nn.Module
    settings: dict[str, Any]
    flops_ratio: float
    out: Path
    device: torch.device
    example: torch.Tensor
    say: Callable[..., None]


def retrain(
    run_dir: str | os.PathLike,
    config: RetrainConfig | None = None,
    *,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    quiet: bool = False,
    latency_fn: Callable[..., float] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Retrain one architecture of a search run and write model, export and metrics.

    Args:
        run_dir: a search run directory (config.yaml, dense.pt, trials.csv, pareto.csv, best_arch.json).
        config: the settings (:class:`RetrainConfig`, default all defaults); ``overrides`` replace
            fields of it, e.g. ``retrain(run_dir, trial=3, init="inherit")``.
        output: the output folder (default ``RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID>``).
        progress, quiet: per-batch progress bars; no printed lines at all.
        latency_fn: ``fn(model, example, device=, batch=, **kw) -> ms`` (default
            :func:`nas_prune.measure_latency`); tests inject a fake.
        on_epoch_end: ``fn(epoch_index, history_row)`` after every epoch's checkpoint.

    Returns:
        The content of ``metrics.json`` plus ``output`` (the folder). An already finished retrain with
        the same settings is not trained again: its metrics are returned.

    Raises:
        NasPruneError: bad settings, or a run directory, architecture or data that cannot be used.
    """
    job = _plan(Path(run_dir), (config or RetrainConfig()).replace(**overrides).validate(), output, quiet)
    done = _finished(job)
    if done is not None:
        return done
    data = load_dataset(job.run.cfg.dataset, job.run.cfg.data_dir, seed=0, subset=job.run.cfg.subset)
    if list(data.input_shape) != list(job.run.spec["input_shape"]):
        raise NasPruneError(
            f"dataset {job.run.cfg.dataset} gives inputs {data.input_shape}, but dense.pt expects "
            f"{job.run.spec['input_shape']}"
        )
    ensure_output_dir(job.out)
    start = time.perf_counter()
    resumed_from = resumed_epochs(job.out / CHECKPOINT)
    history = _start_and_fit(job, data, progress, quiet, on_epoch_end, resumed_from)
    extra = {
        "train_seconds": sum(row["train_seconds"] for row in history),
        "resumed_from_epoch": resumed_from,
        "history": history,
    }
    return _report(job, data, latency_fn or measure_latency, start, extra)


def _plan(run_dir: Path, cfg: RetrainConfig, output: str | os.PathLike | None, quiet: bool) -> _Job:
    """The run, the architecture, its pruned model and the settings; every bad input fails here."""
    run = _open_run(run_dir)
    arch = choose_architecture(run_dir, rank=cfg.rank, trial=cfg.trial)
    example = torch.zeros(2, *run.spec["input_shape"])
    slim = prune(run.dense, example, arch.widths, run.cfg.importance)  # unknown group -> NasPruneError
    flops_ratio = count_macs(slim, example)[0] / count_macs(run.dense, example)[0]
    base_epochs = float(cfg.epochs) if cfg.epochs is not None else run.dense_epochs
    settings = {
        "trial_id": arch.trial_id,
        "widths": dict(arch.widths),
        "init": cfg.init,
        "distill": bool(cfg.distill),
        "temperature": float(cfg.temperature) if cfg.distill else None,
        "alpha": float(cfg.alpha) if cfg.distill else None,
        "budget_matched": bool(cfg.budget_matched),
        "epochs": base_epochs / flops_ratio if cfg.budget_matched else base_epochs,
        "base_epochs": base_epochs,
        "seed": int(run.cfg.seed if cfg.seed is None else cfg.seed),
        "lr": float(cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.init]),
        "batch_size": int(cfg.batch_size or run.cfg.batch_size),
        "weight_decay": float(cfg.weight_decay),
        "importance": str(run.cfg.importance),
    }
    name = output_name(cfg.init, arch.trial_id, cfg.distill, cfg.budget_matched)
    out = Path(output) if output is not None else run_dir / "retrain" / name
    say = (lambda *a, **k: None) if quiet else print
    device = resolve_device(cfg.device)
    return _Job(run, arch, cfg, slim, settings, flops_ratio, out, device, example, say)


def _finished(job: _Job) -> dict[str, Any] | None:
    """The metrics of a finished retrain with these settings (reported again), else None; an
    unfinished or finished one with other settings is an error."""
    out, settings = job.out, job.settings
    if (out / "metrics.json").is_file():
        done = read_json(out / "metrics.json", "delete the folder to retrain")
        if done.get("settings") != settings:
            raise NasPruneError(settings_mismatch(out, "a retrain", done.get("settings"), settings, _REMEDY))
        job.say(f"{out} is already retrained with these settings; not training again (delete it to redo).")
        write_summary(job.run.run_dir / "retrain")
        print_comparison(done, out, job.run.run_dir / "retrain", job.say)
        return {**done, "output": str(out)}
    if (out / CHECKPOINT).is_file():  # an interrupted retrain: continue it only with the same settings
        previous = load_checkpoint(out / CHECKPOINT).get("settings")
        if previous != settings:
            raise NasPruneError(settings_mismatch(out, "a retrain", previous, settings, _REMEDY))
    return None


def _start_and_fit(
    job: _Job,
    data: DataSplits,
    progress: bool,
    quiet: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], Any] | None,
    resumed_from: float,
) -> list[dict[str, Any]]:
    """Start the pruned model (re-initialised or inherited) and train it, resumably."""
    cfg, s, run, device = job.cfg, job.settings, job.run, job.device
    ratio, base = f"{job.flops_ratio:.3f}", s["base_epochs"]
    job.say(
        f"Retraining {job.arch.how}: trial {job.arch.trial_id}, {ratio} of the dense FLOPs, "
        f"init {cfg.init}{', distilled' if cfg.distill else ''}, {s['epochs']:g} epochs"
        f"{f' (= {base:g} / {ratio}, budget-matched)' if cfg.budget_matched else ''}"
        f"{f' (the dense model trained {base:g}, from {run.epochs_from})' if cfg.epochs is None else ''}, "
        f"lr {s['lr']:g}, seed {s['seed']}, device {device}"
    )
    slim = job.slim.to(device)
    if resumed_from:
        job.say(
            f"Resuming {job.out.name} after {resumed_from:g} of {s['epochs']:g} epochs (from {job.out / CHECKPOINT})"
        )
    elif cfg.init == "scratch":
        reinitialize(slim, s["seed"], zoo_init=run.spec["model"] in MODELS)
    else:
        bn_loader = data.loader("train", s["batch_size"], train=True, seed=s["seed"], device=device)
        adapt_batchnorm(slim, bn_loader, BN_BATCHES, device)
    loss_fn = distillation(run.dense.to(device), s["temperature"], s["alpha"]) if cfg.distill else None
    try:
        return fit(
            slim, data, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
            weight_decay=s["weight_decay"], device=device, seed=s["seed"], progress=progress,
            on_epoch_end=epoch_reporter(None if quiet else _say_now, s["epochs"], on_epoch_end),
            loss_fn=loss_fn, checkpoint=Checkpointing(job.out / CHECKPOINT, s, run.spec),
        )  # fmt: skip
    except KeyboardInterrupt:
        if (job.out / CHECKPOINT).is_file() and not quiet:
            print(
                f"Interrupted: rerun the same command to continue from the last finished epoch "
                f"({job.out / CHECKPOINT}).",
                file=sys.stderr,
            )
        raise


def _report(
    job: _Job, data: DataSplits, latency_fn: Callable[..., float], start: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """Final figures (the only use of the test split), model.pt, export, metrics.json, summary."""
    run, arch, s, out = job.run, job.arch, job.settings, job.out
    job.say("Measuring test accuracy and latency of the dense and the retrained model ...")
    dense_accuracy = cached_accuracy(
        run.dense,
        data,
        job.device,
        s["batch_size"],
        run.run_dir / "dense.pt",
        run.run_dir / "retrain" / "dense.json",
    )
    figures = final_figures(
        run.dense, job.slim, data, job.example, job.device, latency_fn, run.cfg.latency_batch,
        int(job.cfg.latency_batch_large), s["batch_size"], dense_accuracy,
    )  # fmt: skip
    slim = job.slim.cpu().eval()
    save_pruned(out / "model.pt", slim, arch.widths, run.spec, run.cfg.importance)
    exported = _export(slim, job) if job.cfg.export else dict(_NO_EXPORT)
    choice = {"trial_id": arch.trial_id, "widths": dict(arch.widths), "distill": bool(job.cfg.distill),
              "temperature": s["temperature"], "alpha": s["alpha"], "budget_matched": bool(job.cfg.budget_matched)}  # fmt: skip
    architecture = {"how": arch.how, "search_val_accuracy": arch.val_accuracy, "state": arch.state,
                    "feasible": arch.feasible, "source": arch.source}  # fmt: skip
    rest = {"lr": s["lr"], "batch_size": s["batch_size"], "importance": s["importance"],
            "model": run.spec["model"], "dataset": run.cfg.dataset, "architecture": architecture,
            "model_file": "model.pt", **exported, "train_seconds": extra["train_seconds"],
            "wall_s": time.perf_counter() - start, "resumed_from_epoch": extra["resumed_from_epoch"],
            "history": extra["history"]}  # fmt: skip
    metrics = metrics_record(
        out.name, figures, epochs=s["epochs"], init=job.cfg.init, seed=s["seed"], dense_epochs=run.dense_epochs,
        dense_seed=run.cfg.seed, choice=choice, rest=rest, settings=s,
    )  # fmt: skip
    write_metrics(out / "metrics.json", metrics)
    (out / CHECKPOINT).unlink(missing_ok=True)
    write_summary(run.run_dir / "retrain")
    print_comparison(metrics, out, run.run_dir / "retrain", job.say)
    return {**metrics, "output": str(out)}


def _export(slim: nn.Module, job: _Job) -> dict[str, Any]:
    """``model.onnx`` (or ``model.pt2``) checked against PyTorch; a failure is a warning, not an error."""
    job.say("Exporting ...")
    exported = export_model(slim, job.example, job.out)
    if exported["export"] is None:
        warnings.warn(f"export failed: {exported['export_error']}", stacklevel=3)
    elif exported["export_verified"] is False:
        warnings.warn(
            f"the export differs from PyTorch by {exported['export_max_abs_diff']:.2e}", stacklevel=3
        )
    return exported


def _say_now(line: str) -> None:
    print(line, flush=True)
