"""Training loops that survive a kill: their whole state written every minute and continued from there.

The width-shared supernet (:mod:`nas_prune.supernet`) and the gate supernet (:mod:`nas_prune.gates`) each
train for many minutes in one loop of steps, with no epoch boundary to checkpoint at (issue 24: a killed
benchmark lost a 2-epoch supernet's 56 minutes). :class:`Resumable` says where such a loop keeps its
state and what it must have been written with; :class:`LoopState` saves and restores it: the parts the
loop names (modules, optimisers, schedules: anything with ``state_dict``; ``random.Random``;
``torch.Generator``; a dict of tensors), torch's global generators, the step and the loop's history. A
loop that also replays its data to the same position continues bit for bit where the arithmetic is
deterministic (a CPU).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_torch_save

__all__ = ["LoopState", "Resumable"]


@dataclass(frozen=True)
class Resumable:
    """Where a loop keeps its state (``path``, written at most every ``every_s`` seconds) and what it
    must have been written with to be continued (``key``, plain data). A file with another key is
    ignored and overwritten; it is removed once the loop ends."""

    path: Path
    key: Mapping[str, Any]
    every_s: float = 60.0


def _state_of(part: Any) -> Any:
    if isinstance(part, random.Random):
        return part.getstate()
    if isinstance(part, torch.Generator):
        return part.get_state()
    if isinstance(part, dict):
        return {name: tensor.detach().clone() for name, tensor in part.items()}
    return part.state_dict()


def _load_into(part: Any, state: Any) -> None:
    if isinstance(part, random.Random):
        part.setstate(state)
    elif isinstance(part, torch.Generator):
        part.set_state(state)
    elif isinstance(part, dict):
        with torch.no_grad():
            for name, tensor in part.items():
                tensor.copy_(state[name])
    else:
        part.load_state_dict(state)


class LoopState:
    """Saves and restores one loop's ``parts`` (name -> object, see the module docstring) for
    ``resumable`` (None: does nothing)."""

    def __init__(self, resumable: Resumable | None, **parts: Any):
        self.resumable, self.parts = resumable, parts
        self._saved = time.monotonic()

    def restore(self) -> tuple[int, Any]:
        """(steps done, the history saved with them) with every part restored; (0, None) when there is
        no file or it was written with another key."""
        if self.resumable is None or not self.resumable.path.is_file():
            return 0, None
        state = torch.load(self.resumable.path, map_location="cpu", weights_only=True)
        if state.get("key") != dict(self.resumable.key):
            return 0, None
        for name, part in self.parts.items():
            _load_into(part, state["parts"][name])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self._saved = time.monotonic()
        return int(state["step"]), state["history"]

    def save_if_due(self, step: int, history: Any) -> None:
        """Write the state after ``step`` finished steps if ``every_s`` has passed since the last write.
        Call it between steps only (never with a step half done)."""
        if self.resumable is None or time.monotonic() - self._saved < self.resumable.every_s:
            return
        state = {"key": dict(self.resumable.key), "step": step, "history": history,
                 "parts": {name: _state_of(part) for name, part in self.parts.items()},
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}  # fmt: skip
        atomic_torch_save(state, self.resumable.path)
        self._saved = time.monotonic()

    def finish(self) -> None:
        """The loop ended: its state file is no longer needed."""
        if self.resumable is not None:
            self.resumable.path.unlink(missing_ok=True)
