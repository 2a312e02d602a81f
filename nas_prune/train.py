"""Training and evaluation shared by dense training, search trials, baselines and retraining.

Read top to bottom: devices and seeds, optimizer and schedule, one epoch of training, evaluation,
``fit`` (several, possibly fractional, epochs with validation after each), checkpoints, and the CLI
``python -m nas_prune.train`` that trains a dense model and saves it with its spec.

Example:
    >>> data = load_dataset("synthetic")
    >>> model = create_model("convnet", data.in_channels, data.num_classes)
    >>> history = fit(model, data, epochs=0.5, batch_size=64, progress=False)
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nas_prune.atomic import atomic_torch_save
from nas_prune.cli import ArgumentParser, run_cli
from nas_prune.data import DataSplits, check_dataset_name, dataset_names, load_dataset
from nas_prune.errors import NasPruneError
from nas_prune.plain import check_plain

__all__ = [
    "CHECKPOINT_SCHEMA_VERSION",
    "resolve_device",
    "seed_everything",
    "make_optimizer",
    "make_scheduler",
    "train_one_epoch",
    "evaluate",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_dict_into",
    "main",
]

CHECKPOINT_SCHEMA_VERSION = 1
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


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: str | torch.device = "cpu",
    label_smoothing: float = 0.0,
    amp: bool | str = False,
    max_batches: int | None = None,
    progress: bool | str = True,
    scaler: torch.amp.GradScaler | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader`` (or its first ``max_batches`` batches).

    The scheduler, if given, is stepped after every batch. On CUDA, ``amp`` (True, "bf16" or "fp16")
    enables autocast (fp16 with a GradScaler, pass ``scaler`` to keep its state across epochs) and the
    model runs in channels_last; on CPU both are ignored. ``progress`` shows a tqdm bar (a string is
    its description).

    Returns:
        ``{"loss": mean loss, "accuracy": fraction correct, "batches": n, "samples": n}``.

    Raises:
        FloatingPointError: The loss became NaN or infinite.
    """
    device = torch.device(device)
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
    correct = torch.zeros((), dtype=torch.long, device=device)
    samples = batches = 0
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)

        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(x)
            if loss_fn is None:
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            else:  # e.g. knowledge distillation: loss_fn(logits, x, y)
                loss = loss_fn(logits, x, y)

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

        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        samples += len(y)
        batches += 1
        if batches % _NAN_CHECK_EVERY == 0 or batches == 1:
            _check_finite(loss_sum, batches)
            bar.set_postfix(loss=f"{float(loss_sum) / samples:.3f}", refresh=False)
    bar.close()
    if samples == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "batches": 0, "samples": 0}
    _check_finite(loss_sum, batches)
    return {
        "loss": float(loss_sum) / samples,
        "accuracy": int(correct) / samples,
        "batches": batches,
        "samples": samples,
    }


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over ``loader`` in eval mode, without gradients.

    The model's train/eval mode is restored afterwards. An empty loader gives NaN loss and accuracy.

    Returns:
        ``{"loss", "accuracy", "samples"}``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct, samples = 0.0, 0, 0
    try:
        with torch.inference_mode():
            for batch, (x, y) in enumerate(loader):
                if max_batches is not None and batch >= max_batches:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if device.type == "cuda" and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = model(x).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                samples += len(y)
    finally:
        model.train(was_training)
    if samples == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "samples": 0}
    return {"loss": loss_sum / samples, "accuracy": correct / samples, "samples": samples}


