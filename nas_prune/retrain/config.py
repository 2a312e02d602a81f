"""The settings of one retrain: :class:`RetrainConfig`, also the flags of ``python -m nas_prune.retrain``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..cli import option
from ..errors import NasPruneError
from ..task import ALPHA, TEMPERATURE

__all__ = ["DEFAULT_LR", "INHERIT_FROM", "INITS", "RetrainConfig"]

INITS = ("scratch", "inherit")
INHERIT_FROM = ("supernet", "dense")
DEFAULT_LR = {"scratch": 0.1, "inherit": 0.01}


@dataclass(frozen=True)
class RetrainConfig:
    """Which architecture of a run to retrain and how (the flags of ``python -m nas_prune.retrain``)."""

    rank: int | None = option(
        None,
        "K-th most accurate architecture of pareto.csv (ties: fewer FLOPs, then lower trial_id); "
        "0 = best_arch.json (default: 0)",
    )
    trial: int | None = option(None, "retrain this trial_id of trials.csv instead of a --rank")
    top: int | None = option(
        None,
        "retrain the K most accurate complete feasible top-rung architectures of trials.csv with "
        "identical settings, as parallel Ray Tune trials, and pick the best by validation score "
        "(RUN_DIR/retrain/top.json); Tune's results live in RUN_DIR/retrain/tune/ and rerunning the "
        "same command resumes an interrupted run",
        metavar="K",
    )
    asha: bool = option(
        False,
        "with --top: an ASHA scheduler on the validation score stops the worse half of the finalists "
        "at each rung of epochs (1, 2, 4, ...); stopped finalists are not reported",
        show_default=False,
    )
    ray_address: str | None = option(
        None, "with --top: join this Ray cluster (RUN_DIR must be on storage every node shares)"
    )
    epochs: float | None = option(
        None,
        "training epochs, fractions allowed (default: as many as the dense model was trained, "
        "from dense.pt or the run's --pretrain-epochs)",
    )
    init: str = option(
        "scratch",
        "scratch: re-initialise the weights (fixed seed) and train; inherit: keep the dense model's "
        "kept filters, re-estimate BatchNorm statistics and fine-tune",
        choices=INITS,
    )
    inherit_from: str | None = option(
        None,
        "with --init inherit: start from the dense model's kept filters (default; measured better "
        "after the final fine-tune) or from the search's width-shared supernet (RUN_DIR/supernet.pt, "
        "sliced by its channel ranking)",
        choices=INHERIT_FROM,
        show_default=False,
    )
    budget_matched: bool = option(
        False,
        "multiply the epochs by dense FLOPs / pruned FLOPs, so training costs what the dense "
        "model's did (Scratch-B of Liu et al. 2019)",
        show_default=False,
    )
    distill: bool = option(
        False,
        "knowledge distillation from the dense model through the task's distill_loss; classification: "
        "alpha * T^2 * KL(teacher || student) + (1 - alpha) * cross-entropy",
        show_default=False,
    )
    temperature: float = option(TEMPERATURE, "distillation temperature T (with --distill)")
    alpha: float = option(ALPHA, "weight of the distillation term, in [0, 1] (with --distill)")
    seed: int | None = option(None, "seed of initialisation and batch order (default: the run's seed)")
    device: str = option("auto", "auto, cpu or cuda, for training and latency")
    batch_size: int | None = option(None, "training batch size (default: the run's batch size)")
    lr: float | None = option(
        None, "peak SGD learning rate, cosine decay to 0 (default: 0.1 with scratch, 0.01 with inherit)"
    )
    weight_decay: float = option(5e-4, "weight decay on conv/linear weights")
    latency_batch_large: int = option(
        256,
        "batch of the second (throughput) latency measurement; the first uses the run's --latency-batch",
    )
    export: bool = option(
        True,
        "the ONNX (or torch.export .pt2) export and its check (--no-export skips them)",
        show_default=False,
    )

    def replace(self, **changes: Any) -> RetrainConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> RetrainConfig:
        """Cheap checks before any work (returns self).

        Raises:
            NasPruneError: the first bad setting, named by its flag.
        """
        if self.rank is not None and self.trial is not None:
            raise NasPruneError("give either --rank or --trial, not both")
        if self.init not in INITS:
            raise NasPruneError(f"--init must be scratch or inherit, got {self.init!r}")
        if self.inherit_from is not None and self.inherit_from not in INHERIT_FROM:
            raise NasPruneError(f"--inherit-from must be supernet or dense, got {self.inherit_from!r}")
        if self.inherit_from is not None and self.init != "inherit":
            raise NasPruneError("--inherit-from only applies with --init inherit")
        self._validate_top()
        _check_number("--epochs", self.epochs, 0.0)
        _check_number("--lr", self.lr, 0.0)
        _check_number("--weight-decay", self.weight_decay, 0.0, closed=True)
        _check_number("--temperature", self.temperature, 0.0)
        _check_number("--alpha", self.alpha, 0.0, 1.0, closed=True)
        for name, value in (
            ("--batch-size", self.batch_size),
            ("--latency-batch-large", self.latency_batch_large),
        ):
            if value is not None and int(value) < 1:
                raise NasPruneError(f"{name} must be at least 1, got {value}")
        return self

    def _validate_top(self) -> None:
        if self.top is not None:
            if self.trial is not None or self.rank is not None:
                raise NasPruneError("give --top K or a single architecture (--rank, --trial), not both")
            if int(self.top) < 1:
                raise NasPruneError(f"--top must be at least 1, got {self.top}")
        elif self.asha or self.ray_address is not None:
            raise NasPruneError("--asha and --ray-address only apply with --top K")


def _check_number(name: str, value: float | None, low: float, high: float = math.inf, closed: bool = False):
    if value is None:
        return
    ok = math.isfinite(value) and (low <= value if closed else low < value) and value <= high
    if not ok:
        span = f"in [{low:g}, {high:g}]" if high < math.inf else ("a number >= 0" if closed else "positive")
        raise NasPruneError(f"{name} must be {span}, got {value}")
