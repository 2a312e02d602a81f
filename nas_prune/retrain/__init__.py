"""Retrain a searched architecture, export it and compare it with the dense model.

Liu et al. (2019, "Rethinking the Value of Network Pruning") found that for structured pruning the
architecture is what matters: the found widths trained from random initialisation match or beat
fine-tuning the inherited weights. This package does both, so a run can show it:

* ``--init scratch`` (default): the slim model is re-initialised (fixed seed) and trained for the dense
  model's epochs ("Scratch-E"); ``--budget-matched`` scales the epochs by 1 / FLOPs ratio so training
  costs as many FLOPs as the dense model's did ("Scratch-B").
* ``--init inherit``: the kept filters keep their dense weights; BatchNorm statistics are re-estimated
  (adaptive BN) and the model is fine-tuned at a lower learning rate.
* ``--distill``: either one learns from the dense model too, through the task's ``distill_loss``;
  classification's is Hinton et al. 2015:
  ``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``. A task without
  one says that ``--distill`` does not apply.

* ``--init inherit`` of a run with a width-shared supernet (``supernet.pt``) starts from the
  supernet's weights sliced by its channel ranking (``--inherit-from supernet|dense``).
* ``--top K``: the K best top-rung architectures retrained with identical settings as parallel Ray Tune
  trials (:mod:`.tune`), the best picked by validation score.

Modules: :mod:`.choose` (which architecture), :mod:`.weights` (re-initialisation),
:mod:`.config` (:class:`RetrainConfig`), :mod:`.run` (:func:`retrain`), :mod:`.tune` (``--top K``;
imported only when used, as it imports Ray), :mod:`.summary` (the table and plot of every variant),
:mod:`.cli` (``python -m nas_prune.retrain RUN_DIR``). Output goes to
``RUN_DIR/retrain/<init>[-distill][-budget]-trial<ID>/``: ``metrics.json``, ``model.pt``, ``model.onnx``
(or ``model.pt2``) and, while training, ``checkpoint.pt``, from which an interrupted run continues.

Example:
    >>> metrics = retrain("results/convnet-fashion-mnist-flops0.3-...", init="scratch", epochs=10)
    >>> model = nas_prune.load_pruned(Path(metrics["output"]) / "model.pt")
"""

import sys
import types

from ..task import distillation_loss
from .choose import Architecture, choose_architecture, choose_top, output_name
from .cli import main
from .config import RetrainConfig
from .run import retrain
from .summary import SUMMARY_COLUMNS, write_summary
from .weights import reinitialize

__all__ = [
    "SUMMARY_COLUMNS",
    "Architecture",
    "RetrainConfig",
    "choose_architecture",
    "choose_top",
    "distillation_loss",
    "main",
    "output_name",
    "reinitialize",
    "retrain",
    "write_summary",
]


class _CallableModule(types.ModuleType):
    """``nas_prune.retrain(...)`` is both this package and the function :func:`retrain`."""

    def __call__(self, *args, **kwargs):
        return retrain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
