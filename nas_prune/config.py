"""Typed run settings, dumped as ``config.yaml`` in the run directory with versions and hardware.

A run directory must say exactly how it was produced: every setting, the library versions and the
machine (CPU model, GPU name). ``--resume`` reads the settings back from the same file.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_text

__all__ = ["SearchConfig", "device_label", "hardware_info", "library_versions", "load_config", "write_config"]


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of ``python -m nas_prune.search`` (see ``--help`` for each flag's meaning)."""

    budget_flops: float | None = None
    budget_params: float | None = None
    budget_latency: str | None = None
    latency_batch: int = 1
    model: str | None = None
    checkpoint: str | None = None
    pretrain_epochs: float = 3.0
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None
    trials: int = 240
    epochs_per_trial: float = 0.5
    rungs: int = 2
    reduction_factor: int = 8
    cost_levels: tuple[float, ...] = (1.0, 0.8, 0.6)
    budget_band: float = 0.02
    workers: int = 2
    gpus_per_trial: float = 0.0
    device: str = "auto"
    ray_address: str | None = None
    seed: int = 0
    output: str | None = None
    time_budget: float | None = None
    importance: str = "l2"
    round_to: int | None = None
    min_fraction: float | None = None
    seeds: tuple[str, ...] = ("uniform", "l2", "sensitivity")
    freeze: tuple[str, ...] = ()
    startup_trials: int = 10
    sampler: str = "tpe"
    gate_epochs: float = 1.0
    gate_seeds: int = 3
    lut_dir: str = "results/lut"
    lut_samples: int = 8
    lr: float = 0.01
    batch_size: int = 128
    sensitivity_samples: int = 1000
    jobs_per_call: int = 4

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run's numbers depend on."""
    versions = {"python": platform.python_version()}
    for name in ("nas_prune", "torch", "torch-pruning", "thop", "optuna", "ray", "numpy", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def hardware_info() -> dict[str, Any]:
    """CPU model, core count and GPU name (if CUDA is available)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": sys.platform}
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # hardware info must never stop a run
        info["gpu"] = None
    return info


def device_label(device) -> str:
    """What latency was measured on, for the ``latency_device`` column: GPU name, or CPU model and threads."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({hardware_info()['cpu']}, {torch.get_num_threads()} threads)"


def write_config(path: str | os.PathLike, config: SearchConfig, **extra: Any) -> None:
    """Write ``config.yaml``: ``settings`` (the dataclass), ``versions``, ``hardware`` and ``extra``."""
    settings = dataclasses.asdict(config)
    settings.update({k: list(v) for k, v in settings.items() if isinstance(v, tuple)})
    doc = {"settings": settings, "versions": library_versions(), "hardware": hardware_info(), **extra}
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def load_config(path: str | os.PathLike) -> SearchConfig:
    """The :class:`SearchConfig` stored in a run's ``config.yaml``.

    Settings an older version wrote and this one no longer has (``reports_per_trial``, ``extra``) are
    ignored, so older run directories still read.

    Raises:
        ValueError: the file is not valid YAML or has no ``settings`` mapping.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        raise ValueError(f"{path} has no 'settings' mapping; it was not written by nas_prune.search")
    settings = dict(doc["settings"])
    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    for name in ("seeds", "cost_levels", "freeze"):
        if name in settings:
            settings[name] = tuple(settings[name])
    return SearchConfig(**{k: v for k, v in settings.items() if k in fields})


# ---------------------------------------------------------------------------------------------------
# Dense training: python -m nas_prune.train
# ---------------------------------------------------------------------------------------------------

from .cli import option  # noqa: E402  (kept with the configs below, which declare their flags)

__all__ += ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of ``python -m nas_prune.train`` (dense training), one flag each."""

    model: str = option("convnet", "zoo model (listed above) or pkg.module:factory")
    dataset: str = option("fashion-mnist", "dataset (listed above) or pkg.module:factory")
    epochs: float = option(10.0, "training epochs, fractions allowed")
    output: str | None = option(None, "checkpoint to write (default: results/dense-<model>-<dataset>.pt)")
    data_dir: str | None = option(
        None, "folder searched first for the dataset (then $NAS_PRUNE_DATA, ./data, /usr/share/datasets)"
    )
    batch_size: int = option(128, "training batch size")
    lr: float = option(0.1, "peak SGD learning rate, cosine decay to 0")
    weight_decay: float = option(5e-4, "weight decay on conv/linear weights, not on BN or biases")
    label_smoothing: float = option(0.0, "label smoothing in [0, 1)")
    seed: int = option(0, "seed of initialisation, shuffling and augmentation")
    device: str = option("auto", "auto, cpu or cuda (auto = cuda if available)")
    amp: str = option("off", "mixed precision on CUDA (ignored on CPU)", choices=["off", "bf16", "fp16"])
    subset: int | None = option(
        None, "use a fixed random subset of N training images (before the val split) and N test images"
    )
    val_fraction: float = option(0.1, "share of the training set held out for validation, split with seed 0")
    progress: bool = option(True, "the per-batch progress bar")

    def validate(self) -> TrainConfig:
        """Cheap checks before any data is read or model built; returns a copy with the dataset name
        resolved. Raises NasPruneError naming the flag."""
        import math

        from .data import check_dataset_name
        from .errors import NasPruneError
        from .models import model_names

        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise NasPruneError(f"--epochs must be a positive number, got {self.epochs}")
        if self.batch_size < 1:
            raise NasPruneError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise NasPruneError(f"--lr must be a positive number, got {self.lr}")
        if not self.weight_decay >= 0:
            raise NasPruneError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise NasPruneError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.val_fraction < 1:
            raise NasPruneError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.subset is not None and self.subset < 2:
            raise NasPruneError(f"--subset must be at least 2 images, got {self.subset}")
        if ":" not in self.model and self.model not in model_names():
            raise NasPruneError(
                f"unknown model {self.model!r}; choose {', '.join(model_names())} or pkg.module:factory"
            )
        return dataclasses.replace(self, dataset=check_dataset_name(self.dataset))
