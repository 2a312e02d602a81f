"""nas_prune: structured channel pruning as architecture search over per-layer widths.

The core API (DESIGN.md contract)::

    groups = nas_prune.channel_groups(model, example_inputs)
    slim = nas_prune.prune(model, example_inputs, widths, importance="l2", round_to=1)
    macs, params = nas_prune.count_macs(model, example_inputs)
"""

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
]
