"""A search's inputs: settings checked before heavy work, the width space, the run directory, the dense model.

Every problem a user can cause ends as one :class:`~nas_prune.cli.NasPruneError` line (exit code 2 on
the command line) before anything trains: unknown names, out-of-range numbers, a budget no architecture
in the space meets, an ``--output`` that is a file or cannot be created, a ``--resume`` directory whose
``config.yaml`` is missing or not valid YAML.
"""

from __future__ import annotations

import copy
import re
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_state_dict_into, save_checkpoint
from ..cli import ensure_output_dir
from ..config import FINE_TUNE_FROM, RUNG0_JUDGES, SearchConfig, load_config
from ..cost import CostModel
from ..data import check_dataset_name
from ..errors import NasPruneError
from ..models import create_model, default_model, model_names
from ..seeds import SEEDS
from ..space import Budget, WidthSpace
from ..task import Task, data_label, model_spec_for
from ..train import fit, resolve_device, seed_everything

__all__ = [
    "SAMPLERS",
    "build_space",
    "default_output",
    "dense_model",
    "fresh_model",
    "load_dense_weights",
    "make_budget",
    "parse_latency_budget",
    "prepare_run_dir",
    "require_reachable",
    "resume_config",
    "validate",
]

SAMPLERS = ("evolution", "tpe", "random")
RESUMABLE = frozenset({"trials", "workers", "time_budget", "device", "ray_address"})
"""Settings a resumed run may change; every other one is the run's own (config.yaml)."""


def parse_latency_budget(value: str | None) -> tuple[float | None, float | None]:
    """``"0.8"`` -> fraction of the dense latency; ``"12ms"`` -> absolute milliseconds."""
    if value is None:
        return None, None
    text = str(value).strip().lower()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms)?", text)
    if not match:
        raise NasPruneError(f"--budget-latency {value!r} is neither a fraction like 0.8 nor a time like 12ms")
    number = float(match.group(1))
    if match.group(2):
        return number, None
    if not 0.0 < number <= 1.0:
        raise NasPruneError(
            f"--budget-latency {value!r}: a bare number is a fraction in (0, 1]; add 'ms' for time"
        )
    return None, number


def make_budget(cfg: SearchConfig) -> Budget:
    latency_ms, latency_fraction = parse_latency_budget(cfg.budget_latency)
    return Budget(cfg.budget_flops, cfg.budget_params, latency_ms, latency_fraction)


def _check_ladder(cfg: SearchConfig) -> None:
    if cfg.trials < 1:
        raise NasPruneError(f"--trials must be at least 1, got {cfg.trials}")
    if cfg.epochs_per_trial < 0 or cfg.pretrain_epochs <= 0 or cfg.gate_epochs < 0 or cfg.gate_seeds < 1:
        raise NasPruneError(
            "--epochs-per-trial and --gate-epochs must be >= 0, --pretrain-epochs > 0, --gate-seeds >= 1"
        )
    if cfg.supernet_epochs < 0 or cfg.supernet_widths < 0 or (cfg.supernet_grad_clip or 0) < 0:
        raise NasPruneError("--supernet-epochs, --supernet-widths and --supernet-grad-clip must be >= 0")
    if cfg.fine_tune_from not in FINE_TUNE_FROM:
        raise NasPruneError(f"--fine-tune-from must be dense or supernet, got {cfg.fine_tune_from!r}")
    if cfg.rung0_judge not in RUNG0_JUDGES:
        raise NasPruneError(f"--rung0-judge must be supernet or both, got {cfg.rung0_judge!r}")
    if cfg.rungs < 0 or cfg.reduction_factor < 2:
        raise NasPruneError(
            f"--rungs must be >= 0 and --reduction-factor >= 2, got {cfg.rungs} and {cfg.reduction_factor}"
        )
    if cfg.rungs and cfg.epochs_per_trial <= 0:
        raise NasPruneError("--rungs > 0 fine-tunes: give --epochs-per-trial > 0 (or --rungs 0)")
    levels = cfg.cost_levels
    if not levels or 1.0 not in levels or any(not 0.0 < v <= 1.0 for v in levels):
        raise NasPruneError(f"--cost-levels must be fractions in (0, 1] and include 1.0, got {list(levels)}")
    if not 0.0 < cfg.budget_band < 1.0:
        raise NasPruneError(f"--budget-band must be in (0, 1), got {cfg.budget_band}")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        raise NasPruneError(f"--time-budget must be positive seconds, got {cfg.time_budget}")


