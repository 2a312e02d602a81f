"""Where a task comes from (an object, a ``pkg.module:factory`` path or a dataset name) and the checks a
task and a model must pass before any heavy work.

A task given as an object reaches Ray workers through Ray's serialisation; a path is imported where it
is used (a cluster whose workers can import the user's package), and ``--resume`` rebuilds it from the
path recorded in the run directory. A dataset name is the default task: classification on that dataset.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batch import call_model, to_device
from ..data import check_dataset_name, load_dataset
from ..factory import import_factory
from .base import Task, TaskError, _number
from .classification import TensorClassificationTask

__all__ = ["check_task", "data_label", "describe_task", "model_spec_for", "resolve_task", "task_given"]


def task_given(task: Task | str | None) -> str:
    """How a task was given, as config.yaml records it: ``object``, ``path`` or ``dataset``."""
    return "object" if isinstance(task, Task) else "path" if task else "dataset"


def resolve_task(
    task: Task | str | None = None,
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    subset: int | None = None,
    val_fraction: float = 0.1,
) -> Task:
    """The task to train and judge with.

    Args:
        task: a :class:`Task`; or ``"pkg.module:factory"`` naming a zero-argument callable that returns
            one; or None for classification on ``dataset``.
        dataset: a built-in dataset name, ``folder:PATH`` (a class-per-folder image tree) or a
            ``pkg.module:factory`` of tensors (see :func:`nas_prune.data.load_dataset`).
        subset: train on a fixed random subset of this many items (quick runs, tests).

    Raises:
        TaskError: a factory that fails or returns something else than a Task; a bad dataset.
    """
    if isinstance(task, str):
        factory = import_factory(task, "task")
        try:
            made = factory()
        except Exception as err:
            raise TaskError(f"task factory {task!r} raised {type(err).__name__}: {err}") from err
        if not isinstance(made, Task):
            raise TaskError(f"task factory {task!r} returned a {type(made).__name__}, not a nas_prune Task")
        return made.with_subset(subset)
    if isinstance(task, Task):
        return task.with_subset(subset)
    if task is not None:
        raise TaskError(
            f"task must be a nas_prune Task or a pkg.module:factory path, not a {type(task).__name__}"
        )
    if dataset.startswith("folder:"):
        from ..data.folder import folder_task

        return folder_task(dataset.partition(":")[2], val_fraction=val_fraction).with_subset(subset)
    data = load_dataset(
        check_dataset_name(dataset), data_dir, val_fraction=val_fraction, seed=0, subset=subset
    )
    return TensorClassificationTask.of(data)


def model_spec_for(name: str, task: Task) -> dict[str, Any]:
    """The spec of zoo model or ``pkg.module:factory`` ``name`` built for ``task``: its ``model_kwargs``
    and the shape of one example input (see :func:`nas_prune.models.model_spec`), or for a model that
    takes a tuple or dict of inputs, zeros of them (``example_inputs``, see
    :func:`nas_prune.checkpoint.example_from_spec`)."""
    from ..batch import zeros_batch
    from ..plain import check_plain

    example = task.example()
    spec: dict[str, Any] = {"model": str(name), "kwargs": dict(task.model_kwargs)}
    if isinstance(example, torch.Tensor):
        spec["input_shape"] = [int(d) for d in example.shape[1:]]
    else:  # a tuple or dict of inputs: zeros of their structure (what load_pruned rebuilds the model on)
        spec["example_inputs"] = zeros_batch(example, 2)
    check_plain(spec, "spec", tensors=True)
    return spec


def data_label(task: str | None, dataset: str, task_name: str | None = None) -> str:
    """What a run's data is called in directory names, titles and metrics: a task factory's name, a task
    object's ``task_name``, or the dataset (``folder:PATH`` as ``folder-<basename>``)."""
    if task:
        return task.rpartition(":")[2]
    if task_name:
        return task_name
    if dataset.startswith("folder:"):
        return "folder-" + Path(dataset.partition(":")[2]).name
    return dataset


def describe_task(task: Task) -> str:
    """One line: the task's name, score and split sizes."""
    sizes = " / ".join(f"{task.size(s)} {s}" for s in ("train", "val", "test"))
    return f"task {task.name} (score {task.score_name}): {sizes} items"


def _first_batch(task: Task, split: str, device: torch.device) -> Any:
    try:
        return next(iter(task.loader(split, 2, train=False, device=device)))
    except TaskError:
        raise
    except StopIteration:
        raise TaskError(f"the task's {split} split has no items") from None
    except Exception as err:
        raise TaskError(f"reading a {split} batch of the task failed: {type(err).__name__}: {err}") from err


def check_task(task: Task, model: nn.Module, device: str | torch.device = "cpu") -> None:
    """Fail fast, with one line, when ``task`` and ``model`` cannot work together: example inputs the
    model rejects, batches it cannot take, a training step whose loss is not a finite scalar, a score
    that raises or is not a number. Runs one batch on a copy of the model; ``model`` is untouched."""
    device = torch.device(device)
    probe = copy.deepcopy(model).to(device)
    example = task.example()
    probe.eval()
    try:
        with torch.no_grad():
            call_model(probe, to_device(example, device))
    except Exception as err:
        raise TaskError(
            f"the model rejects the example inputs: {type(err).__name__}: {_first_line(err)}"
        ) from err
    batch = _first_batch(task, "train", device)
    probe.train()
    try:
        loss, _ = task.step(probe, batch)
    except TaskError:
        raise
    except Exception as err:
        raise TaskError(
            f"a training batch does not run through the model and the training step: "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from err
    _number(loss.detach(), "training step (loss)")
    probe.eval()
    batches = list(itertools.islice(task.loader("val", 2, train=False, device=device), 2))
    with torch.inference_mode():
        task.evaluate(probe, batches)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
