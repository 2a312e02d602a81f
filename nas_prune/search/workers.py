"""Ray workers that evaluate candidates in batches; each holds the dense model and the data once.

A rung-0 evaluation takes a couple of seconds; a Ray Tune trial per candidate (the first design) cost
more than that in set-up. So ``--workers`` long-lived actors each build a
:class:`~nas_prune.objective.CandidateEvaluator` once, and the driver sends them lists of jobs (several
rung-0 candidates per call, one fine-tune per call). Each actor has two calls queued, so it never waits
for the driver. The same actors run on a Ray cluster with ``--ray-address``.

A job that raises (NaN loss, out of memory, a bug in a user model) comes back as an ``error`` result.
A worker process that dies (killed, out of host memory, a crash in native code) is restarted by Ray
and its calls are retried on the restarted actor (``max_restarts``, ``max_task_retries``), so nothing
is lost; only when the retries are spent do its jobs come back failed, and a new actor takes over.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ray

from ..errors import NasPruneError
from ..objective import CandidateEvaluator, TrialSettings

__all__ = ["MAX_RESTARTS", "MAX_TASK_RETRIES", "Job", "WorkerPool", "ship_by_value", "start_ray"]

MAX_RESTARTS = 3  # Ray restarts a dead worker this often ...
MAX_TASK_RETRIES = 2  # ... and reruns each of its calls this often: a candidate that kills it thrice fails


def start_ray(address: str | None, runtime_env: dict | None = None) -> bool:
    """Connect to ``address`` or start a local Ray on loopback with the dashboard off.

    Returns True when this call started Ray (and so should shut it down).
    """
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


def _user_modules(*objects) -> set[str]:
    """Modules that define ``objects`` (their classes, functions and, for a task, its fields) and that
    are not installed packages: a script, a notebook, a test file."""
    found, seen = set(), set()
    pending = list(objects)
    while pending:
        obj = pending.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            pending.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
        holder = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__module__") else type(obj)
        name = getattr(holder, "__module__", None) or ""
        path = getattr(sys.modules.get(name), "__file__", None) or ""
        if (
            name
            and name != "__main__"
            and path
            and not _installed(path)
            and name.split(".")[0] != "nas_prune"
        ):
            found.add(name)
    return found


def _installed(path: str) -> bool:
    """Whether ``path`` is in the standard library or an installed package (importable on any worker)."""
    roots = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(path.startswith(root) for root in roots) or "site-packages" in path or "dist-packages" in path


def ship_by_value(*objects) -> None:
    """Have Ray send the code of the user's model, task and evaluator along with them when it lives in
    a file Ray workers may not import (a script, a notebook, a test file); an installed package is
    imported on the worker as usual."""
    for name in _user_modules(*objects):
        ray.cloudpickle.register_pickle_by_value(sys.modules[name])


@dataclass(frozen=True)
class Job:
    """Evaluate candidate ``trial_id``'s ``widths`` at ``rung`` (``epochs`` of fine-tuning)."""

    trial_id: int
    rung: int
    epochs: float
    widths: dict[str, int]


class _Worker:
    """The actor: builds the evaluator once, then scores jobs one after the other.

    The settings arrive with every call, as a reference inside a list, not through the constructor: Ray
    cannot restart an actor whose constructor took an object-store reference (ray-project/ray#53727),
    and a restarted actor builds its evaluator again on its first (retried) call.
    """

    def __init__(self, factory: Callable[[TrialSettings], Callable]):
        self.factory, self.evaluate = factory, None

    def ready(self, settings: list) -> bool:
        """Build the evaluator (load the data, the dense model) from ``settings[0]``, a reference."""
        if self.evaluate is None:
            self.evaluate = self.factory(ray.get(settings[0]))
        return True

    def run(self, jobs: list[Job], settings: list) -> list[dict]:
        self.ready(settings)
        out = []
        for job in jobs:
            start = time.perf_counter()
            try:
                result = dict(self.evaluate(job.widths, job.epochs, job.trial_id))
            except Exception as err:  # a failed evaluation, reported; the worker lives on
                result = {"error": f"{type(err).__name__}: {err}"[:1000]}
            result.update(trial_id=job.trial_id, rung=job.rung, wall_s=time.perf_counter() - start)
            result.setdefault("epochs", job.epochs)
            out.append(result)
        return out


class WorkerPool:
    """``n`` actors with ``cpus`` CPUs (and ``gpus`` GPUs) each; jobs are queued and run in order.

    Args:
        n: number of actors (``--workers``).
        settings: shipped to each actor once.
        factory: ``factory(settings) -> evaluate(widths, epochs, seed) -> {"val_accuracy", "epochs"}``
            (default :class:`CandidateEvaluator`; tests inject fakes).
        cpus, gpus: resources per actor.
    """

    def __init__(
        self, n: int, settings: TrialSettings, factory=CandidateEvaluator, cpus: int = 1, gpus: float = 0
    ):
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) < gpus:
            raise NasPruneError(
                f"--gpus-per-trial {gpus:g}: the Ray cluster has {resources.get('GPU', 0):g} GPUs"
            )
        self.actor_class = ray.remote(
            num_cpus=cpus, num_gpus=gpus, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES
        )(_Worker)
        ship_by_value(settings.model, settings.task, factory)
        self.factory, self.settings = factory, [ray.put(settings)]  # sent with every call, kept here
        self.actors = [self.actor_class.remote(factory) for _ in range(n)]
        ray.get([actor.ready.remote(self.settings) for actor in self.actors])  # data loaded: the clock starts
        self.queue: list[list[Job]] = []
        self.running: dict = {}  # object ref -> (actor index, jobs)
        self.load = [0] * n

    @property
    def busy(self) -> int:
        """Calls queued or running."""
        return len(self.queue) + len(self.running)

    def submit(self, jobs: list[Job]) -> None:
        if jobs:
            self.queue.append(jobs)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue:
            index = min(range(len(self.actors)), key=self.load.__getitem__)
            if self.load[index] >= 2:  # two calls per actor: one running, one waiting
                return
            jobs = self.queue.pop(0)
            self.running[self.actors[index].run.remote(jobs, self.settings)] = (index, jobs)
            self.load[index] += 1

    def idle_slots(self) -> int:
        """How many more calls the actors can take before any of them waits."""
        return sum(2 - load for load in self.load) - len(self.queue)

    def results(self, timeout: float | None = None) -> Iterator[dict]:
        """Results of the calls that finish within ``timeout`` seconds (at least one call if any runs)."""
        if not self.running:
            return
        done, _ = ray.wait(list(self.running), num_returns=1, timeout=timeout)
        for ref in done:
            index, jobs = self.running.pop(ref)
            self.load[index] -= 1
            try:
                yield from ray.get(ref)
            except (
                ray.exceptions.RayError
            ) as err:  # died and retried in vain: its jobs failed, a new one takes over
                message = f"the worker crashed {MAX_TASK_RETRIES + 1} times: {type(err).__name__}"
                for job in jobs:
                    yield {"trial_id": job.trial_id, "rung": job.rung, "epochs": job.epochs, "error": message}
                self.actors[index] = self.actor_class.remote(self.factory)
        self._dispatch()

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