def validate(cfg: SearchConfig, model_object: bool = False, task_object: bool = False) -> SearchConfig:
    """Check every setting before heavy work; fill the default model. Raises NasPruneError.

    ``model_object``/``task_object``: the model or the task came as Python objects (``cfg.model`` is then
    the model's class name, and ``cfg.task`` stays None)."""
    make_budget(cfg)
    dataset = check_dataset_name(cfg.dataset)
    if cfg.task is not None and ":" not in cfg.task:
        raise NasPruneError(f"--task {cfg.task!r} is not of the form pkg.module:factory")
    if not cfg.model and (cfg.task or task_object):
        raise NasPruneError(
            "a task needs its model: give --model (a zoo name or pkg.module:factory) or model="
        )
    model = cfg.model or default_model(dataset)
    if not model_object and ":" not in model and model not in model_names():
        raise NasPruneError(
            f"unknown model {model!r}; choose {', '.join(model_names())} or pkg.module:factory"
        )
    _check_ladder(cfg)
    if cfg.workers < 1 or cfg.gpus_per_trial < 0 or cfg.latency_batch < 1 or cfg.lut_samples < 2:
        raise NasPruneError(
            "--workers and --latency-batch must be >= 1, --lut-samples >= 2 and --gpus-per-trial >= 0"
        )
    if cfg.round_to is not None and cfg.round_to < 1:
        raise NasPruneError(f"--round-to must be a positive number of channels, got {cfg.round_to}")
    if cfg.min_fraction is not None and not 0.0 < cfg.min_fraction <= 1.0:
        raise NasPruneError(f"--min-fraction must be in (0, 1], got {cfg.min_fraction}")
    if cfg.sampler not in SAMPLERS:
        raise NasPruneError(f"unknown --sampler {cfg.sampler!r}; choose {', '.join(SAMPLERS)}")
    unknown = [s for s in cfg.seeds if s not in SEEDS]
    if unknown:
        raise NasPruneError(f"unknown seed(s) {unknown}; choose from {', '.join(SEEDS)}")
    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
        raise NasPruneError(f"checkpoint {cfg.checkpoint} does not exist")
    resolve_device(cfg.device)
    if cfg.gpus_per_trial > 0 and not cfg.ray_address and not torch.cuda.is_available():
        raise NasPruneError("--gpus-per-trial needs a GPU, and none is visible here (or give --ray-address)")
    return cfg.replace(model=model, dataset=dataset)


