"""A width-shared supernet: the dense weights trained so that every width on the grid works.

Rung 0 scores a candidate without fine-tuning. Sliced from the dense weights, a narrow candidate scores
near chance at aggressive budgets (issue 24: every rung-0 score of a 10%-FLOPs resnet20 search was
0.06-0.22 on ten classes), so the ladder promotes almost at random. A supernet trained to be sliced
(AutoSlim, Yu & Huang 2019; BigNAS; OFA) fixes that: any sub-network then scores near what it would
reach after training, and the ranking follows.

Training follows the *sandwich rule*: each step trains the largest width with the task's loss, then
the smallest and ``random_widths`` random grid widths with *in-place distillation* from the largest's
outputs (the task's ``distill_loss``; the task's own loss for a task without one), gradients summed,
one optimiser step. Channels stay in the dense model's importance order: :class:`~nas_prune.gates.WidthGates`
masks every width to its top channels by the dense model's scores, and :attr:`Supernet.ranking` keeps
those scores, so ``prune(supernet_model, example, widths, importance=ranking)`` keeps exactly the
channels that width was trained with.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .atomic import atomic_torch_save
from .batch import to_device
from .gates import WidthGates
from .prune import channel_importance
from .resumable import LoopState, Resumable
from .space import WidthSpace
from .task import Task, loss_and_metrics
from .train import epoch_seed, make_optimizer, make_scheduler, resolve_device, seed_everything

__all__ = [
    "Sampler",
    "Supernet",
    "SupernetSettings",
    "load_supernet",
    "save_supernet",
    "supernet_key",
    "train_supernet",
]

Sampler = Callable[[random.Random], dict[str, int]]
"""Draws one student architecture (group -> width) from a random generator."""


@dataclass(frozen=True)
class SupernetSettings:
    """How the supernet is trained: ``epochs`` passes over the task's training split (fractions
    allowed), each step the largest, the smallest and ``random_widths`` random widths; SGD at ``lr``
    with a cosine schedule, the summed gradient clipped to norm ``grad_clip`` (None: not clipped);
    channels ranked by ``importance`` on the dense weights.

    Why the search clips (``--supernet-grad-clip``, default 5; results/BENCHMARKS.md): unclipped, the
    narrow students' distillation gradients, summed with the largest's, can wreck the dense weights
    early (resnet20 at 30% of the FLOPs: the largest width's loss rose from 0.42 to 7.5 within 50
    steps, and that 1-epoch supernet's sub-networks scored 10 points below another's). Clipped to norm
    5 the largest stays under 1 and rung 0 ranked as well as a good unclipped supernet (Kendall 0.55);
    clipped to 1, every step is small and the students learn too little in an epoch (Kendall 0.52)."""

    epochs: float
    random_widths: int = 2
    lr: float = 0.01
    weight_decay: float = 5e-4
    batch_size: int = 128
    importance: str = "l2"
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    grad_clip: float | None = None


@dataclass
class Supernet:
    """Trained shared weights and the channel ranking that slices them.

    Attributes:
        state_dict: the supernet's weights, shaped like the dense model's.
        ranking: group -> one score per channel (the dense model's), what width ``w`` keeps the top ``w`` of;
            pass it to :func:`nas_prune.prune` as ``importance``.
        history: per logged step: ``step``, ``epoch``, ``largest_loss``, ``distill_loss``.
    """

    state_dict: dict[str, torch.Tensor]
    ranking: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)

    def model(self, dense: nn.Module) -> nn.Module:
        """A copy of ``dense`` carrying the supernet's weights (slice it with ``importance=ranking``)."""
        model = copy.deepcopy(dense)
        model.load_state_dict(self.state_dict)
        return model


def _widths(
    space: WidthSpace, rng: random.Random, count: int, sample: Sampler | None
) -> list[dict[str, int]]:
    """The sandwich's student widths: the smallest, then ``count`` draws of ``sample`` (uniform on the
    grid without one)."""
    draw = sample or space.random
    return [space.smallest(), *(draw(rng) for _ in range(count))]


def _loader(task: Task, settings: SupernetSettings, device: torch.device, index: int) -> Any:
    """Pass ``index`` over the training split, shuffled with :func:`~nas_prune.train.epoch_seed`."""
    drop_last = task.size("train") > settings.batch_size  # a ragged batch of one would break BatchNorm
    return task.loader("train", settings.batch_size, train=True, seed=epoch_seed(settings.seed, index),
                       device=device, drop_last=drop_last)  # fmt: skip


def _batches(task: Task, settings: SupernetSettings, device: torch.device, start: int, per_pass: int) -> Any:
    """The training batches from step ``start`` on; every pass has its own seed, so a resumed run sees
    the batches it would have seen."""
    first, skip = divmod(start, per_pass)
    passes = (_loader(task, settings, device, index) for index in itertools.count(first))
    return itertools.islice(itertools.chain.from_iterable(passes), skip, None)


def train_supernet(
    model: nn.Module,
    example_inputs: Any,
    space: WidthSpace,
    task: Task,
    settings: SupernetSettings,
    sample: Sampler | None = None,
    resumable: Resumable | None = None,
) -> Supernet:
    """Train a width-shared supernet from ``model``'s weights with the sandwich rule (module docstring).

    ``sample(rng) -> widths`` draws the random students (default: uniform on the grid). The search passes
    random architectures projected onto its budget, so the shared weights are trained where its
    candidates are. ``resumable`` keeps a run that is killed from losing more than ``every_s`` seconds.
    ``model`` is left unchanged. Raises :class:`~nas_prune.task.TaskError` for a task whose step or
    distillation loss is not a scalar.
    """
    if not (settings.epochs > 0 and math.isfinite(settings.epochs)):
        raise ValueError(f"supernet epochs must be a positive number, got {settings.epochs}")
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    ranking = channel_importance(model, example_inputs, settings.importance)
    rng = random.Random(settings.seed)
    distill = task.distill_loss
    with WidthGates(model, example_inputs, space, settings.importance) as net:
        net.model.to(device).train()
        net.to(device)
        per_pass = len(_loader(task, settings, device, 0))
        steps = max(1, math.ceil(settings.epochs * per_pass))
        optimizer = make_optimizer(net.model, lr=settings.lr, weight_decay=settings.weight_decay)
        schedule = make_scheduler(optimizer, steps)
        state = LoopState(resumable, model=net.model, optimizer=optimizer, schedule=schedule, rng=rng)
        done, history = state.restore()
        history, batches = history or [], _batches(task, settings, device, done, per_pass)
        bar = tqdm(range(done + 1, steps + 1), desc="supernet", disable=not settings.progress, leave=False,
                   initial=done, total=steps)  # fmt: skip
        for step in bar:
            batch = to_device(next(batches), device)
            optimizer.zero_grad(set_to_none=True)
            net.set_widths(space.dense())
            largest = loss_and_metrics(task.training_step(net, batch))[0]
            largest.backward()
            with torch.no_grad():
                teacher = task.forward(net, batch)
            students = 0.0
            for widths in _widths(space, rng, settings.random_widths, sample):
                net.set_widths(widths)
                out = task.forward(net, batch) if distill is not None else None
                loss = distill(teacher, out, batch) if distill is not None else task.training_step(net, batch)
                loss = loss_and_metrics(loss)[0]
                loss.backward()
                students += loss.item()
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(net.model.parameters(), settings.grad_clip)
            optimizer.step()
            schedule.step()
            if step % max(1, steps // 50) == 0 or step == steps:
                history.append({"step": step, "epoch": step / per_pass, "largest_loss": largest.item(),
                                "distill_loss": students / (1 + settings.random_widths)})  # fmt: skip
                bar.set_postfix(
                    largest=f"{largest.item():.3f}", students=f"{history[-1]['distill_loss']:.3f}"
                )
            if step < steps:
                state.save_if_due(step, history)
        weights = {k: v.detach().cpu().clone() for k, v in net.model.state_dict().items()}
    state.finish()
    return Supernet(weights, {k: v.cpu() for k, v in ranking.items()}, history)


def supernet_key(settings: SupernetSettings, students: str) -> dict[str, Any]:
    """What a saved supernet must have been trained with to be reused: the settings that change its
    weights, and where its random ``students`` came from (``budget``: on-budget architectures;
    ``grid``: uniform on the grid). Unclipped supernets keep the key they had before ``grad_clip``."""
    key = {"epochs": float(settings.epochs), "random_widths": int(settings.random_widths), "lr": float(settings.lr),
           "batch_size": int(settings.batch_size), "importance": settings.importance, "seed": int(settings.seed),
           "students": students}  # fmt: skip
    return key if settings.grad_clip is None else {**key, "grad_clip": float(settings.grad_clip)}


def save_supernet(path: str | Path, supernet: Supernet, settings: Mapping[str, Any]) -> Path:
    """Write the supernet (weights, ranking, history, the ``settings`` it was trained with) atomically;
    tensors and plain data only."""
    payload = {"state_dict": supernet.state_dict, "ranking": supernet.ranking, "history": supernet.history,
               "settings": dict(settings)}  # fmt: skip
    return atomic_torch_save(payload, Path(path))


def load_supernet(path: str | Path, settings: Mapping[str, Any] | None) -> Supernet | None:
    """The supernet at ``path`` if it was trained with these ``settings`` (else None: train it again);
    ``settings=None`` takes it whatever its settings (a retrain inheriting from the run's supernet)."""
    path = Path(path)
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if settings is not None and payload.get("settings") != dict(settings):
        return None
    return Supernet(payload["state_dict"], payload["ranking"], payload.get("history", []))
