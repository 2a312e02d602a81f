"""The one training loop of nas_prune: dense training, search fine-tuning rungs, baselines and retraining.

Read top to bottom: devices and seeds, optimizer and schedule, one epoch of training, evaluation,
``fit`` (several, possibly fractional, epochs with validation and optionally a resumable checkpoint
after each), and the CLI ``python -m nas_prune.train`` (flags: :class:`nas_prune.config.TrainConfig`)
that trains a dense model and saves it with its spec (:mod:`nas_prune.checkpoint`).

Example:
    >>> data = load_dataset("synthetic")
    >>> model = create_model("convnet", data.in_channels, data.num_classes)
    >>> history = fit(model, data, epochs=0.5, batch_size=64, progress=False)
"""

from __future__ import annotations

import itertools
import math
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nas_prune.batch import batch_size, to_device
from nas_prune.batch import channels_last as to_channels_last
from nas_prune.checkpoint import load_checkpoint, save_checkpoint, settings_mismatch
from nas_prune.cli import ArgumentParser, config_flags, given_flags, run_cli, warnings_as_lines
from nas_prune.config import TrainConfig
from nas_prune.data import DataSplits, dataset_names
from nas_prune.errors import NasPruneError
from nas_prune.task import (
    CrossEntropyStep,
    Task,
    as_task,
    check_task,
    classification_metrics,
    describe_task,
    loss_and_metrics,
    model_spec_for,
    resolve_task,
    with_label_smoothing,
)

__all__ = [
    "Checkpointing",
    "Step",
    "describe_row",
    "epoch_reporter",
    "epoch_seed",
    "resolve_device",
    "seed_everything",
    "make_optimizer",
    "make_scheduler",
    "train_one_epoch",
    "evaluate",
    "fit",
    "main",
    "resumed_epochs",
    "steps_for",
]

_NAN_CHECK_EVERY = 20  # batches between loss checks (each check waits for the GPU)


# ---------------------------------------------------------------------------------------------------
# Devices and seeds
# ---------------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as given.

    Raises:
        NasPruneError: CUDA asked for but not available, or an unknown device string.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise NasPruneError(f"unknown device {device!r}; choose auto, cpu or cuda") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise NasPruneError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise NasPruneError(f"device {device!r} is not supported; choose auto, cpu or cuda")
    return resolved


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# Optimizer and learning-rate schedule
# ---------------------------------------------------------------------------------------------------


