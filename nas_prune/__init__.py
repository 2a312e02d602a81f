"""nas_prune: structured channel pruning as architecture search over per-layer widths.

The core API (DESIGN.md contract)::

    groups = nas_prune.channel_groups(model, example_inputs)
    slim = nas_prune.prune(model, example_inputs, widths, importance="l2", round_to=1)
    macs, params = nas_prune.count_macs(model, example_inputs)
    trials = nas_prune.search(budget_flops=0.3)   # a whole search (imports Ray and Optuna lazily)
"""

import importlib

from .cli import NasPruneError
from .cost import count_macs, count_params, measure_latency
from .graph import ChannelGroup, channel_groups
from .importance import get_importance, importance_names, register_importance
from .models import create_model, model_names, register_model
from .prune import prune, resolve_widths

__all__ = [
    "ChannelGroup",
    "NasPruneError",
    "channel_groups",
    "count_macs",
    "count_params",
    "create_model",
    "get_importance",
    "importance_names",
    "measure_latency",
    "model_names",
    "prune",
    "register_importance",
    "register_model",
    "resolve_widths",
    "search",
]


def __getattr__(name: str):
    """``nas_prune.search`` is loaded on first use: it imports Ray, which the core never needs."""
    if name == "search":
        return importlib.import_module(".search", __name__)  # a callable module: search(...) runs one
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
