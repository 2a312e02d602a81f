"""The pruning methods of the literature, run to a FLOPs budget as baselines for the width search.

``python -m nas_prune.baselines METHOD --budget-flops F`` with METHOD one of:

* ``l1-unstructured``: magnitude pruning of every conv/linear weight (global ranking, or
  ``--per-layer``) with ``torch.nn.utils.prune``. The sparsity is chosen so that the *non-zero* MACs
  (per layer: dense MACs x fraction of non-zero weights) are at most ``F`` x dense MACs. The mask is
  kept during fine-tuning (torch's ``weight = weight_orig * weight_mask`` reparametrisation) and made
  permanent afterwards. Dense kernels do not get faster: latency is measured anyway and shows it.
* ``l2-structured``: one shot to the budget with the global L2 allocation (``nas_prune.seeds.l2_seed``;
  ``--uniform``: one equal fraction per layer), adaptive BN, fine-tune.
* ``iterative-l2``: FLOPs targets ``r_{k+1} = max(F, r_k (1 - step))`` from ``r_0 = 1``; each step
  allocates widths by L2 on the *current* (already pruned) model, prunes, adapts BN and fine-tunes
  ``--epochs-between``; the last step is followed by the final ``--epochs``. The number of steps is the
  smallest ``k`` with ``(1 - step)^k <= F`` (:func:`iterative_targets`).
* ``soft-filter`` (He et al. 2018): a soft phase of ``(1 - --finetune-share) x --epochs`` trains the
  dense network, zeroing after each epoch the conv/linear filters of the lowest-L2 channels of every
  group (widths: L2 allocation). BatchNorm is left alone, so zeroed filters keep receiving gradients and
  may recover. Then the channels zeroed last are cut, BatchNorm statistics re-estimated and the slim
  network fine-tuned for ``--finetune-share x --epochs`` (SFP's fine-tuned variant): as many epochs in
  all as the other methods. No folding: a zeroed filter still emits the constant ``ReLU(BN(0))``, and
  folding it into the next layer's bias is not exact at zero-padded borders or through a residual add;
  re-estimating the next BatchNorm's mean absorbs it in the interior (``val_accuracy_masked`` and
  ``val_accuracy_cut`` in metrics.json show what the cut costs). Default share 0.5: with few epochs the
  zeroed filters regrow within each epoch and the soft phase barely prepares the network for the cut
  (convnet, Fashion-MNIST subset 20,000, 3 epochs, 30% of the FLOPs: validation accuracy 0.76 with a
  third, 0.80 with half, l2-structured 0.84; 0.34 test accuracy without any fine-tuning).
* ``lottery-ticket`` (Frankle & Carbin 2019): save ``theta0``, train dense ``--epochs`` (optionally
  rewinding to ``--rewind-epoch``), find the structured (L2 widths to the budget) or ``--unstructured``
  (magnitude mask) ticket on the trained weights, reset the survivors to ``theta0``, retrain. The dense
  model must start from the ticket's ``theta0``, so ``--checkpoint`` is ignored, with a warning and a
  line in metrics.json's ``notes``.
* ``uniform-scratch``: the uniform widths that meet the budget, random init, trained from scratch.

Resuming: every training phase (dense pre-training, fine-tuning, each iterative step, the soft phase,
the ticket) checkpoints after every (partial) epoch in ``OUTPUT/phases/<phase>/`` with
:func:`nas_prune.train.fit`'s checkpoints, so rerunning an interrupted command continues from the last finished epoch (finished
phases only reload their weights; the cheap pruning steps between them are replayed). A finished run
(``metrics.json`` with the same settings) is not recomputed; ``--force`` starts over.

Output (``--output``, default ``results/baselines/<method>-<model>-<dataset>-flops<F>-seed<S>/``):
``metrics.json`` shaped like retrain's (plus ``method, steps, sparsity, nonzero_macs, widths``) and
``model.pt`` (:func:`nas_prune.checkpoint.save_pruned`; for unstructured methods the dense architecture
with zeroed weights). The test split is read once, at the end.
Modules: :mod:`.primitives` (masks, channel cuts, tickets), :mod:`.config` (:class:`BaselineConfig`),
:mod:`.context` (what the methods share), :mod:`.methods` (the six methods), :mod:`.runner`
(:func:`run_baseline`), :mod:`.cli`.
"""

from .cli import main
from .config import FINETUNE_SHARE, METHODS, BaselineConfig
from .primitives import (
    iterative_targets,
    magnitude_prune,
    make_permanent,
    nonzero_macs,
    prune_channels,
    structured_ticket,
    unstructured_ticket,
    weight_positions,
    zero_filters,
)
from .runner import run_baseline

__all__ = [
    "FINETUNE_SHARE",
    "METHODS",
    "BaselineConfig",
    "iterative_targets",
    "magnitude_prune",
    "main",
    "make_permanent",
    "nonzero_macs",
    "prune_channels",
    "run_baseline",
    "structured_ticket",
    "unstructured_ticket",
    "weight_positions",
    "zero_filters",
]