def make_optimizer(
    model: nn.Module,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """SGD with weight decay on weights only: BatchNorm parameters and biases (tensors of <= 1
    dimension) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        [g for g in groups if g["params"]], lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over ``warmup_steps``, then cosine from the base lr to 0 at
    ``total_steps``. Call ``scheduler.step()`` after every optimizer step."""
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------------
# One epoch of training, and evaluation
# ---------------------------------------------------------------------------------------------------


def _amp_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: None (off, and always off on CPU), bfloat16 or float16."""
    if not amp or device.type != "cuda":
        return None
    if amp in ("fp16", "float16"):
        return torch.float16
    if amp in ("bf16", "bfloat16") or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _check_finite(loss_sum: torch.Tensor, batch: int) -> None:
    value = float(loss_sum)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"training loss became {value} by batch {batch}; lower the learning rate or check the data"
        )


Step = Callable[[nn.Module, Any], Any]
"""A training step: ``(model, batch) -> loss`` or ``{"loss": ..., other per-batch metrics}``."""


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: str | torch.device = "cpu",
    label_smoothing: float = 0.0,
    amp: bool | str = False,
    max_batches: int | None = None,
    progress: bool | str = True,
    scaler: torch.amp.GradScaler | None = None,
    step: Step | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader`` (or its first ``max_batches`` batches).

    ``step(model, batch)`` is the training step (a task's, or distillation; default: classification's
    cross-entropy on ``(x, y)`` batches with ``label_smoothing``). The scheduler, if given, is stepped
    after every batch. On CUDA, ``amp`` (True, "bf16" or "fp16") enables autocast (fp16 with a
    GradScaler, pass ``scaler`` to keep its state across epochs) and the model runs in channels_last;
    on CPU both are ignored. ``progress`` shows a tqdm bar (a string is its description).

    Returns:
        ``{"loss": mean loss, <each metric the step returns>: its mean, "batches": n, "samples": n}``
        (classification's step returns ``accuracy``).

    Raises:
        FloatingPointError: The loss became NaN or infinite.
        TaskError: The step's loss is not a scalar tensor.
    """
    device = torch.device(device)
    step = step or CrossEntropyStep(label_smoothing)
    amp_dtype = _amp_dtype(amp, device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if amp_dtype == torch.float16 and scaler is None:
        scaler = torch.amp.GradScaler("cuda")
    model.train()

    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    batches_iter = loader if max_batches is None else itertools.islice(loader, max_batches)
    bar = tqdm(
        batches_iter,
        total=total,
        desc=progress if isinstance(progress, str) else "train",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    loss_sum = torch.zeros((), device=device)
    sums: dict[str, torch.Tensor] = {}
    samples = batches = 0
    for batch in bar:
        batch = to_device(batch, device, non_blocking=True)
        if channels_last:
            batch = to_channels_last(batch)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            loss, metrics = loss_and_metrics(step(model, batch))

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()

        n = batch_size(batch)
        loss_sum += loss.detach().float() * n
        for key, value in metrics.items():
            value = torch.as_tensor(
                value.detach() if isinstance(value, torch.Tensor) else value, device=device
            )
            sums[key] = sums.get(key, torch.zeros((), device=device)) + value.float() * n
        samples += n
        batches += 1
        if batches % _NAN_CHECK_EVERY == 0 or batches == 1:
            _check_finite(loss_sum, batches)
            bar.set_postfix(loss=f"{float(loss_sum) / samples:.3f}", refresh=False)
    bar.close()
    if samples == 0:
        return {"loss": float("nan"), **dict.fromkeys(sums, float("nan")), "batches": 0, "samples": 0}
    _check_finite(loss_sum, batches)
    means = {key: float(value) / samples for key, value in sums.items()}
    return {"loss": float(loss_sum) / samples, **means, "batches": batches, "samples": samples}


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
    task: Task | None = None,
) -> dict[str, float]:
    """The task's metrics over ``loader`` in eval mode, under inference mode.

    Without a task: classification's mean cross-entropy, accuracy and samples of ``(x, y)`` batches
    (an empty loader gives NaN loss and accuracy). The model's train/eval mode is restored afterwards.

    Returns:
        ``task.evaluate``'s dict: ``{score_key: score, ...}``; classification ``{"loss", "accuracy", "samples"}``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    moved = (to_device(b, device, non_blocking=True) for b in batches)
    if device.type == "cuda":
        moved = (to_channels_last(b) for b in moved)
    try:
        with torch.inference_mode():
            return classification_metrics(model, moved) if task is None else task.evaluate(model, moved)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------
# fit: several (possibly fractional) epochs, validated and optionally checkpointed after each
# ---------------------------------------------------------------------------------------------------


def steps_for(epochs: float, steps_per_epoch: int) -> list[int]:
    """Batches of each (possibly partial) epoch: whole epochs, then ``max(1, round(fraction x steps))``.

    The one rounding rule of every training in nas_prune (dense, candidate fine-tuning, retrain,
    baselines); 0 epochs is no batch at all.
    """
    if not (epochs >= 0 and math.isfinite(epochs)):
        raise ValueError(f"epochs must be a number >= 0, got {epochs}")
    full, fraction = int(epochs), epochs - int(epochs)
    last = max(1, round(fraction * steps_per_epoch)) if fraction > 1e-9 else 0
    return [steps_per_epoch] * full + ([last] if last else [])


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s batch order and augmentation: a resumed run sees the same batches."""
    return seed + 1_000_003 * epoch


@dataclass(frozen=True)
class Checkpointing:
    """Make :func:`fit` resumable: a checkpoint at ``path`` after every (partial) epoch.

    A checkpoint already at ``path`` is continued from its last finished epoch if it was written with
    the same ``settings`` (else a :class:`NasPruneError`). ``before_save(epoch_index, history_row)``
    may change the model after each epoch's validation; the change is what a resume sees.
    """

    path: Path
    settings: dict[str, Any]
    spec: dict[str, Any]
    before_save: Callable[[int, dict[str, Any]], Any] | None = None


def fit(
    model: nn.Module,
    data: Task | DataSplits,
    *,
    epochs: float,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], Any] | None = None,
    amp: bool | str = False,
    warmup_epochs: float = 0.0,
    step: Step | None = None,
    validate: bool = True,
    checkpoint: Checkpointing | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on the task's ``train`` split for ``epochs`` (a float: 2.5 = two epochs and half
    of one, see :func:`steps_for`) with SGD + Nesterov and a per-step cosine schedule, validating on
    ``val`` after each (partial) epoch unless ``validate`` is False. The test split is never touched.

    ``data`` is a :class:`~nas_prune.task.Task` (its training step and score) or a built-in dataset's
    :class:`~nas_prune.data.DataSplits` (classification; ``label_smoothing`` applies to it only).
    Each epoch draws its batch order from :func:`epoch_seed`. ``step(model, batch)`` replaces the
    task's training step (distillation). ``on_epoch_end(epoch_index, row)`` is called after each epoch
    (and its checkpoint) with the history row: ``epoch`` (epochs done, a float), ``train_loss``,
    ``train_<metric>`` for each metric of the step (classification: ``train_accuracy``), ``val_<key>``
    for each of the task's validation metrics (classification: ``val_loss``, ``val_accuracy``; others
    ``val_score``), ``lr``, ``train_seconds``, ``val_seconds``, ``batches``.

    Returns:
        The history: one such dict per (partial) epoch, including those done before a resume.
    """
    if not epochs > 0 or not math.isfinite(epochs):
        raise ValueError(f"epochs must be a positive number, got {epochs}")
    seed_everything(seed)
    device = torch.device(device)
    model.to(device)
    task = as_task(data, label_smoothing)
    drop_last = task.size("train") > batch_size  # a ragged batch of one would break BatchNorm

    def train_loader(epoch: int):
        seed_ = epoch_seed(seed, epoch)
        return task.loader("train", batch_size, train=True, seed=seed_, device=device, drop_last=drop_last)

    steps_per_epoch = len(train_loader(0))
    rounds = steps_for(epochs, steps_per_epoch)
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay)
    scheduler = make_scheduler(optimizer, sum(rounds), round(warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if _amp_dtype(amp, device) == torch.float16 else None
    start, history = _resume(checkpoint, model, optimizer, scheduler)
    val_loader = task.loader("val", max(batch_size, 512), train=False, device=device) if validate else None
    done = sum(rounds[:start])
    for epoch in range(start, len(rounds)):
        lr_now = optimizer.param_groups[0]["lr"]
        tick = time.perf_counter()
        stats = train_one_epoch(
            model, train_loader(epoch), optimizer, scheduler=scheduler, device=device,
            amp=amp, max_batches=rounds[epoch], progress=f"epoch {epoch + 1}/{len(rounds)}" if progress else False,
            scaler=scaler, step=step or task.training_step,
        )  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        done += stats["batches"]
        row = {"epoch": round(done / steps_per_epoch, 6), "train_loss": stats["loss"]}
        row.update({f"train_{k}": v for k, v in stats.items() if k not in ("loss", "batches", "samples")})
        row["train_seconds"], tick = time.perf_counter() - tick, time.perf_counter()
        if val_loader is not None:
            val = evaluate(model, val_loader, device=device, task=task)
            row.update({f"val_{k}": v for k, v in val.items() if k != "samples"})
            row["val_seconds"] = time.perf_counter() - tick
        row.update(lr=lr_now, batches=stats["batches"])
        history.append(row)
        if checkpoint is not None:
            if checkpoint.before_save is not None:
                checkpoint.before_save(epoch, row)
            save_checkpoint(
                checkpoint.path, model, checkpoint.spec, settings=checkpoint.settings,
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rounds_done=epoch + 1,
                history=history,
            )  # fmt: skip
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    return history


def epoch_reporter(
    say: Callable[[str], None] | None,
    total_epochs: float,
    then: Callable[[int, dict[str, Any]], Any] | None = None,
) -> Callable[[int, dict[str, Any]], None]:
    """An ``on_epoch_end`` that prints one line per epoch with ``say`` (None: silent), then calls ``then``."""

    def report(epoch: int, row: dict[str, Any]) -> None:
        if say is not None:
            say(
                f"epoch {row['epoch']:g}/{total_epochs:g}: {describe_row(row)} | {row['train_seconds']:.1f} s"
            )
        if then is not None:
            then(epoch, row)

    return report


def describe_row(row: dict[str, Any]) -> str:
    """``train loss 0.41 acc 0.86 | val loss 0.39 acc 0.87``: a history row's losses and metrics."""
    short = {"accuracy": "acc"}
    parts = []
    for split in ("train", "val"):
        keys = [k for k in row if k.startswith(f"{split}_") and k != f"{split}_seconds"]
        if keys:
            values = " ".join(
                f"{short.get(k[len(split) + 1 :], k[len(split) + 1 :])} {row[k]:.4f}" for k in keys
            )
            parts.append(f"{split} {values}")
    return " | ".join(parts)


