"""``python -m nas_prune.search``: constrained multi-objective width search, Optuna x Ray Tune.

How a run goes:

1. Validate every input (one line and exit code 2 on bad input), load the data, get the dense model
   (``--checkpoint`` or trained for ``--pretrain-epochs`` and cached as ``dense.pt``).
2. Build the width space and the exact cost model; a budget below the smallest architecture fails.
3. Seeds (uniform, l2, sensitivity; with ``--gate-epochs`` > 0 also the best architectures of a
   ProxylessNAS-style gate supernet, ``source = gates``) are enqueued first, labelled in ``source``.
4. A :class:`WidthSearcher` (a Ray Tune ``Searcher`` driving an Optuna study through ask/tell) proposes
   widths; proposals over a FLOP/parameter budget are recorded as ``infeasible`` and told to Optuna
   with their constraint violation, never trained. Feasible ones become Ray Tune trials that slim,
   adapt BN, fine-tune and report validation accuracy several times; ASHA stops weak ones.
5. Every finished proposal is appended to ``trials.csv`` at once (atomic writes) and the Optuna study
   lives in ``study.db``, so ``--resume DIR`` continues a killed run without re-running finished trials.
6. Latency is measured for complete trials in this process, one model at a time, never while trials
   train; then ``pareto.csv``, ``best_arch.json`` and the plots are derived from ``trials.csv``.

Decisions:

* ``--trials`` counts *trained* candidates (Ray Tune trials), seeds included; infeasible proposals are
  recorded but not counted. The search stops early if the sampler keeps proposing infeasible widths.
* Trials stopped by ASHA are told to Optuna as PRUNED, so the sampler does not learn from their
  low-fidelity accuracy as if it were final; trials.csv marks them ``pruned`` with the epochs they ran.
* A latency budget (:class:`LatencyGuard`): every proposal gets the latency LUT's prediction, told to
  Optuna as a third objective (the LUT is instant; a measurement per proposal is not). The LUT's
  entries for the whole width grid are measured before trials start, so nothing is timed while trials
  train. Only when the LUT passed validation on this device at the start of the run (``latency.json``:
  median error <= 15% and Spearman >= 0.9 on random widths) is its prediction also a constraint that
  rejects proposals (never trained) and seeds; otherwise it only orders them. Feasibility in trials.csv is judged on the measured median of every
  trained candidate, against the limit fixed at the start (a fraction budget uses the dense latency
  measured then).
* The module is callable: ``nas_prune.search(budget_flops=0.3, ...)`` runs a search from Python and
  returns the trials DataFrame.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# Ray reads these when it is imported: every Ray port on 127.0.0.1 (verified with Ray 2.60; a plain
# ray.init() also listens on the machine's outward address), token auth on (generated for a local Ray;
# a cluster's token lives in ~/.ray/auth_token or RAY_AUTH_TOKEN), no Tune loggers, quiet console.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, TrialScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from .cli import ArgumentParser, NasPruneError, run_cli
from .config import SearchConfig, device_label, load_config, write_config
from .cost import CostModel, measure_latency
from .data import DataSplits, TensorSplit, check_dataset_name, load_dataset, make_loader
from .graph import channel_groups
from .latency_lut import LatencyLUT
from .models import create_model, default_model, load_search_space, model_names, model_spec
from .objective import TrialSettings, adapt_batchnorm, evaluate_candidate
from .prune import prune
from .results import (
    SEED_SOURCES,
    append_trial,
    atomic_write_text,
    read_trials,
    write_best_arch,
    write_pareto,
    write_trials,
)
from .seeds import SEEDS, SeedContext, make_seeds
from .space import Budget, WidthSpace
from .train import (
    evaluate,
    fit,
    load_checkpoint,
    load_weights,
    resolve_device,
    save_checkpoint,
    seed_everything,
)

__all__ = ["WidthSearcher", "search", "main", "parse_latency_budget"]

STUDY_NAME = "nas_prune"
_MAX_INFEASIBLE_IN_A_ROW = 2000


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


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


def validate(cfg: SearchConfig) -> SearchConfig:
    """Check every setting before heavy work; fill the default model. Raises NasPruneError."""
    make_budget(cfg)
    dataset = check_dataset_name(cfg.dataset)
    model = cfg.model or default_model(dataset)
    if ":" not in model and model not in model_names():
        raise NasPruneError(
            f"unknown model {model!r}; choose {', '.join(model_names())} or pkg.module:factory"
        )
    if cfg.trials < 1:
        raise NasPruneError(f"--trials must be at least 1, got {cfg.trials}")
    if cfg.epochs_per_trial < 0 or cfg.pretrain_epochs <= 0 or cfg.gate_epochs < 0 or cfg.gate_seeds < 1:
        raise NasPruneError(
            "--epochs-per-trial and --gate-epochs must be >= 0, --pretrain-epochs > 0, --gate-seeds >= 1"
        )
    if cfg.workers < 1 or cfg.gpus_per_trial < 0 or cfg.latency_batch < 1 or cfg.lut_samples < 2:
        raise NasPruneError(
            "--workers and --latency-batch must be >= 1, --lut-samples >= 2 and --gpus-per-trial >= 0"
        )
    if cfg.sampler not in SAMPLERS:
        raise NasPruneError(f"unknown --sampler {cfg.sampler!r}; choose {' or '.join(SAMPLERS)}")
    unknown = [s for s in cfg.seeds if s not in SEEDS]
    if unknown:
        raise NasPruneError(f"unknown seed(s) {unknown}; choose from {', '.join(SEEDS)}")
    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
        raise NasPruneError(f"checkpoint {cfg.checkpoint} does not exist")
    resolve_device(cfg.device)
    if cfg.gpus_per_trial > 0 and not cfg.ray_address and not torch.cuda.is_available():
        raise NasPruneError("--gpus-per-trial needs a GPU, and none is visible here (or give --ray-address)")
    return cfg.replace(model=model, dataset=dataset)


def build_space(cfg: SearchConfig, model, example) -> tuple[list, WidthSpace, CostModel]:
    """Channel groups, width space (flags over the model's search_spaces YAML) and exact cost model.

    Only the architecture matters here, not the weights, so this runs before any training.
    """
    yaml_space = load_search_space(cfg.model) or {}
    groups = channel_groups(model, example)
    space = WidthSpace.build(
        groups,
        round_to=cfg.round_to or yaml_space.get("round_to", 1),
        min_fraction=cfg.min_fraction or yaml_space.get("min_fraction", 0.1),
        grid=yaml_space.get("grid"),
        frozen=yaml_space.get("frozen", ()),
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


def default_output(cfg: SearchConfig, budget: Budget) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    model = cfg.model.replace(":", "-").replace(".", "-")
    return Path("results") / f"{model}-{cfg.dataset}-{budget.label()}-{stamp}"


# ---------------------------------------------------------------------------------------------------
# Dense model
# ---------------------------------------------------------------------------------------------------


def _load_weights(model, path, name: str) -> None:
    """Load a nas_prune checkpoint's weights into ``model``; a mismatch is one clear error."""
    load_weights(model, load_checkpoint(path)["state_dict"], f"checkpoint {path} (model {name!r})")


def dense_model(cfg: SearchConfig, data: DataSplits, run_dir: Path, device: torch.device):
    """The dense model and its spec: ``run_dir/dense.pt`` if present, else ``--checkpoint``, else trained
    for ``--pretrain-epochs`` (and cached as ``dense.pt``)."""
    spec = model_spec(cfg.model, data.in_channels, data.num_classes, data.input_shape)
    model = create_model(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes)
    cached = run_dir / "dense.pt"
    source = cached if cached.is_file() else (Path(cfg.checkpoint) if cfg.checkpoint else None)
    if source is not None:
        _load_weights(model, source, cfg.model)
        if source != cached:
            save_checkpoint(cached, model, spec, copied_from=str(source))
        return model, spec
    print(f"Training the dense {cfg.model} for {cfg.pretrain_epochs:g} epochs (cached as {cached}) ...")
    seed_everything(cfg.seed)
    model = create_model(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes)
    history = fit(model, data, epochs=cfg.pretrain_epochs, device=device, seed=cfg.seed)
    save_checkpoint(
        cached, model.cpu(), spec, epochs=cfg.pretrain_epochs, val_accuracy=history[-1]["val_accuracy"]
    )
    return model, spec


# ---------------------------------------------------------------------------------------------------
# Optuna x Ray Tune
# ---------------------------------------------------------------------------------------------------


def _load_trials(run_dir: Path) -> pd.DataFrame:
    return read_trials(run_dir / "trials.csv")


def objective_values(accuracy: float, flops_ratio: float, predicted_ms: float | None) -> list[float]:
    """What Optuna is told: accuracy and FLOPs ratio, plus the LUT's latency with a latency budget."""
    values = [float(accuracy), float(flops_ratio)]
    return values if predicted_ms is None or pd.isna(predicted_ms) else [*values, float(predicted_ms)]


class WidthSearcher(Searcher):
    """Ray Tune searcher that proposes widths by Optuna ask/tell and records every proposal.

    It is the single writer of ``trials.csv``: infeasible proposals are written at proposal time,
    trained ones when Ray reports them complete (before Optuna is told, so a kill in between is
    repaired on resume from the CSV).
    """

    def __init__(
        self,
        study,
        space: WidthSpace,
        cost: CostModel,
        budget: Budget,
        run_dir: Path,
        to_train: int,
        reports: int,
        startup_trials: float,
        on_row: Callable[[dict], None] | None = None,
        guard: LatencyGuard | None = None,
    ):
        super().__init__(metric="val_accuracy", mode="max")
        self.study, self.space, self.cost, self.budget, self.guard = study, space, cost, budget, guard
        self.trials_csv = run_dir / "trials.csv"
        self.to_train, self.reports, self.startup_trials = to_train, reports, startup_trials
        self.on_row = on_row
        self.suggested = 0
        self.live: dict[str, dict[str, Any]] = {}

    def __getstate__(self):  # Tune pickles its searcher into experiment state; callbacks stay behind
        return {**self.__dict__, "on_row": None, "guard": None}

    def save_to_dir(self, *args, **kwargs):
        """No-op: the state lives in study.db and trials.csv, which ``--resume`` reads."""

    def restore_from_dir(self, *args, **kwargs):
        """No-op: see :meth:`save_to_dir`."""

    def _ask(self):
        from optuna.trial import TrialState

        finished = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        trial = self.study.ask()
        indices = {n: trial.suggest_int(n, 0, len(c) - 1) for n, c in self.space.choices.items()}
        source = trial.user_attrs.get("source") or ("random" if finished < self.startup_trials else "optuna")
        trial.set_user_attr("source", source)
        return trial, self.space.decode(indices), source

    def _row(self, trial, source: str, widths: dict, macs: int, params: int, **fields_) -> dict:
        dense_macs, dense_params = self.cost.dense
        return {
            "trial_id": trial.number,
            "source": source,
            "macs": macs,
            "params": params,
            "flops_ratio": macs / dense_macs,
            "params_ratio": params / dense_params,
            "widths": widths,
            **fields_,
        }

    def _record(self, row: dict) -> None:
        append_trial(self.trials_csv, row)
        if self.on_row is not None:
            self.on_row(row)

    def suggest(self, trial_id: str):
        if self.suggested >= self.to_train:
            return self.FINISHED
        for _ in range(_MAX_INFEASIBLE_IN_A_ROW):
            trial, widths, source = self._ask()
            macs, params = self.cost.cost(widths)
            violations = self.budget.violations(macs, params, *self.cost.dense)
            predicted = None
            if self.guard is not None:
                predicted, excess = self.guard.violation(widths)
                if self.guard.trusted:  # an untrusted LUT only orders (the third objective)
                    violations["latency"] = excess
            for name, value in violations.items():  # constraint-aware TPE reads these (<= 0: feasible)
                trial.set_constraint(name, value)
            if all(v <= 1e-12 for v in violations.values()):
                self.suggested += 1
                self.live[trial_id] = {
                    "trial": trial,
                    "widths": widths,
                    "source": source,
                    "macs": macs,
                    "params": params,
                    "predicted": predicted,
                    "start": time.time(),
                }
                return {"widths": widths, "trial_number": trial.number, "source": source}
            row = self._row(
                trial, source, widths, macs, params, state="infeasible", feasible=False, epochs=0.0,
                latency_predicted_ms=predicted,
            )  # fmt: skip
            self._record(row)
            self.study.tell(trial, objective_values(0.0, row["flops_ratio"], predicted))
        print(
            f"warning: {_MAX_INFEASIBLE_IN_A_ROW} infeasible proposals in a row; stopping the search",
            file=sys.stderr,
        )
        return self.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        info = self.live.pop(trial_id, None)
        if info is None:
            return
        trial, result = info["trial"], result or {}
        base = self._row(
            trial,
            info["source"],
            info["widths"],
            info["macs"],
            info["params"],
            wall_s=time.time() - info["start"],
            epochs=float(result.get("epochs", 0.0)),
            latency_predicted_ms=info["predicted"],
        )
        message = result.get("error") or ("the trial's worker crashed" if error or not result else "")
        if message:
            self._record({**base, "state": "failed", "feasible": True, "error": message})
            self.study.tell(trial, state=TrialState.FAIL)
            return
        accuracy = float(result["val_accuracy"])
        state = "complete" if int(result.get("step", 0)) >= self.reports else "pruned"
        self._record({**base, "state": state, "feasible": True, "val_accuracy": accuracy})
        if state == "complete":
            self.study.tell(trial, objective_values(accuracy, base["flops_ratio"], info["predicted"]))
        else:
            self.study.tell(trial, state=TrialState.PRUNED)


class SeedProtectingASHA(ASHAScheduler):
    """ASHA that never stops seed trials (uniform, l2, ...): they are the baselines the search is
    judged against, so they always get the full fine-tuning."""

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and trial.config.get("source") in SEED_SOURCES:
            return TrialScheduler.CONTINUE
        return decision


def run_trial(config: dict, settings: TrialSettings, evaluate_fn: Callable = evaluate_candidate) -> None:
    """Ray Tune function trainable: one candidate. Errors are reported, not raised, so the search goes
    on and trials.csv gets the message."""
    from ray import tune

    try:
        evaluate_fn(config["widths"], settings, report=tune.report, trial_seed=int(config["trial_number"]))
    except Exception as err:  # NaN loss, out of memory, a bug in a user model: a failed trial
        tune.report({"val_accuracy": 0.0, "error": f"{type(err).__name__}: {err}"[:1000], "step": 0})


SAMPLERS = ("tpe", "random")


def make_sampler(name: str, seed: int, startup_trials: int):
    """Optuna's constrained multi-objective TPE (``tpe``) or uniform random widths (``random``)."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup_trials, multivariate=True, constant_liar=True
    )


def open_study(run_dir: Path, seed: int, startup_trials: int, sampler: str = "tpe", latency: bool = False):
    """The Optuna study in ``run_dir/study.db`` (created or reloaded): accuracy up, FLOPs down and, with
    ``latency``, the LUT's predicted latency down.

    ``sampler="random"`` (uniform random widths) is the control a search must beat with the same trial
    count; its proposals are labelled ``random``.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_name, sampler = sampler, make_sampler(sampler, seed, startup_trials)
    directions = ["maximize", "minimize", "minimize"] if latency else ["maximize", "minimize"]
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{(run_dir / 'study.db').resolve()}",
        directions=directions,
        sampler=sampler,
        load_if_exists=True,
    )
    if len(study.directions) != len(directions):
        raise NasPruneError(
            f"{run_dir / 'study.db'} has {len(study.directions)} objectives, this search {len(directions)} "
            "(a latency budget adds one); start a new run directory"
        )
    if study.trials:  # resumed: a fresh random stream, not a replay of the first run's proposals
        study.sampler = make_sampler(sampler_name, seed + len(study.trials), startup_trials)
    return study


