"""Retrain one architecture of a search run: :func:`retrain`, the Python API of ``python -m nas_prune.retrain``.

Steps: open the run (config.yaml, dense.pt), choose the architecture, prune the dense model to it,
start it (re-initialised or inherited with adapted BatchNorm), train it with :func:`nas_prune.train.fit`
(resumable from ``checkpoint.pt``), and report it (:mod:`nas_prune.final`): ``model.pt``, the export,
``metrics.json`` and the summary of every variant.
"""

from __future__ import annotations

import copy
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
from ..config import SearchConfig, load_config, read_config_extras
from ..cost import count_macs, measure_latency
from ..errors import NasPruneError
from ..export import export_model
from ..final import cached_accuracy, final_figures, metrics_record, write_metrics
from ..models import MODELS, build_from_spec
from ..objective import adapt_batchnorm
from ..prune import prune
from ..supernet import load_supernet
from ..task import Task, data_label, model_spec_for, resolve_task
from ..train import Checkpointing, epoch_reporter, fit, resolve_device, resumed_epochs
from .choose import Architecture, choose_architecture, output_name, read_json
from .config import DEFAULT_LR, RetrainConfig
from .summary import print_comparison, write_summary
from .weights import reinitialize

__all__ = ["RetrainJob", "finished_job", "plan_job", "previous_metrics", "report_job", "retrain", "train_job"]

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
    given: dict[str, str]


def _dense_skeleton(run_dir: Path, spec: dict[str, Any], model: nn.Module | None) -> nn.Module:
    """A fresh dense model of the run: a copy of the ``model`` object for a run whose model was given
    as an object (which must be passed again), else rebuilt from the spec."""
    if spec.get("given") == "object":
        if model is None:
            raise NasPruneError(
                f"{run_dir} searched a model given as a Python object ({spec['model']}); retrain it from Python "
                "with nas_prune.retrain(run_dir, model=<the same model>, task=...)"
            )
        return copy.deepcopy(model)
    return build_from_spec(spec)


def _open_run(run_dir: Path, model: nn.Module | None = None) -> _Run:
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
    dense = _dense_skeleton(run_dir, spec, model)
    given = read_config_extras(config_path).get("given") or {}
    if not isinstance(spec.get("input_shape"), list) and spec.get("example_inputs") is None:
        raise NasPruneError(f"{dense_path} has a spec without 'input_shape' or 'example_inputs'")
    try:
        dense.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise NasPruneError(f"{dense_path} does not fit model {spec['model']!r}: {first}") from None
    epochs = ckpt.get("epochs")
    if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs > 0:
        return _Run(run_dir, cfg, spec, dense.eval(), float(epochs), "dense.pt", given)
    source = ckpt.get("copied_from")  # the search copies --checkpoint without its training record
    if isinstance(source, str) and Path(source).is_file():
        try:
            epochs = load_checkpoint(source).get("epochs")
        except Exception:  # any unreadable file: fall back to the config below
            epochs = None
        if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs > 0:
            return _Run(run_dir, cfg, spec, dense.eval(), float(epochs), source, given)
    return _Run(run_dir, cfg, spec, dense.eval(), float(cfg.pretrain_epochs), "config pretrain_epochs", given)


# ---------------------------------------------------------------------------------------------------
# retrain: the Python API
# ---------------------------------------------------------------------------------------------------


@dataclass
class RetrainJob:
    """One retrain: the run, the architecture and its pruned model, the settings a rerun must match."""

    run: _Run
    arch: Architecture
    cfg: RetrainConfig
    task: Task
    slim: nn.Module
    settings: dict[str, Any]
    flops_ratio: float
    out: Path
    device: torch.device
    example: Any
    say: Callable[..., None]
    inherit_from: str | None = None