def _resume(
    checkpoint: Checkpointing | None, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, list[dict[str, Any]]]:
    """(epochs already done, their history) from ``checkpoint``'s file, with the model, optimizer and
    schedule restored; (0, []) without one."""
    if checkpoint is None or not checkpoint.path.is_file():
        return 0, []
    ckpt = load_checkpoint(checkpoint.path)
    if ckpt.get("settings") != checkpoint.settings:
        raise NasPruneError(
            settings_mismatch(checkpoint.path, "a checkpoint", ckpt.get("settings"), checkpoint.settings,
                              "delete it to start over")
        )  # fmt: skip
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return int(ckpt["rounds_done"]), list(ckpt["history"])


def resumed_epochs(path: Path) -> float:
    """Epochs a :class:`Checkpointing` file at ``path`` has done (0.0 without one)."""
    if not path.is_file():
        return 0.0
    history = load_checkpoint(path).get("history") or []
    return float(history[-1]["epoch"]) if history else 0.0


# ---------------------------------------------------------------------------------------------------
# CLI: python -m nas_prune.train
# ---------------------------------------------------------------------------------------------------


def _parser() -> ArgumentParser:
    from nas_prune.models import model_names

    parser = ArgumentParser(
        prog="python -m nas_prune.train",
        description="Train a dense model and save it (weights + spec) as a nas_prune checkpoint. "
        f"Zoo models: {', '.join(model_names())}. Datasets: {', '.join(dataset_names())}.",
    )
    return config_flags(parser, TrainConfig)