def repair_interrupted(study, space: WidthSpace, trials: pd.DataFrame) -> int:
    """After a kill: Optuna trials still RUNNING either finished (their row is in trials.csv: tell Optuna)
    or never did (fail them and enqueue the same widths again). Returns how many were re-enqueued."""
    from optuna.trial import TrialState

    rows = trials.set_index("trial_id") if len(trials) else None
    requeued = 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if rows is not None and frozen.number in rows.index:
            row = rows.loc[frozen.number]
            if row["state"] in ("complete", "infeasible"):
                accuracy = row["val_accuracy"] if row["state"] == "complete" else 0.0
                predicted = row["latency_predicted_ms"] if len(study.directions) == 3 else None
                study.tell(frozen.number, objective_values(accuracy, row["flops_ratio"], predicted))
            else:
                study.tell(
                    frozen.number, state=TrialState.PRUNED if row["state"] == "pruned" else TrialState.FAIL
                )
            continue
        study.tell(frozen.number, state=TrialState.FAIL)
        if len(frozen.params) == len(space.choices):
            study.enqueue_trial(
                frozen.params, user_attrs={"source": frozen.user_attrs.get("source", "random")}
            )
            requeued += 1
    return requeued


def start_ray(address: str | None, runtime_env: dict | None = None) -> bool:
    """Connect to ``address`` or start a local Ray on loopback with the dashboard off.

    Returns True when this call started Ray (and so should shut it down).
    """
    import logging

    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(
        include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False, runtime_env=runtime_env
    )
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(_node_ip_address="127.0.0.1", **kwargs)
    return True


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def _sensitivity_evaluator(data: DataSplits, cfg: SearchConfig, device) -> Callable:
    """Accuracy of a (pruned) model on a fixed validation subset after adaptive BN."""
    n = min(cfg.sensitivity_samples, len(data.val))
    subset = make_loader(
        TensorSplit(data.val.x[:n], data.val.y[:n]), 500, train=False, mean=data.mean, std=data.std
    )
    train = data.loader("train", cfg.batch_size, train=True, seed=cfg.seed)

    def score(model):
        model = model.to(device)
        adapt_batchnorm(model, train, 10, device)
        return evaluate(model, subset, device=device)["accuracy"]

    return score


