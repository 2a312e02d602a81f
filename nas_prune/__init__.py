"""nas_prune: structured channel pruning as architecture search over per-layer widths.

The core API, kept stable for callers (README, "Python API")::

    groups = nas_prune.channel_groups(model, example_inputs)
    slim = nas_prune.prune(model, example_inputs, widths, importance="l2", round_to=1)
    macs, params = nas_prune.count_macs(model, example_inputs)
    trials = nas_prune.search(budget_flops=0.3)   # a whole search (imports Ray and Optuna lazily)
    trials = nas_prune.search(model=my_trained_module, task=nas_prune.Task(...), budget_flops=0.3)
    metrics = nas_prune.retrain(run_dir, model=my_trained_module, task=task, init="inherit")
    metrics = nas_prune.run_baseline(nas_prune.BaselineConfig("l2-structured", 0.3), model=..., task=...)
    history = nas_prune.fit(model, task, epochs=3)
"""

import importlib

from .cost import count_macs, count_params, measure_latency
from .errors import NasPruneError
from .graph import ChannelGroup, channel_groups
from .importance import get_importance, importance_names, register_importance
from .models import create_model, model_names, register_model
from .prune import prune, resolve_widths
from .task import Task

__all__ = [
    "BaselineConfig",
    "ChannelGroup",
    "NasPruneError",
    "channel_groups",
    "count_macs",
    "count_params",
    "create_model",
    "get_importance",
    "importance_names",
    "load_pruned",
    "measure_latency",
    "model_names",
    "prune",
    "register_importance",
    "register_model",
    "resolve_widths",
    "retrain",
    "run_baseline",
    "save_pruned",
    "search",
    "Task",
    "fit",
]


# Loaded on first use: the core never needs the model files' loader (it reads trials tables with pandas),
# and ``search`` imports Ray.
_LAZY = {
    "search": ("search", None),
    "retrain": ("retrain", None),
    "run_baseline": ("baselines", "run_baseline"),
    "BaselineConfig": ("baselines", "BaselineConfig"),
    "fit": ("train", "fit"),
    "load_pruned": ("checkpoint", "load_pruned"),
    "save_pruned": ("checkpoint", "save_pruned"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    return module if attribute is None else getattr(module, attribute)  # search, retrain: callable modules
