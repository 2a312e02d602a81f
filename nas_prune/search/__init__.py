"""Width search: budget-projected proposals scored on a fidelity ladder of Ray workers.

How a run goes (``python -m nas_prune.search`` or ``nas_prune.search(...)``):

1. :mod:`.inputs` checks every setting (one line and exit code 2 on bad input) and builds the width
   space and the exact cost model; the dense model is loaded or trained (``dense.pt``).
2. :mod:`.seeding` makes the seeds (uniform, l2, sensitivity and the gate supernet's).
3. :mod:`.study` holds one Optuna study per cost level; the sampler (:mod:`.evolution` by default,
   TPE or random) proposes a *relative keep score* per channel group, and :mod:`.projection` solves one global scale so the widths sit just under
   the level's budget (bisection on the exact cost, or the latency LUT's prediction).
4. :mod:`.ladder` decides what to evaluate: every candidate at rung 0 (slim + adaptive BN, no
   fine-tuning), the best of each cost level at the fine-tune rungs (successive halving), every seed
   at every rung. :mod:`.workers` runs the evaluations in batches on Ray actors that hold the dense
   model and the data once.
5. :mod:`.journal` appends every finished evaluation to ``evaluations.jsonl`` and derives
   ``trials.csv`` from it, so ``--resume`` after a kill loses and repeats no finished evaluation.
6. :mod:`.report` measures the latency of the top-rung candidates and writes ``pareto.csv``,
   ``best_arch.json``, ``fidelity.json``, the plots and the summary.

Ray and Optuna are imported only inside this package. The package is callable:
``nas_prune.search(budget_flops=0.3)`` runs a search and returns the trials DataFrame.
"""

import os
import sys
import types

# Ray reads these when it is imported: every Ray port on 127.0.0.1 (verified with Ray 2.60; a plain
# ray.init() also listens on the machine's outward address), token auth on (generated for a local Ray;
# a cluster's token lives in ~/.ray/auth_token or RAY_AUTH_TOKEN), no usage statistics sent (a Ray
# started by ray.init() sends none when they are off), quiet console.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from .cli import main  # noqa: E402
from .inputs import parse_latency_budget  # noqa: E402
from .run import search  # noqa: E402

__all__ = ["main", "parse_latency_budget", "search"]


class _CallableModule(types.ModuleType):
    """``nas_prune.search(...)`` is both this package and the function :func:`search`."""

    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