@dataclass
class LatencyGuard:
    """A latency budget during the search, judged by the latency LUT (see the module docstring).

    ``limit_ms`` is fixed at the start of the run (a fraction budget times the dense latency measured
    then) and kept in ``latency.json`` so a resumed run judges by the same limit. ``trusted``: the LUT
    passed validation on this device (DESIGN: median error <= 15%, Spearman >= 0.9), so it may reject;
    an untrusted LUT only orders proposals (Optuna's third objective). ``measure(model) -> ms`` times a
    model with the LUT's own estimator (the fastest of its rounds of medians).
    """

    lut: LatencyLUT
    dense_ms: float
    limit_ms: float
    trusted: bool
    measure: Callable[[torch.nn.Module], float]

    def violation(self, widths: dict[str, int]) -> tuple[float, float]:
        """``(predicted ms, predicted / limit - 1)``; never times anything (the grid was prepared)."""
        predicted = self.lut.predict(widths, measure_missing=False)
        return predicted, predicted / self.limit_ms - 1.0

    def meets(self, widths: dict[str, int]) -> bool:
        """Within the limit by the LUT's prediction; always True for an untrusted LUT."""
        return not self.trusted or self.violation(widths)[1] <= 1e-12

    def seed_check(self, model: torch.nn.Module, example, importance: str) -> Callable[[dict], bool]:
        """The seeds' latency test, run before any trial starts: a candidate is *measured* (pruned and
        timed) unless the LUT already puts it clearly over the limit (over it when trusted, 50% over when
        not). Seeds sit right at the budget, where the LUT's error decides; measuring them keeps the
        heuristics' baselines feasible, which the evidence rules need."""

        def check(widths: dict[str, int]) -> bool:
            if self.violation(widths)[1] > (1e-12 if self.trusted else 0.5):
                return False
            return self.measure(prune(model, example, widths, importance)) <= self.limit_ms

        return check