# ---------------------------------------------------------------------------------------------------
# fit: several (possibly fractional) epochs with validation after each
# ---------------------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    data: DataSplits,
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
) -> list[dict[str, float]]:
    """Train ``model`` on ``data.train`` for ``epochs`` (a float: 2.5 = two epochs and half of one),
    with SGD + Nesterov and a per-step cosine schedule, validating on ``data.val`` after each (partial)
    epoch. The test split is never touched.

    ``on_epoch_end(epoch_index, metrics)`` is called after each validation, with the metrics of the
    history row: ``epoch`` (epochs done, a float), ``train_loss``, ``train_accuracy``, ``val_loss``,
    ``val_accuracy``, ``lr``, ``train_seconds``, ``val_seconds``.

    Returns:
        The history: one such dict per (partial) epoch.
    """
    if not epochs > 0 or not math.isfinite(epochs):
        raise ValueError(f"epochs must be a positive number, got {epochs}")
    seed_everything(seed)
    device = torch.device(device)
    model.to(device)

    # The training loader drops a ragged last batch (a batch of one breaks BatchNorm) unless the whole
    # set fits in one batch; it reshuffles every epoch from a generator seeded with `seed`.
    train_loader = data.loader(
        "train", batch_size, train=True, seed=seed, device=device, drop_last=len(data.train) > batch_size
    )
    val_loader = data.loader("val", batch_size, train=False, device=device)
    steps_per_epoch = len(train_loader)
    full_epochs, fraction = int(epochs), epochs - int(epochs)
    last_batches = max(1, round(fraction * steps_per_epoch)) if fraction > 1e-9 else 0
    total_steps = full_epochs * steps_per_epoch + last_batches

    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay)
    scheduler = make_scheduler(optimizer, total_steps, round(warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if _amp_dtype(amp, device) == torch.float16 else None

    history: list[dict[str, float]] = []
    n_rounds = full_epochs + (1 if last_batches else 0)
    epochs_done = 0.0
    for epoch in range(n_rounds):
        max_batches = None if epoch < full_epochs else last_batches
        lr_now = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train_metrics = train_one_epoch(
            model,
            train_loader,
            optimizer,
            scheduler=scheduler,
            device=device,
            label_smoothing=label_smoothing,
            amp=amp,
            max_batches=max_batches,
            progress=f"epoch {epoch + 1}/{n_rounds}" if progress else False,
            scaler=scaler,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - start

        start = time.perf_counter()
        val_metrics = evaluate(model, val_loader, device=device)
        epochs_done += train_metrics["batches"] / steps_per_epoch
        metrics = {
            "epoch": round(epochs_done, 6),
            "train_loss": train_metrics["loss"],
            "train_accuracy": train_metrics["accuracy"],
            "val_loss": val_metrics["loss"],
            "val_accuracy": val_metrics["accuracy"],
            "lr": lr_now,
            "train_seconds": train_seconds,
            "val_seconds": time.perf_counter() - start,
            "batches": train_metrics["batches"],
        }
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return history


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: dict[str, Any], **extra: Any) -> Path:
    """Write ``{"schema_version": 1, "state_dict", "spec", **extra}`` to ``path`` atomically.

    ``extra`` must be plain data (numbers, strings, lists, dicts); the file loads with
    ``torch.load(path, weights_only=True)``. Parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"schema_version": CHECKPOINT_SCHEMA_VERSION, "state_dict": state_dict, "spec": spec, **extra}
    check_plain(payload, "checkpoint", tensors=True)
    return atomic_torch_save(payload, path)


def _torch_load(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise NasPruneError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip, truncated file, pickled objects beyond plain data, ...
        raise NasPruneError(
            f"checkpoint {path} is unreadable or not a plain-tensor torch file ({type(err).__name__})"
        ) from err


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (on the CPU, ``weights_only=True``).

    Raises:
        NasPruneError: Missing, unreadable or corrupt file, or a file without ``state_dict``/``spec``.
    """
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict):
        raise NasPruneError(
            f"checkpoint {path} is not a nas_prune checkpoint (it holds a {type(ckpt).__name__})"
        )
    for key in ("state_dict", "spec"):
        if key not in ckpt:
            raise NasPruneError(f"checkpoint {path} is not a nas_prune checkpoint (no {key!r})")
    version = ckpt.get("schema_version", CHECKPOINT_SCHEMA_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_SCHEMA_VERSION:
        raise NasPruneError(
            f"checkpoint {path} has schema_version {version!r}; this nas_prune reads up to "
            f"{CHECKPOINT_SCHEMA_VERSION}"
        )
    return ckpt


def load_weights(model: nn.Module, state_dict: dict[str, Any], where: str, detail: str = "") -> None:
    """Load ``state_dict`` into ``model`` strictly; the first missing, unexpected or misshapen key is
    one clear :class:`NasPruneError` naming ``where`` (and ``detail``, e.g. the widths)."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            raise NasPruneError(f"{where} does not fit the model: it has no {key!r}")
        got = state_dict[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(tensor.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise NasPruneError(
                f"{where} does not fit the model: {key!r} is {shape} in the file but "
                f"{tuple(tensor.shape)} in the model{detail}"
            )
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise NasPruneError(f"{where} does not fit the model: unexpected key {unexpected[0]!r}")
    model.load_state_dict(state_dict, strict=True)


def load_state_dict_into(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load weights from a nas_prune checkpoint or a plain ``state_dict`` file into ``model``.

    Prefixes added by ``nn.DataParallel`` (``module.``) or ``torch.compile`` (``_orig_mod.``) are
    stripped when every key has them.

    Returns:
        The file's contents (a plain state_dict comes back as ``{"state_dict": ...}``).

    Raises:
        NasPruneError: Unreadable file, or keys or shapes that do not match the model (naming the
            first mismatching key).
    """
    ckpt = _torch_load(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state_dict = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state_dict, ckpt = ckpt, {"state_dict": ckpt}
    else:
        raise NasPruneError(f"{path} holds neither a nas_prune checkpoint nor a state_dict")
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}

    load_weights(model, state_dict, f"checkpoint {path}")
    return ckpt


# ---------------------------------------------------------------------------------------------------
# CLI: python -m nas_prune.train
# ---------------------------------------------------------------------------------------------------


def _parser() -> ArgumentParser:
    from nas_prune.models import model_names

    parser = ArgumentParser(
        prog="python -m nas_prune.train",
        description="Train a dense model and save it (weights + spec) as a nas_prune checkpoint.",
    )
    parser.add_argument(
        "--model",
        default="convnet",
        help=f"zoo model ({', '.join(model_names())}) or pkg.module:factory (default: convnet)",
    )
    parser.add_argument(
        "--dataset",
        default="fashion-mnist",
        help=f"{', '.join(dataset_names())} or pkg.module:factory (default: fashion-mnist)",
    )
    parser.add_argument(
        "--epochs", type=float, default=10.0, help="training epochs, fractions allowed (default: 10)"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="checkpoint to write (default: results/dense-<model>-<dataset>.pt)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder searched first for the dataset (then $NAS_PRUNE_DATA, ./data, /usr/share/datasets)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size (default: 128)")
    parser.add_argument(
        "--lr", type=float, default=0.1, help="peak SGD learning rate, cosine decay to 0 (default: 0.1)"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=5e-4,
        help="weight decay on conv/linear weights, not on BN or biases (default: 5e-4)",
    )
    parser.add_argument(
        "--label-smoothing", type=float, default=0.0, help="label smoothing in [0, 1) (default: 0)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation (default: 0)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu or cuda (default: auto = cuda if available)"
    )
    parser.add_argument(
        "--amp",
        choices=["off", "bf16", "fp16"],
        default="off",
        help="mixed precision on CUDA (ignored on CPU) (default: off)",
    )
    parser.add_argument(
        "--subset",
        type=int,
        default=None,
        help="use a fixed random subset of N training images (before the val split) and N test images",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the training set held out for validation, split with seed 0 (default: 0.1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the per-batch progress bar")
    return parser


def _validate(args: Any) -> None:
    """Cheap checks of the arguments, before any data is read or model built."""
    from nas_prune.models import model_names

    if not (args.epochs > 0 and math.isfinite(args.epochs)):
        raise NasPruneError(f"--epochs must be a positive number, got {args.epochs}")
    if args.batch_size < 1:
        raise NasPruneError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise NasPruneError(f"--lr must be a positive number, got {args.lr}")
    if not args.weight_decay >= 0:
        raise NasPruneError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not 0 <= args.label_smoothing < 1:
        raise NasPruneError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if not 0 < args.val_fraction < 1:
        raise NasPruneError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.subset is not None and args.subset < 2:
        raise NasPruneError(f"--subset must be at least 2 images, got {args.subset}")
    if ":" not in args.model and args.model not in model_names():
        raise NasPruneError(
            f"unknown model {args.model!r}; choose {', '.join(model_names())} or pkg.module:factory"
        )
    args.dataset = check_dataset_name(args.dataset)


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
    from nas_prune.models import build_from_spec, model_spec

    args = _parser().parse_args(argv)
    _validate(args)
    device = resolve_device(args.device)
    if args.output is None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{args.model}-{args.dataset}")
        args.output = f"results/dense-{slug}.pt"
    _check_output(Path(args.output))

    data = load_dataset(args.dataset, args.data_dir, val_fraction=args.val_fraction, subset=args.subset)
    spec = model_spec(args.model, data.in_channels, data.num_classes, data.input_shape)
    seed_everything(args.seed)  # the initial weights depend on the seed too
    model = build_from_spec(spec)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model} ({params / 1e6:.2f} M params) on {data.name} from {data.source}: "
        f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, device {device}"
    )

    def report(epoch: int, m: dict[str, float]) -> None:
        print(
            f"epoch {m['epoch']:g}: train loss {m['train_loss']:.4f} acc {m['train_accuracy']:.4f} | "
            f"val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.4f} | {m['train_seconds']:.1f} s",
            flush=True,
        )

    history = fit(
        model,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        device=device,
        seed=args.seed,
        progress=not args.no_progress,
        on_epoch_end=report,
        amp=False if args.amp == "off" else args.amp,
    )
    # Seconds per full epoch of training (validation excluded), also for fractional runs.
    seconds_per_epoch = sum(h["train_seconds"] for h in history) / history[-1]["epoch"]
    test = evaluate(model, data.loader("test", args.batch_size, train=False, device=device), device=device)
    path = save_checkpoint(
        args.output,
        model,
        spec,
        dataset=data.name,
        epochs=float(args.epochs),
        val_accuracy=history[-1]["val_accuracy"],
        test_accuracy=test["accuracy"],
        seconds_per_epoch=seconds_per_epoch,
        seed=args.seed,
        split_seed=0,
        val_fraction=args.val_fraction,
        subset=args.subset,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        device=str(device),
        history=history,
        torch_version=str(torch.__version__),
    )
    print(
        f"test accuracy {test['accuracy']:.4f} | val accuracy {history[-1]['val_accuracy']:.4f} | "
        f"{seconds_per_epoch:.1f} s/epoch | saved {path}"
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