def retrain(
    run_dir: str | os.PathLike,
    config: RetrainConfig | None = None,
    *,
    model: nn.Module | None = None,
    task: Task | str | None = None,
    output: str | os.PathLike | None = None,
    progress: bool = True,
    quiet: bool = False,
    latency_fn: Callable[..., float] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Retrain one architecture of a search run (or, with ``top=K``, its K best as Ray Tune trials) and
    write model, export and metrics.

    Args:
        run_dir: a search run directory (config.yaml, dense.pt, trials.csv, pareto.csv, best_arch.json).
        config: the settings (:class:`RetrainConfig`, default all defaults); ``overrides`` replace
            fields of it, e.g. ``retrain(run_dir, trial=3, init="inherit")``.
        model: the model object the search was given (needed when it searched one; its weights are
            not used: the run's dense.pt is).
        task: the task to train and score with: a :class:`~nas_prune.task.Task` (needed when the
            search was given one as an object) or ``"pkg.module:factory"``; default: the run's.
        output: the output folder (default ``RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID>``).
        progress, quiet: per-batch progress bars; no printed lines at all.
        latency_fn: ``fn(model, example, device=, batch=, **kw) -> ms`` (default
            :func:`nas_prune.measure_latency`); tests inject a fake.
        on_epoch_end: ``fn(epoch_index, history_row)`` after every epoch's checkpoint.

    Returns:
        The content of ``metrics.json`` plus ``output`` (the folder). An already finished retrain with
        the same settings is not trained again: its metrics are returned. With ``top=K``: the picked
        finalist's, plus ``finalists`` (every finished finalist's name, trial, validation and test
        score) and ``top`` (the path of ``top.json``); see :func:`nas_prune.retrain.tune.retrain_top`.

    Raises:
        NasPruneError: bad settings, or a run directory, architecture or data that cannot be used.
    """
    cfg = (config or RetrainConfig()).replace(**overrides).validate()
    if cfg.top is not None:
        if output is not None or on_epoch_end is not None:
            raise NasPruneError("--output (and on_epoch_end) do not apply with --top K")
        from .tune import retrain_top  # Ray is imported only there

        return retrain_top(run_dir, cfg, model=model, task=task, quiet=quiet, latency_fn=latency_fn)
    job = plan_job(Path(run_dir), cfg, output=output, quiet=quiet, model=model, task=task)
    done = finished_job(job)
    if done is not None:
        return done
    start = time.perf_counter()
    history, resumed_from = train_job(job, progress, quiet, on_epoch_end)
    return report_job(job, latency_fn or measure_latency, start, history, resumed_from)


def _task(run: _Run, task: Task | str | None) -> Task:
    """The task to retrain with: the one given, else the run's (its factory path or dataset)."""
    if task is None and run.given.get("task") == "object":
        raise NasPruneError(
            f"{run.run_dir} searched with a task given as a Python object; pass it again: "
            "nas_prune.retrain(run_dir, task=<the task>, ...)"
        )
    c = run.cfg
    resolved = resolve_task(task if task is not None else c.task, c.dataset, c.data_dir, c.subset)
    shape = model_spec_for(run.spec["model"], resolved).get("input_shape")
    if (
        shape is not None
        and run.spec.get("input_shape") is not None
        and shape != list(run.spec["input_shape"])
    ):
        raise NasPruneError(
            f"task {resolved.name} gives inputs of shape {shape}, but dense.pt expects {run.spec['input_shape']}"
        )
    return resolved


def plan_job(
    run_dir: Path,
    cfg: RetrainConfig,
    *,
    output: str | os.PathLike | None = None,
    quiet: bool = False,
    model: nn.Module | None = None,
    task: Task | str | None = None,
    arch: Architecture | None = None,
) -> RetrainJob:
    """The run, the task, the architecture (``arch``, else ``cfg``'s rank or trial), its pruned model and
    the settings; every bad input fails here."""
    run = _open_run(run_dir, model)
    task = _task(run, task)
    if cfg.distill:
        task.check_distillation()
    arch = arch or choose_architecture(run_dir, rank=cfg.rank, trial=cfg.trial)
    example = task.example()
    inherit_from = _inherit_from(run, cfg)
    slim = _slim(run, example, arch.widths, inherit_from)  # unknown group -> NasPruneError
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
    if inherit_from == "supernet":  # only then: earlier retrains' settings stay equal
        settings["inherit_from"] = inherit_from
    name = output_name(cfg.init, arch.trial_id, cfg.distill, cfg.budget_matched)
    out = Path(output) if output is not None else run_dir / "retrain" / name
    say = (lambda *a, **k: None) if quiet else print
    device = resolve_device(cfg.device)
    return RetrainJob(
        run, arch, cfg, task, slim, settings, flops_ratio, out, device, example, say, inherit_from
    )


def _inherit_from(run: _Run, cfg: RetrainConfig) -> str | None:
    """Where ``--init inherit`` takes its weights: ``dense`` unless ``--inherit-from supernet`` (None for
    scratch). Dense is the default even when the run has a supernet: on resnet20 at 10% of the FLOPs the
    same architectures fine-tuned one epoch from the dense weights scored ~2 points above the same
    fine-tune from a 2-epoch supernet (results/BENCHMARKS.md, "Inherit from the dense model or the
    supernet")."""
    if cfg.init != "inherit":
        return None
    chosen = cfg.inherit_from or "dense"
    if chosen == "supernet" and not (run.run_dir / "supernet.pt").is_file():
        raise NasPruneError(
            f"--inherit-from supernet: {run.run_dir} has no supernet.pt (search with --supernet-epochs > 0)"
        )
    return chosen


def _slim(run: _Run, example: Any, widths: dict[str, int], inherit_from: str | None) -> nn.Module:
    """The dense model pruned to ``widths``; from the supernet's weights and channel ranking (exactly
    the channels each width was trained with) when inheriting from it."""
    if inherit_from != "supernet":
        return prune(run.dense, example, widths, run.cfg.importance)
    path = run.run_dir / "supernet.pt"
    try:
        supernet = load_supernet(path, None)
        shared = supernet.model(run.dense)
    except Exception as err:  # an unreadable file, weights of another model
        raise NasPruneError(f"{path} is not a supernet of this run's model ({type(err).__name__})") from err
    return prune(shared, example, widths, importance=supernet.ranking).eval()


def previous_metrics(job: RetrainJob) -> dict[str, Any] | None:
    """The metrics.json of a finished retrain with these settings, else None; an unfinished or finished
    one with other settings is an error."""
    out, settings = job.out, job.settings
    if (out / "metrics.json").is_file():
        done = read_json(out / "metrics.json", "delete the folder to retrain")
        if done.get("settings") != settings:
            raise NasPruneError(settings_mismatch(out, "a retrain", done.get("settings"), settings, _REMEDY))
        return done
    if (out / CHECKPOINT).is_file():  # an interrupted retrain: continue it only with the same settings
        previous = load_checkpoint(out / CHECKPOINT).get("settings")
        if previous != settings:
            raise NasPruneError(settings_mismatch(out, "a retrain", previous, settings, _REMEDY))
    return None


def finished_job(job: RetrainJob) -> dict[str, Any] | None:
    """:func:`previous_metrics`, reported again (printed, summary refreshed) with ``output``."""
    done = previous_metrics(job)
    if done is None:
        return None
    job.say(f"{job.out} is already retrained with these settings; not training again (delete it to redo).")
    write_summary(job.run.run_dir / "retrain")
    print_comparison(done, job.out, job.run.run_dir / "retrain", job.say)
    return {**done, "output": str(job.out)}


def train_job(
    job: RetrainJob,
    progress: bool = False,
    quiet: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], Any] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Start the pruned model (re-initialised or inherited) and train it, resumably from the output
    folder's ``checkpoint.pt`` (a finished one only loads the trained weights).

    Returns:
        The training history and the epochs done before this call.
    """
    cfg, s, run, device, task = job.cfg, job.settings, job.run, job.device, job.task
    ensure_output_dir(job.out)
    resumed_from = resumed_epochs(job.out / CHECKPOINT)
    ratio, base = f"{job.flops_ratio:.3f}", s["base_epochs"]
    job.say(
        f"Retraining {job.arch.how}: trial {job.arch.trial_id}, {ratio} of the dense FLOPs, "
        f"init {cfg.init}{', distilled' if cfg.distill else ''}, {s['epochs']:g} epochs"
        f"{f' (= {base:g} / {ratio}, budget-matched)' if cfg.budget_matched else ''}"
        f"{f' (the dense model trained {base:g}, from {run.epochs_from})' if cfg.epochs is None else ''}, "
        f"lr {s['lr']:g}, seed {s['seed']}, device {device}"
        f"{f', inherited from the {job.inherit_from}' if job.inherit_from else ''}"
    )
    slim = job.slim.to(device)
    if resumed_from:
        job.say(
            f"Resuming {job.out.name} after {resumed_from:g} of {s['epochs']:g} epochs (from {job.out / CHECKPOINT})"
        )
    elif cfg.init == "scratch":
        reinitialize(slim, s["seed"], zoo_init=run.spec["model"] in MODELS)
    else:
        bn_loader = task.loader("train", s["batch_size"], train=True, seed=s["seed"], device=device)
        adapt_batchnorm(slim, bn_loader, BN_BATCHES, device, task.inputs)
    step = None
    if cfg.distill:
        step = task.distillation_step(run.dense.to(device), temperature=s["temperature"], alpha=s["alpha"])
    try:
        history = fit(
            slim, task, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
            weight_decay=s["weight_decay"], device=device, seed=s["seed"], progress=progress,
            on_epoch_end=epoch_reporter(None if quiet else _say_now, s["epochs"], on_epoch_end),
            step=step, checkpoint=Checkpointing(job.out / CHECKPOINT, s, run.spec),
        )  # fmt: skip
        return history, resumed_from
    except KeyboardInterrupt:
        if (job.out / CHECKPOINT).is_file() and not quiet:
            print(
                f"Interrupted: rerun the same command to continue from the last finished epoch "
                f"({job.out / CHECKPOINT}).",
                file=sys.stderr,
            )
        raise


def report_job(
    job: RetrainJob,
    latency_fn: Callable[..., float],
    start: float,
    history: list[dict[str, Any]],
    resumed_from: float,
) -> dict[str, Any]:
    """Final figures of the trained ``job.slim`` (the only use of the test split), model.pt, export,
    metrics.json (``wall_s`` counted from ``start``), summary."""
    run, arch, s, out = job.run, job.arch, job.settings, job.out
    job.say("Measuring test accuracy and latency of the dense and the retrained model ...")
    dense_accuracy = cached_accuracy(
        run.dense,
        job.task,
        job.device,
        s["batch_size"],
        run.run_dir / "dense.pt",
        run.run_dir / "retrain" / "dense.json",
    )
    figures = final_figures(
        run.dense, job.slim, job.task, job.example, job.device, latency_fn, run.cfg.latency_batch,
        int(job.cfg.latency_batch_large), s["batch_size"], dense_accuracy,
    )  # fmt: skip
    slim = job.slim.cpu().eval()
    save_pruned(out / "model.pt", slim, arch.widths, run.spec, run.cfg.importance, _structured(job.example))
    exported = _export(slim, job) if job.cfg.export else dict(_NO_EXPORT)
    choice = {"trial_id": arch.trial_id, "widths": dict(arch.widths), "distill": bool(job.cfg.distill),
              "temperature": s["temperature"], "alpha": s["alpha"], "budget_matched": bool(job.cfg.budget_matched)}  # fmt: skip
    key = job.task.score_key
    architecture = {"how": arch.how, f"search_val_{key}": arch.val_accuracy, "state": arch.state,
                    "feasible": arch.feasible, "source": arch.source}  # fmt: skip
    rest = {"lr": s["lr"], "batch_size": s["batch_size"], "importance": s["importance"],
            "model": run.spec["model"], "dataset": data_label(run.cfg.task, run.cfg.dataset, job.task.name),
            "score_name": job.task.score_name, "architecture": architecture,
            "model_file": "model.pt", **exported, "inherit_from": job.inherit_from,
            "train_seconds": sum(row["train_seconds"] for row in history),
            "wall_s": time.perf_counter() - start, "resumed_from_epoch": resumed_from,
            "history": history}  # fmt: skip
    metrics = metrics_record(
        out.name, figures, epochs=s["epochs"], init=job.cfg.init, seed=s["seed"], dense_epochs=run.dense_epochs,
        dense_seed=run.cfg.seed, choice=choice, rest=rest, settings=s,
    )  # fmt: skip
    write_metrics(out / "metrics.json", metrics)
    (out / CHECKPOINT).unlink(missing_ok=True)
    write_summary(run.run_dir / "retrain")
    print_comparison(metrics, out, run.run_dir / "retrain", job.say)
    return {**metrics, "output": str(out)}


def _export(slim: nn.Module, job: RetrainJob) -> dict[str, Any]:
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


def _structured(example: Any) -> Any:
    """Example inputs worth storing in model.pt: a tuple or dict of them (a tensor's shape is the spec's)."""
    return None if isinstance(example, torch.Tensor) else example


def _say_now(line: str) -> None:
    print(line, flush=True)