def measure_fn(latency_fn: Callable | None) -> Callable:
    """``latency_fn(model, example_inputs, device, batch) -> ms`` (tests inject one) or real timing."""
    if latency_fn is not None:
        return latency_fn
    return lambda model, example, device, batch: measure_latency(model, example, device=device, batch=batch)


def latency_guard(
    cfg, budget, model, example, space, run_dir: Path, device, latency_fn, resume: bool, quiet: bool
) -> LatencyGuard | None:
    """The latency budget's guard, ``None`` without one.

    Builds the LUT on ``device``, measures every layer shape on the search grid before any trial starts
    (nothing is timed while trials train), measures the dense model, and validates the LUT on
    ``cfg.lut_samples`` random architectures plus the smallest and the dense one. ``latency.json``
    records the limit and the verdict; ``--resume`` reuses them when the device, batch and budget match.

    Raises:
        NasPruneError: a trusted LUT predicts even the smallest architecture over the limit.
    """
    if not (budget.latency_ms or budget.latency_fraction):
        return None
    timed = measure_fn(latency_fn)
    layer_fn = None
    if latency_fn is not None:
        layer_fn = lambda module, shape, dev: timed(module, torch.zeros(shape), dev, shape[0])  # noqa: E731
    lut = LatencyLUT(
        model, example, device=device, batch=cfg.latency_batch, cache_dir=cfg.lut_dir, measure_fn=layer_fn
    )

    def measure(net):  # the LUT's own estimator: the fastest of its rounds of medians
        return min(timed(net, example, device, cfg.latency_batch) for _ in range(lut.rounds))

    key = {"device": device_label(device), "batch": cfg.latency_batch, "budget": budget.label()}
    saved = run_dir / "latency.json"
    if not quiet:
        print(f"Latency budget: preparing and validating the latency LUT on {key['device']} ...")
    lut.prepare(space, progress=not quiet)
    if resume and saved.is_file():
        info = json.loads(saved.read_text())
        if all(info.get(k) == v for k, v in key.items()):
            return LatencyGuard(lut, info["dense_ms"], info["limit_ms"], info["trusted"], measure)
        print(
            f"warning: {saved} was made for {[info.get(k) for k in key]}; validating again", file=sys.stderr
        )
    dense_ms = measure(model)
    limit_ms = budget.latency_ms or budget.latency_fraction * dense_ms
    rng = random.Random(cfg.seed)
    samples = [space.smallest(), space.dense()] + [
        space.decode({n: rng.randrange(len(c)) for n, c in space.choices.items()})
        for _ in range(cfg.lut_samples)
    ]
    report = lut.validate(samples, lambda w: measure(prune(model, example, w, cfg.importance)))
    guard = LatencyGuard(lut, dense_ms, limit_ms, bool(report["trusted"]), measure)
    if not guard.meets(space.smallest()):
        raise NasPruneError(
            f"no architecture in the space meets {budget.label()}: the smallest is predicted at "
            f"{lut.predict(space.smallest()):.3f} ms against a limit of {limit_ms:.3f} ms"
        )
    info = {**key, "dense_ms": dense_ms, "limit_ms": limit_ms, "trusted": guard.trusted}
    info.update({k: report[k] for k in ("median_error", "worst_error", "spearman", "pairs")})
    atomic_write_text(saved, json.dumps(info, indent=2, default=float))
    if not quiet:
        verdict = (
            "rejects proposals over the limit" if guard.trusted else "only orders proposals (not trusted)"
        )
        print(
            f"  dense {dense_ms:.3f} ms, limit {limit_ms:.3f} ms; LUT median error {info['median_error']:.1%}, "
            f"worst {info['worst_error']:.1%}, Spearman {info['spearman']:.2f}: it {verdict}"
        )
    return guard