def resume_config(run_dir: Path, changes: dict) -> SearchConfig:
    """The settings of the run in ``run_dir`` with the allowed ``changes`` applied."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise NasPruneError(f"--resume {run_dir}: no config.yaml there, so it is not a search run directory")
    try:
        cfg = load_config(path)
    except (ValueError, TypeError) as err:
        raise NasPruneError(f"--resume {run_dir}: {err}") from None
    unknown = set(changes) - RESUMABLE
    if unknown:
        raise NasPruneError(
            f"--resume keeps the run's settings; only {sorted(RESUMABLE)} may change, not {sorted(unknown)}"
        )
    return cfg.replace(**changes)


def build_space(cfg: SearchConfig, model, example) -> tuple[list, WidthSpace, CostModel]:
    """Channel groups, width space (flags over the model's search_spaces YAML) and exact cost model.

    Only the architecture matters here, not the weights, so this runs before any training.
    """
    groups, space = WidthSpace.of_model(
        cfg.model, model, example, round_to=cfg.round_to, min_fraction=cfg.min_fraction, freeze=cfg.freeze
    )
    return groups, space, CostModel(model, example)


def require_reachable(budget: Budget, space: WidthSpace, cost: CostModel) -> None:
    """Fail when even the smallest architecture in the space breaks a FLOP/parameter budget."""
    smallest = cost.cost(space.smallest())
    if not budget.met(*smallest, *cost.dense):
        ratio = smallest[0] / cost.dense[0], smallest[1] / cost.dense[1]
        raise NasPruneError(
            f"no architecture in the space meets {budget.label()}: the smallest keeps "
            f"{ratio[0]:.3f} of the FLOPs and {ratio[1]:.3f} of the parameters (lower --min-fraction?)"
        )


def default_output(cfg: SearchConfig, budget: Budget, task_name: str | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    label = re.sub(
        r"[^A-Za-z0-9_.-]+", "-", f"{cfg.model}-{data_label(cfg.task, cfg.dataset, task_name)}"
    ).replace(".", "-")
    return Path("results") / f"{label}-{budget.label()}-{stamp}"


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create ``run_dir``; a new run refuses a file, or a directory that already holds a search."""
    if not resume and ((run_dir / "trials.csv").exists() or (run_dir / "evaluations.jsonl").exists()):
        raise NasPruneError(f"{run_dir} already holds a search; continue it with --resume {run_dir}")
    ensure_output_dir(run_dir, "--resume" if resume else "--output")


def load_dense_weights(model, path, name: str) -> None:
    """Load a nas_prune checkpoint's or a plain ``state_dict`` file's weights into ``model``; a
    mismatch is one clear error."""
    try:
        load_state_dict_into(model, path)
    except NasPruneError as err:
        raise NasPruneError(f"{err} (model {name!r})") from None


def fresh_model(cfg: SearchConfig, task: Task, model_object: nn.Module | None = None) -> nn.Module:
    """A new instance of the model to search: a copy of the object given, or the zoo model or factory
    built with the task's ``model_kwargs``."""
    if model_object is not None:
        return copy.deepcopy(model_object)
    return create_model(cfg.model, **dict(task.model_kwargs))


def dense_model(
    cfg: SearchConfig, task: Task, run_dir: Path, device: torch.device, model_object: nn.Module | None = None
):
    """The dense model and its spec: ``run_dir/dense.pt`` if present, else ``--checkpoint``, else the
    object's own weights, else trained for ``--pretrain-epochs`` (and cached as ``dense.pt``).

    A model given as an object has the spec ``{"model": <class name>, "given": "object", ...}``: it is
    rebuilt from the object (which must be passed again), not from a name."""
    spec = model_spec_for(cfg.model, task)
    if model_object is not None:
        spec["given"] = "object"
    model = fresh_model(cfg, task, model_object)
    cached = run_dir / "dense.pt"
    source = cached if cached.is_file() else (Path(cfg.checkpoint) if cfg.checkpoint else None)
    if source is not None:
        load_dense_weights(model, source, cfg.model)
        if source != cached:
            save_checkpoint(cached, model, spec, copied_from=str(source))
        return model, spec
    if model_object is not None:  # a trained model given as an object: its own weights are the dense ones
        save_checkpoint(cached, model, spec, copied_from="the model object")
        return model, spec
    print(f"Training the dense {cfg.model} for {cfg.pretrain_epochs:g} epochs (cached as {cached}) ...")
    seed_everything(cfg.seed)
    model = fresh_model(cfg, task)
    history = fit(model, task, epochs=cfg.pretrain_epochs, device=device, seed=cfg.seed)
    save_checkpoint(
        cached, model.cpu(), spec, epochs=cfg.pretrain_epochs, score_name=task.score_name,
        **{f"val_{task.score_key}": history[-1][f"val_{task.score_key}"]},
    )  # fmt: skip
    return model, spec
