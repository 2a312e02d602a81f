"""The task: how to train and how to judge one model (see :mod:`nas_prune.task.base`).

Modules: ``base`` (:class:`Task`, its loaders and checks of what the user's callables return),
``classification`` (cross-entropy, accuracy, distillation from logits; the built-in datasets' fast
in-memory task), ``distill`` (distillation losses without labels, for other tasks), ``resolve`` (a task from an object, a ``pkg.module:factory`` path or a dataset name,
and :func:`check_task`, the one-line errors before any heavy work).

Example:
    >>> import nas_prune
    >>> task = nas_prune.Task(train=train_set, val=val_set, test=test_set,
    ...                       training_step=my_loss, score=my_map50, score_name="mAP50")
    >>> nas_prune.search(model=my_trained_model, task=task, budget_flops=0.3)
"""

from .base import SPLITS, DeviceLoader, Task, TaskError, default_inputs, loss_and_metrics, score_key
from .classification import (
    ALPHA,
    TEMPERATURE,
    ClassificationTask,
    CrossEntropyStep,
    LogitDistillation,
    TensorClassificationTask,
    accuracy,
    as_task,
    classification_metrics,
    distillation_loss,
    with_label_smoothing,
)
from .distill import OutputMatching, SoftDistillation, soft_kl
from .resolve import check_task, data_label, describe_task, model_spec_for, resolve_task, task_given

__all__ = [
    "ALPHA",
    "SPLITS",
    "TEMPERATURE",
    "ClassificationTask",
    "CrossEntropyStep",
    "DeviceLoader",
    "LogitDistillation",
    "OutputMatching",
    "SoftDistillation",
    "Task",
    "TaskError",
    "TensorClassificationTask",
    "accuracy",
    "as_task",
    "check_task",
    "classification_metrics",
    "data_label",
    "default_inputs",
    "describe_task",
    "distillation_loss",
    "loss_and_metrics",
    "model_spec_for",
    "resolve_task",
    "score_key",
    "soft_kl",
    "task_given",
    "with_label_smoothing",
]