def gate_seeds(
    cfg, model, example, space, cost, budget, data, device, run_dir: Path, guard, uniform, quiet
) -> list:
    """Train the gate supernet for ``--gate-epochs`` and return its seeds (``source = gates``).

    Its width distributions go to ``gates.csv`` (``gates.png`` is drawn from it). Weights step on the
    training split, architecture logits on the validation split (the search's split; never the test set).
    The supernet's cost term is expected FLOPs/parameters. With a latency budget it aims at the FLOPs of
    ``uniform``, the uniform seed that met the *measured* latency (a latency fraction is not a FLOPs
    fraction: at batch 1 a fixed overhead does not shrink), or the FLOPs budget if tighter; its seeds
    must also meet the measured latency.
    """
    from .gates import GateSettings, train_gates

    target = None
    if guard is not None:  # the FLOPs that fit the latency: those of the measured uniform seed
        fits = uniform if uniform is not None else space.smallest()
        target = min(budget.flops or 1.0, cost.cost(fits)[0] / cost.dense[0])
    settings = GateSettings(
        epochs=cfg.gate_epochs,
        importance=cfg.importance,
        num_seeds=cfg.gate_seeds,
        device=str(device),
        seed=cfg.seed,
        progress=not quiet,
        target_flops=target,
    )
    batch = min(cfg.batch_size, len(data.train), len(data.val))  # tiny splits still give full batches
    train = data.loader("train", batch, train=True, seed=cfg.seed, drop_last=True)
    val = data.loader("val", batch, train=True, augment=False, seed=cfg.seed + 1, drop_last=True)
    if not quiet:
        print(f"Training the gate supernet for {cfg.gate_epochs:g} epochs (--gate-epochs; 0 skips it) ...")
    result = train_gates(model, example, space, cost, budget, train, val, settings)
    result.history.to_csv(run_dir / "gates.csv", index=False)
    if guard is None:
        return result.seeds()
    check = guard.seed_check(model, example, cfg.importance)
    return [w for w in result.seeds() if check(w)]


def measure_latencies(
    run_dir, trials, dense, example, spec_model, cfg, guard, device, latency_fn
) -> pd.DataFrame:
    """Measure every trained candidate (complete or stopped early) that has no latency yet, one model at a
    time in this process, and judge a latency budget on the measured median against the run's limit."""
    trained = trials["state"].isin(["complete", "pruned"])
    todo = trials.index[trained & trials["latency_ms"].isna()]
    if len(todo) == 0 and guard is None:
        return trials
    if guard is not None:  # the limit's estimator, and its dense latency
        measure, dense_ms = guard.measure, guard.dense_ms
    else:
        timed = measure_fn(latency_fn)
        measure = lambda net: timed(net, example, device, cfg.latency_batch)  # noqa: E731
        dense_ms = measure(spec_model)
    label = device_label(device)
    for i in todo:
        widths = json.loads(trials.at[i, "widths"])
        ms = measure(prune(spec_model, example, widths, cfg.importance))
        trials.loc[i, ["latency_ms", "latency_ratio"]] = [ms, ms / dense_ms]
        trials.at[i, "latency_device"] = label
        trials.at[i, "latency_batch"] = cfg.latency_batch
    if guard is not None:
        trials.loc[trained, "feasible"] = trials.loc[trained, "feasible"] & (
            trials.loc[trained, "latency_ms"] <= guard.limit_ms
        )
        trials.loc[trials["state"] == "failed", "feasible"] = False  # never measured: not shown to meet it
    write_trials(run_dir / "trials.csv", trials)
    dense["latency_ms"] = dense_ms
    return trials