def _check_output(path: Path) -> None:
    """Before any training: ``--output`` must be a file path whose folder exists or can be created."""
    if path.is_dir():
        raise NasPruneError(f"--output {path} is a directory; give a file such as {path / 'dense.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NasPruneError(f"--output {path}: cannot create {path.parent} ({err.strerror or err})") from None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m nas_prune.train``: train a dense model, test it once, save a checkpoint."""
    cfg = TrainConfig(**given_flags(_parser().parse_args(argv), TrainConfig)).validate()
    device = resolve_device(cfg.device)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.model}-{cfg.dataset}")
    output = Path(cfg.output or f"results/dense-{slug}.pt")
    _check_output(output)
    with warnings_as_lines():
        _train_dense(cfg, device, output)


def _train_dense(cfg: TrainConfig, device: torch.device, output: Path) -> None:
    from nas_prune.models import build_from_spec

    task = resolve_task(cfg.task, cfg.dataset, cfg.data_dir, subset=cfg.subset, val_fraction=cfg.val_fraction)
    task = with_label_smoothing(task, cfg.label_smoothing)
    spec = model_spec_for(cfg.model, task)
    seed_everything(cfg.seed)  # the initial weights depend on the seed too
    model = build_from_spec(spec)
    check_task(task, model, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.model} ({params / 1e6:.2f} M params), {describe_task(task)}, device {device}")
    key = task.score_key
    history = fit(
        model, task, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        device=device, seed=cfg.seed, progress=cfg.progress, amp=False if cfg.amp == "off" else cfg.amp,
        on_epoch_end=lambda epoch, row: print(f"epoch {row['epoch']:g}: {describe_row(row)} | "
                                              f"{row['train_seconds']:.1f} s", flush=True),
    )  # fmt: skip
    # Seconds per full epoch of training (validation excluded), also for fractional runs.
    seconds_per_epoch = sum(h["train_seconds"] for h in history) / history[-1]["epoch"]
    test = None
    if task.size("test"):
        loader = task.loader("test", cfg.batch_size, train=False, device=device)
        test = evaluate(model, loader, device=device, task=task)[key]
    path = save_checkpoint(
        output, model, spec, dataset=cfg.task or cfg.dataset, epochs=float(cfg.epochs), score_name=task.score_name,
        **{f"val_{key}": history[-1][f"val_{key}"], f"test_{key}": test},
        seconds_per_epoch=seconds_per_epoch, seed=cfg.seed, split_seed=0, val_fraction=cfg.val_fraction,
        subset=cfg.subset, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing, device=str(device), history=history,
        torch_version=str(torch.__version__),
    )  # fmt: skip
    name = task.score_name
    shown = "none (no test split)" if test is None else f"{test:.4f}"
    print(
        f"test {name} {shown} | val {name} {history[-1][f'val_{key}']:.4f} | "
        f"{seconds_per_epoch:.1f} s/epoch | saved {path}"
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
