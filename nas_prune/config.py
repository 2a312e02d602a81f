"""Typed run settings, dumped as ``config.yaml`` in the run directory with versions and hardware.

A run directory must say exactly how it was produced: every setting, the library versions and the
machine (CPU model, GPU name). ``--resume`` reads the settings back from the same file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_text
from .cli import config_from_mapping, option
from .errors import NasPruneError

__all__ = [
    "FINE_TUNE_FROM",
    "FORMER_BEHAVIOUR",
    "RETIRED_SETTINGS",
    "RUNG0_JUDGES",
    "SearchConfig",
    "TrainConfig",
    "device_label",
    "hardware_info",
    "library_versions",
    "load_config",
    "read_config_extras",
    "write_config",
]


RETIRED_SETTINGS = ("reports_per_trial", "extra")
"""Settings older versions wrote to ``config.yaml`` (ASHA's reports per trial, a free-form dict)."""
FORMER_BEHAVIOUR = {"fine_tune_from": "supernet", "supernet_grad_clip": None, "rung0_judge": "supernet"}
"""Settings older versions did not write, with the value that does what those versions did (a run
resumed from them goes on as it started)."""
FINE_TUNE_FROM = ("dense", "supernet")
RUNG0_JUDGES = ("supernet", "both")

_BUDGETS = "budgets (at least one; all given must hold)"
_MODEL = "model and data"
_SEARCH = "search"


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of ``python -m nas_prune.search``; each field's help is its flag's ``--help`` text."""

    budget_flops: float | None = option(
        None, "keep at most this fraction of the dense FLOPs, in (0, 1]", group=_BUDGETS
    )
    budget_params: float | None = option(
        None, "keep at most this fraction of the dense parameters", group=_BUDGETS
    )
    budget_latency: str | None = option(
        None,
        "0.8 = fraction of the dense model's measured latency; 12ms = absolute (proposals aim under it by "
        "the latency LUT's measured error)",
        group=_BUDGETS,
    )
    latency_batch: int = option(1, "batch size latency is measured at", group=_BUDGETS)
    lut_dir: str = option(
        "results/lut", "cache of the per-layer latency lookup table, one file per device", group=_BUDGETS
    )
    lut_samples: int = option(
        8,
        "random architectures, narrow to dense, the LUT is validated on before it may reject",
        group=_BUDGETS,
    )
    model: str | None = option(
        None, "zoo name or pkg.module:factory (default: convnet for 28x28 data, else resnet20)", group=_MODEL
    )
    checkpoint: str | None = option(
        None,
        "dense weights: a nas_prune checkpoint or a plain state_dict file; default: train them first",
        group=_MODEL,
    )
    pretrain_epochs: float = option(3.0, "epochs to train the dense model", group=_MODEL)
    dataset: str = option(
        "fashion-mnist",
        "fashion-mnist, mnist, cifar10, cifar100, synthetic, folder:PATH (a class-per-folder image tree) "
        "or pkg.module:factory",
        group=_MODEL,
    )
    task: str | None = option(
        None,
        "pkg.module:factory returning a nas_prune Task (data, training step, named score) instead of "
        "--dataset: a detector, a segmenter, any model and metric",
        group=_MODEL,
    )
    data_dir: str | None = option(None, "folder searched first for the dataset files", group=_MODEL)
    subset: int | None = option(
        None, "use a fixed random subset of N training images (quick runs)", group=_MODEL
    )
    trials: int = option(
        240, "candidates scored at rung 0 in total, seeds included, also on resume", group=_SEARCH
    )
    epochs_per_trial: float = option(
        0.5,
        "fine-tuning epochs at the top rung of the fidelity ladder; rung r of K gets this / "
        "reduction-factor^(K-r), fractions allowed",
        group=_SEARCH,
    )
    rungs: int = option(
        2,
        "fine-tune rungs above rung 0 (slim + adaptive BN, no fine-tuning); 0 = rung 0 only",
        group=_SEARCH,
    )
    reduction_factor: int = option(
        8, "successive halving: the best 1/this of each cost level go up a rung", group=_SEARCH
    )
    cost_levels: tuple[float, ...] = option(
        (1.0, 0.8, 0.6),
        "fractions of the budget that proposals are projected onto, so the front is a curve; two of "
        "every three candidates are at 1.0",
        group=_SEARCH,
    )
    budget_band: float = option(0.02, "proposals aim within this fraction under the budget", group=_SEARCH)
    workers: int = option(2, "Ray workers evaluating candidates in parallel", group=_SEARCH)
    gpus_per_trial: float = option(0.0, "GPUs per worker, fractions allowed", group=_SEARCH)
    device: str = option("auto", "auto, cpu or cuda for the dense model and latency", group=_SEARCH)
    ray_address: str | None = option(
        None, "join an existing Ray cluster (default: a local Ray on 127.0.0.1)", group=_SEARCH
    )
    seed: int = option(0, "seed of the sampler, seeds and fine-tuning", group=_SEARCH)
    time_budget: float | None = option(
        None,
        "seconds for the ladder (after the dense model and seeds): rung 0 stops early enough for the "
        "planned fine-tunes to finish in time",
        group=_SEARCH,
    )
    importance: str = option("l2", "channel importance when slimming: l2, l1 or bn_scale", group=_SEARCH)
    round_to: int | None = option(
        None, "widths are multiples of this (default: the model's search space)", group=_SEARCH
    )
    min_fraction: float | None = option(
        None, "narrowest width per group as a fraction (default: search space)", group=_SEARCH
    )
    freeze: tuple[str, ...] = option(
        (), "channel groups (names from --dry-run) kept at full width", group=_SEARCH
    )
    seeds: tuple[str, ...] = option(
        ("uniform", "l2", "sensitivity"), "seed architectures evaluated first", group=_SEARCH, nargs="*"
    )
    sampler: str = option(
        "evolution",
        "evolution (children of each cost level's best rung-0 candidates: tournament, crossover, one-step "
        "mutations, projected onto the budget; a repeat is bred again with larger mutations, then moved to a grid "
        "neighbour), tpe (Optuna's "
        "multivariate TPE per cost level, told the projected keep scores) or random (uniform keep scores, "
        "projected and laddered the same way: the control a search must beat)",
        group=_SEARCH,
    )
    gate_epochs: float = option(
        1.0,
        "epochs of the ProxylessNAS-style gate supernet whose best architectures seed the search "
        "(source gates; 0 disables it)",
        group=_SEARCH,
    )
    gate_seeds: int = option(3, "architectures the gate supernet seeds", group=_SEARCH)
    supernet_epochs: float = option(
        0.0,
        "epochs of the width-shared supernet (sandwich rule, in-place distillation, students on the "
        "budget) that rung 0 slices (and the fine-tune rungs with --fine-tune-from supernet); 0 = "
        "slice the dense weights. Worth 1-2 at aggressive budgets (README: what it buys, measured)",
        group=_SEARCH,
    )
    fine_tune_from: str = option(
        "dense",
        "with --supernet-epochs > 0: the weights the ladder's fine-tune rungs start from: dense (the "
        "candidate sliced from the dense model, as retrain --init inherit starts by default: measured "
        "to rank as the final training ends) or supernet (its sub-network: measured to rank worse)",
        choices=FINE_TUNE_FROM,
        group=_SEARCH,
    )
    rung0_judge: str = option(
        "both",
        "with --supernet-epochs > 0: what rung 0 ranks candidates by: both (the supernet's "
        "sub-network and the candidate sliced from the dense weights, each with adaptive BN; the two "
        "judges' ranks within a cost level are averaged) or supernet (its sub-network alone, half "
        "the time): both ranked closer to the fine-tuned truth in every judge study (README: what it "
        "buys, measured)",
        choices=RUNG0_JUDGES,
        group=_SEARCH,
    )
    supernet_widths: int = option(
        2,
        "random on-budget architectures the supernet trains per step, besides the largest and the smallest",
        group=_SEARCH,
    )
    supernet_grad_clip: float | None = option(
        5.0,
        "the supernet's summed gradient is clipped to this norm (0 = not clipped): unclipped, one "
        "resnet20 supernet wrecked its dense start within 60 steps; 5 ranked as well as a good "
        "unclipped one (README: what it buys, measured)",
        group=_SEARCH,
    )
    lr: float = option(0.01, "fine-tuning learning rate", group=_SEARCH)
    output: str | None = option(
        None, "run directory (default results/<model>-<dataset>-<budget>-<timestamp>)", group="output"
    )
    startup_trials: int = option(10, "random proposals per Optuna study before TPE models", cli=False)
    batch_size: int = option(128, "batch size of fine-tuning and of the seeds' evaluations", cli=False)
    sensitivity_samples: int = option(1000, "validation images the sensitivity seed scores on", cli=False)
    jobs_per_call: int = option(4, "rung-0 candidates a worker takes per call", cli=False)

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


def read_config_extras(path: str | os.PathLike) -> dict[str, Any]:
    """What ``config.yaml`` holds beside the settings (``dense``, ``space``, ``score_name``, ``given``);
    empty when the file is missing or unreadable (the settings' reader reports those)."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return {k: v for k, v in doc.items() if k != "settings"} if isinstance(doc, dict) else {}


def load_config(path: str | os.PathLike) -> SearchConfig:
    """The :class:`SearchConfig` stored in a run's ``config.yaml``.

    Settings an older version wrote and this one no longer has (:data:`RETIRED_SETTINGS`) are dropped,
    so older run directories still read.

    Raises:
        ValueError: the file is not valid YAML or has no ``settings`` mapping.
        NasPruneError: a setting this version does not know (one line).
    """
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        raise ValueError(f"{path} has no 'settings' mapping; it was not written by nas_prune.search")
    settings = {**FORMER_BEHAVIOUR, **doc["settings"]}
    return config_from_mapping(SearchConfig, settings, str(path), retired=RETIRED_SETTINGS)


# ---------------------------------------------------------------------------------------------------
# Dense training: python -m nas_prune.train
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of ``python -m nas_prune.train`` (dense training), one flag each."""

    model: str = option("convnet", "zoo model (listed above) or pkg.module:factory")
    dataset: str = option("fashion-mnist", "dataset (listed above), folder:PATH or pkg.module:factory")
    epochs: float = option(10.0, "training epochs, fractions allowed")
    task: str | None = option(
        None,
        "pkg.module:factory returning a nas_prune Task (its data, training step and score) instead of --dataset",
    )
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
        from .data import check_dataset_name  # here: the settings module must not load datasets/models
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
        if self.task is not None and ":" not in self.task:
            raise NasPruneError(f"--task {self.task!r} is not of the form pkg.module:factory")
        return dataclasses.replace(self, dataset=check_dataset_name(self.dataset))