def search(
    config: SearchConfig | None = None,
    /,
    *,
    resume: str | os.PathLike | None = None,
    evaluate_fn: Callable = evaluate_candidate,
    ray_runtime_env: dict | None = None,
    latency_fn: Callable | None = None,
    quiet: bool = False,
    **settings: Any,
) -> pd.DataFrame:
    """Run (or ``resume``) a width search and return its trials as a DataFrame.

    Args:
        config: a :class:`SearchConfig`; or give its fields as keyword arguments.
        resume: a run directory to continue; its config.yaml is used, with ``trials``, ``workers``,
            ``time_budget`` and ``device`` taken from the keyword arguments when given.
        evaluate_fn: scores one candidate (default :func:`evaluate_candidate`); tests inject fakes.
        ray_runtime_env: passed to ``ray.init`` when this call starts Ray.
        latency_fn: ``(model, example_inputs, device, batch) -> ms`` instead of timing (tests inject one;
            DESIGN: tests of latency logic do not time).
        quiet: no progress bar or tables.

    Returns:
        trials.csv as a DataFrame (the run directory is ``df.attrs["run_dir"]``).
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise NasPruneError(
                f"--resume {run_dir}: no config.yaml there, so it is not a search run directory"
            )
        cfg = load_config(run_dir / "config.yaml")
        allowed = {"trials", "workers", "time_budget", "device", "ray_address"}
        unknown = set(settings) - allowed
        if unknown:
            raise NasPruneError(f"--resume keeps the run's settings; only {sorted(allowed)} may change")
        cfg = cfg.replace(**settings)
    else:
        cfg = (config or SearchConfig()).replace(**settings)
    cfg = validate(cfg)
    budget = make_budget(cfg)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_dir, seed=0, subset=cfg.subset)
    if resume is None:
        run_dir = Path(cfg.output) if cfg.output else default_output(cfg, budget)
        if (run_dir / "trials.csv").exists():
            raise NasPruneError(f"{run_dir} already holds a search; continue it with --resume {run_dir}")
        cfg = cfg.replace(output=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)

    example = torch.zeros(2, *data.input_shape)
    skeleton = create_model(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes)
    groups, space, cost = build_space(cfg, skeleton, example)
    require_reachable(budget, space, cost)  # before any training
    latency_device = torch.device("cpu") if device.type == "cpu" else device
    guard = latency_guard(
        cfg, budget, skeleton, example, space, run_dir, latency_device, latency_fn, resume is not None, quiet
    )
    model, spec = dense_model(cfg, data, run_dir, device)
    model = model.cpu().eval()
    dense_val = evaluate(model.to(device), data.loader("val", 512, train=False), device=device)["accuracy"]
    model = model.cpu()
    dense = {"macs": cost.dense[0], "params": cost.dense[1], "val_accuracy": dense_val}
    write_config(
        run_dir / "config.yaml",
        cfg,
        dense=dict(dense),
        space={"groups": len(space.choices), "size": space.size, "fixed": space.fixed},
    )

    trials = _load_trials(run_dir)
    study = open_study(run_dir, cfg.seed, cfg.startup_trials, cfg.sampler, latency=guard is not None)
    if len(study.trials) == 0:
        evaluator = _sensitivity_evaluator(data, cfg, device)
        constraint = guard.seed_check(model, example, cfg.importance) if guard is not None else None
        ctx = SeedContext(model, example, space, cost, budget, cfg.importance, evaluator, constraint)
        seeds = list(make_seeds(ctx, cfg.seeds).items())
        if cfg.gate_epochs > 0:
            known = [w for _, w in seeds]
            uniform = dict(seeds).get("uniform")
            gated = gate_seeds(
                cfg, model, example, space, cost, budget, data, device, run_dir, guard, uniform, quiet
            )
            seeds += [("gates", w) for w in gated if w not in known]
        for source, widths in seeds:
            study.enqueue_trial(space.encode(widths), user_attrs={"source": source})
    else:
        if len(trials):  # rewritten in the current schema, so appending rows keeps one header
            write_trials(run_dir / "trials.csv", trials)
        repair_interrupted(study, space, trials)
        trials = _load_trials(run_dir)
    trained = int(trials["state"].isin(["complete", "pruned", "failed"]).sum()) if len(trials) else 0
    to_train = max(0, cfg.trials - trained)
    if not quiet:
        print(
            f"Run directory: {run_dir}  ({len(space.choices)} searched groups, {space.size:.3g} architectures; "
            f"dense: {dense['macs'] / 1e6:.1f} MMACs, val accuracy {dense_val:.4f})"
        )
    if to_train:
        _tune(
            cfg,
            run_dir,
            space,
            cost,
            budget,
            study,
            data,
            spec,
            model,
            to_train,
            evaluate_fn,
            ray_runtime_env,
            guard,
            quiet,
        )

    trials = _load_trials(run_dir)
    trials = measure_latencies(run_dir, trials, dense, example, model, cfg, guard, latency_device, latency_fn)
    objectives = ("val_accuracy", "flops", "latency_ms") if guard else ("val_accuracy", "flops")
    front = write_pareto(run_dir, objectives)
    write_best_arch(run_dir, model=cfg.model, dataset=cfg.dataset, dense=dense)
    _plots(run_dir, trials, front, dense, cfg, space, budget)
    if not quiet:
        _summary(run_dir, trials, front, cfg)
    trials.attrs["run_dir"] = str(run_dir)
    return trials


def _tune(
    cfg,
    run_dir,
    space,
    cost,
    budget,
    study,
    data,
    spec,
    model,
    to_train,
    evaluate_fn,
    runtime_env,
    guard,
    quiet,
):
    from ray import tune
    from tqdm import tqdm

    started = start_ray(cfg.ray_address, runtime_env)
    try:
        import ray

        resources = ray.cluster_resources()
        if resources.get("GPU", 0) < cfg.gpus_per_trial:
            raise NasPruneError(
                f"--gpus-per-trial {cfg.gpus_per_trial:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs"
            )
        cpus = int(resources.get("CPU", os.cpu_count() or 1))
        cpus_per_trial = max(1, cpus // cfg.workers)
        trial_device = "cuda" if cfg.gpus_per_trial > 0 else "cpu"  # Ray hides GPUs from GPU-less trials
        settings = TrialSettings(
            spec=spec,
            dense_state={k: v.cpu() for k, v in model.state_dict().items()},
            dataset=cfg.dataset,
            data_dir=cfg.data_dir,
            subset=cfg.subset,
            epochs=cfg.epochs_per_trial,
            reports=cfg.reports_per_trial,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            importance=cfg.importance,
            device=trial_device,
            threads=cpus_per_trial,
            seed=cfg.seed,
            extra=dict(cfg.extra),
        )
        bar = tqdm(total=to_train, desc="search", unit="trial", disable=quiet, dynamic_ncols=True)
        best = {"acc": float("nan"), "infeasible": 0}

        def on_row(row):
            if row["state"] == "infeasible":
                best["infeasible"] += 1
            else:
                bar.update(1)
                if row["state"] == "complete" and not best["acc"] >= row["val_accuracy"]:
                    best["acc"] = row["val_accuracy"]
            bar.set_postfix(best=f"{best['acc']:.4f}", infeasible=best["infeasible"], refresh=True)

        startup = cfg.startup_trials if cfg.sampler == "tpe" else math.inf  # random: every proposal
        searcher = WidthSearcher(
            study, space, cost, budget, run_dir, to_train, cfg.reports_per_trial, startup, on_row, guard
        )
        # ASHA compares accuracy only, which favours wide models; the mildest setting (keep the top half,
        # first decision halfway through fine-tuning) stops hopeless trials without gutting the
        # low-FLOP end of the front.
        scheduler = SeedProtectingASHA(
            time_attr="step",
            metric="val_accuracy",
            mode="max",
            max_t=cfg.reports_per_trial,
            grace_period=max(1, cfg.reports_per_trial // 2),
            reduction_factor=2,
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, settings=settings, evaluate_fn=evaluate_fn),
            {"cpu": cpus_per_trial, "gpu": cfg.gpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=-1,
                max_concurrent_trials=cfg.workers,
                reuse_actors=True,
                time_budget_s=cfg.time_budget,
            ),
            run_config=tune.RunConfig(
                name=f"tune-{int(time.time())}",
                storage_path=str((run_dir / "ray").resolve()),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
        bar.close()
    finally:
        if started:
            import ray

            ray.shutdown()


def _plots(run_dir, trials, front, dense, cfg, space, budget) -> None:
    from .plots import plot_gates, plot_pareto, plot_progress, plot_widths
    from .results import best_arch

    title = f"{cfg.model} on {cfg.dataset}, {budget.label()}"
    plot_pareto(
        trials, front, run_dir / "pareto.png", dense=dense, budget_flops_ratio=budget.flops, title=title
    )
    plot_progress(trials, run_dir / "progress.png", budget_note=budget.label())
    if (run_dir / "gates.csv").is_file():
        plot_gates(pd.read_csv(run_dir / "gates.csv"), run_dir / "gates.png", title=f"gate supernet: {title}")
    best = best_arch(trials)
    if best is not None:
        dense_widths = space.dense()
        plot_widths(
            dense_widths,
            json.loads(best["widths"]),
            run_dir / "widths.png",
            title=f"best architecture (trial {int(best['trial_id'])}): kept channels per group",
        )


def _summary(run_dir: Path, trials: pd.DataFrame, front: pd.DataFrame, cfg: SearchConfig) -> None:
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    sources = trials.loc[trials["state"] != "infeasible", "source"]
    model_share = (sources == "optuna").mean() if len(sources) else 0.0
    print(
        f"\nProposals: {len(trials)} ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
        f"{model_share:.0%} of trained candidates came from the sampler's model (not start-up or seeds)."
    )
    if len(front):
        cols = ["trial_id", "source", "val_accuracy", "flops_ratio", "params_ratio", "latency_ms", "epochs"]
        print("\nPareto front (pareto.csv):")
        print(front[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"\nNext: python -m nas_prune.retrain {run_dir}   (trains best_arch.json from scratch)")
    else:
        print("\nNo complete feasible trial yet: more --trials or a looser budget.")
    trained = int(trials["state"].isin(["complete", "pruned", "failed"]).sum()) if len(trials) else 0
    if trained < cfg.trials:
        print(
            f"Stopped after {trained} of {cfg.trials} trials; continue with: "
            f"python -m nas_prune.search --resume {run_dir}"
        )
    print(
        "Scale up: --trials, --epochs-per-trial, --workers, --device cuda --gpus-per-trial 0.5, "
        "--ray-address HOST:PORT (a Ray cluster)."
    )


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _parser() -> ArgumentParser:
    d = SearchConfig()
    p = ArgumentParser(
        prog="python -m nas_prune.search",
        description="Search per-layer channel widths of a CNN under FLOP/parameter/latency budgets and "
        "write the Pareto front (accuracy vs FLOPs vs latency) to a run directory.",
        epilog="Example: python -m nas_prune.search --budget-flops 0.3   (Fashion-MNIST, convnet, ~10 min on "
        "2 CPU cores). Scale up with --trials, --epochs-per-trial, --workers, --device cuda, --ray-address.",
    )
    b = p.add_argument_group("budgets (at least one; all given must hold)")
    b.add_argument(
        "--budget-flops", type=float, help="keep at most this fraction of the dense FLOPs, in (0, 1]"
    )
    b.add_argument("--budget-params", type=float, help="keep at most this fraction of the dense parameters")
    b.add_argument(
        "--budget-latency", help="0.8 = fraction of the dense model's measured latency; 12ms = absolute"
    )
    b.add_argument(
        "--latency-batch", type=int, help=f"batch size latency is measured at (default {d.latency_batch})"
    )
    b.add_argument(
        "--lut-dir",
        help=f"cache of the per-layer latency lookup table, one file per device (default {d.lut_dir})",
    )
    b.add_argument(
        "--lut-samples",
        type=int,
        help=f"random architectures the LUT is validated on before it may reject (default {d.lut_samples})",
    )
    m = p.add_argument_group("model and data")
    m.add_argument(
        "--model", help="zoo name or pkg.module:factory (default: convnet for 28x28 data, else resnet20)"
    )
    m.add_argument("--checkpoint", help="dense weights (nas_prune checkpoint); default: train them first")
    m.add_argument(
        "--pretrain-epochs",
        type=float,
        help=f"epochs to train the dense model (default {d.pretrain_epochs:g})",
    )
    m.add_argument(
        "--dataset",
        help=f"fashion-mnist, mnist, cifar10, cifar100, synthetic or pkg.module:factory "
        f"(default {d.dataset})",
    )
    m.add_argument("--data-dir", help="folder searched first for the dataset files")
    m.add_argument("--subset", type=int, help="use a fixed random subset of N training images (quick runs)")
    s = p.add_argument_group("search")
    s.add_argument(
        "--trials",
        type=int,
        help=f"candidates to train in total, seeds included, also on resume (default {d.trials})",
    )
    s.add_argument(
        "--epochs-per-trial",
        type=float,
        help=f"fine-tuning epochs per candidate, fractions allowed (default {d.epochs_per_trial:g})",
    )
    s.add_argument("--workers", type=int, help=f"trials run concurrently (default {d.workers})")
    s.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractions allowed (default 0)")
    s.add_argument("--device", help="auto, cpu or cuda for the dense model and latency (default auto)")
    s.add_argument("--ray-address", help="join an existing Ray cluster (default: a local Ray on 127.0.0.1)")
    s.add_argument("--seed", type=int, help="seed of the sampler, seeds and fine-tuning (default 0)")
    s.add_argument("--time-budget", type=float, help="stop starting trials after this many seconds")
    s.add_argument("--importance", help="channel importance when slimming: l2 (default), l1, bn_scale")
    s.add_argument(
        "--round-to", type=int, help="widths are multiples of this (default: the model's search space)"
    )
    s.add_argument(
        "--min-fraction", type=float, help="narrowest width per group as a fraction (default: search space)"
    )
    s.add_argument(
        "--seeds", nargs="*", help=f"seed architectures evaluated first (default: {' '.join(d.seeds)})"
    )
    s.add_argument(
        "--sampler",
        help="tpe (default: Optuna's constrained multi-objective TPE) or random (uniform random widths, "
        "the control a search must beat)",
    )
    s.add_argument(
        "--gate-epochs",
        type=float,
        help=f"epochs of the ProxylessNAS-style gate supernet whose best architectures seed the search "
        f"(source gates; default {d.gate_epochs:g}, 0 disables it)",
    )
    s.add_argument(
        "--gate-seeds", type=int, help=f"architectures the gate supernet seeds (default {d.gate_seeds})"
    )
    s.add_argument("--lr", type=float, help=f"fine-tuning learning rate (default {d.lr:g})")
    o = p.add_argument_group("output")
    o.add_argument("--output", help="run directory (default results/<model>-<dataset>-<budget>-<timestamp>)")
    o.add_argument("--resume", help="continue the run in this directory (finished trials are kept)")
    o.add_argument(
        "--dry-run", action="store_true", help="print groups, space size, dense cost and seeds; exit"
    )
    return p


def _dry_run(cfg: SearchConfig) -> None:
    cfg = validate(cfg)
    budget = make_budget(cfg)
    data = load_dataset(cfg.dataset, cfg.data_dir, subset=cfg.subset)
    example = torch.zeros(2, *data.input_shape)
    model = create_model(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes)
    if cfg.checkpoint:
        _load_weights(model, cfg.checkpoint, cfg.model)
    groups, space, cost = build_space(cfg, model, example)
    require_reachable(budget, space, cost)
    print(
        f"{cfg.model} on {cfg.dataset}: {cost.dense[0] / 1e6:.2f} MMACs ({2 * cost.dense[0] / 1e6:.2f} MFLOPs), "
        f"{cost.dense[1] / 1e6:.3f} M params; budget {budget.label()}"
    )
    for g in groups:
        choice = space.choices.get(g.name)
        print(
            f"  {g.name:40s} {g.channels:5d} ch  "
            + (f"choices {choice}" if choice else f"fixed ({g.reason or 'frozen'})")
        )
    print(f"space: {space.size:.3g} architectures")
    if budget.latency_ms or budget.latency_fraction:
        print("latency budget: judged by the latency LUT during the search; the seeds below ignore it")
    ctx = SeedContext(model, example, space, cost, budget, cfg.importance, None)
    for name, widths in make_seeds(ctx, tuple(s for s in cfg.seeds if s != "sensitivity")).items():
        macs, _ = cost.cost(widths)
        note = (
            " (ranked on untrained weights: give --checkpoint)" if name == "l2" and not cfg.checkpoint else ""
        )
        print(f"seed {name}: flops ratio {macs / cost.dense[0]:.3f}{note} {widths}")


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    resume, dry_run = args.pop("resume"), args.pop("dry_run")
    given = {k: (tuple(v) if k == "seeds" else v) for k, v in args.items() if v is not None}
    if resume:
        search(resume=resume, **given)
    elif dry_run:
        _dry_run(SearchConfig(**given))
    else:
        search(SearchConfig(**given))


class _CallableModule(types.ModuleType):
    """``nas_prune.search(...)`` is both this module and the function :func:`search`."""

    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(run_cli(main))
