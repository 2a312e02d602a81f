"""Timing entries and whole models on the device, in rounds.

Each entry times a fresh module (or op) of the key's shape alone with
:func:`~nas_prune.cost.measure_latency` (warm-up, then the median of the repeats); a call's Python
overhead is in its entry because every call in the network pays it too. Everything is timed
``rounds`` times, in rounds over all that is to be timed, and the fastest round kept: a busy moment on a
shared machine only ever adds time, and it then spoils one round of an entry, not the entry. Whole
models are timed the same way, each round in a new random order (:func:`in_rounds`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..batch import batch_size
from ..cost import measure_latency
from .slots import Slot, build

MeasureFn = Callable[[nn.Module, Any, torch.device], float]
"""``measure_fn(module, inputs, device) -> ms``: ``inputs`` is the input shape with batch (a tuple of
ints) for a layer and for a model with one input tensor, and the inputs themselves (zeros at the LUT's
batch, as the model takes them: a tuple or a dict) for a model with several."""


def _is_shape(inputs: Any) -> bool:
    return isinstance(inputs, (tuple, list)) and all(isinstance(d, int) for d in inputs)


def in_rounds(
    models: Sequence[nn.Module], measure: Callable[[nn.Module], float], rounds: int, seed: int = 0
) -> list[float]:
    """The fastest of ``rounds`` timings of each model by ``measure(model) -> ms``, timed in rounds over
    all of them, each round in a new random order.

    What is compared (a fit and the architectures held out from it, a candidate and the dense model) must
    be timed under the same conditions: a shared machine's speed drifts by more than a LUT's error within
    minutes, and models timed one after the other in a fixed order would carry that drift as their
    difference.
    """
    rng = random.Random(seed)
    best = [math.inf] * len(models)
    for _ in range(rounds):
        for i in rng.sample(range(len(models)), len(models)):
            best[i] = min(best[i], float(measure(models[i])))
    return best


class Timer:
    """Times slots at given channels, and whole models, with ``measure_fn`` (default: :meth:`time`)."""

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        batch: int,
        rounds: int,
        threads: int | None,
        measure_fn: MeasureFn | None,
    ):
        self.device, self.dtype, self.batch, self.rounds, self.threads = device, dtype, batch, rounds, threads
        self.measure = measure_fn or self.time

    def time(self, module: nn.Module, shape: Any, device: torch.device) -> float:
        """Default ``measure_fn``: :func:`measure_latency` on a zero input of ``shape`` (or on ``shape``
        itself, a model's inputs, see :data:`MeasureFn`), 10 ms of blocks for a layer (thousands of
        entries are timed), 100 ms for a whole model."""
        example = torch.zeros(shape, dtype=self.dtype) if _is_shape(shape) else shape
        seconds = 0.1 if any(module.children()) else 0.01
        return measure_latency(
            module,
            example,
            device=device,
            batch=batch_size(example),
            threads=self.threads,
            min_run_time=seconds,
        )

    def slot(self, slot: Slot, cin: int, cout: int, groups: int) -> float:
        """One timing of a fresh module shaped like ``slot`` at the given channels."""
        module = build(slot, cin, cout, groups).to(self.dtype).eval()
        if slot.kind == "linear":
            shape = (self.batch, *slot.size, cin)
        else:
            shape = (self.batch, cin, *slot.size)
        return float(self.measure(module, shape, self.device))

    def entries(
        self, todo: Mapping[str, tuple], also: Callable[[], float] | None = None, bar=None
    ) -> tuple[dict[str, float], list[float]]:
        """The fastest of :attr:`rounds` timings of each ``{key: (slot, in, out, groups)}``.

        ``also`` (the dense model, for the constant) is timed once per round too, and its times returned.
        ``bar`` (a tqdm bar) advances once per timing of an entry.
        """
        times: dict[str, list[float]] = {key: [] for key in todo}
        also_times = []
        for _ in range(self.rounds):
            for key, (slot, cin, cout, groups) in todo.items():
                times[key].append(self.slot(slot, cin, cout, groups))
                if bar is not None:
                    bar.update(1)
            if also is not None:
                also_times.append(float(also()))
        return {key: min(t) for key, t in times.items()}, also_times

    def pruned(
        self,
        dense: nn.Module,
        example: Any,
        inputs: Any,
        samples: Sequence[Mapping[str, int]],
        seed: int = 0,
    ) -> list[float]:
        """``dense`` pruned to each of ``samples`` (``{}``: the dense model) on ``example`` (a batch it
        takes), timed by :func:`in_rounds` with ``measure_fn``'s ``inputs`` (see :data:`MeasureFn`)."""
        from ..prune import prune  # prune imports the graph; keep this package importable on its own

        models = [prune(dense, example, dict(w)) for w in samples]
        return in_rounds(models, lambda m: self.measure(m, inputs, self.device), self.rounds, seed)
