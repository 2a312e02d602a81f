"""ProxylessNAS-style binarized width gates: a one-shot supernet over per-group widths, read out as seeds.

Each searched channel group ``g`` has ``K`` candidate widths ``w_1 < ... < w_K`` (the search grid) and
architecture logits ``alpha_g``, ``p_g = softmax(alpha_g)``. Channels are ordered once by importance
(:func:`nas_prune.prune.channel_importance`, descending), so width ``w`` means "the top-``w`` channels",
exactly the channels :func:`nas_prune.prune` keeps. A gate vector ``gate_g`` (binary, one active width)
scales the group's channels by ``m_g = sum_k gate_gk * 1[rank < w_k]``, so only the active width's
channels pass. Masking keeps the dense compute (no slicing): simple and exact, and cheap at these sizes.

Where the mask is applied: on the *input* of every layer that reads the group's channels but is not
part of the group (the next convs, the classifier; forward pre-hooks), never inside the group. So the
group's own layers and BatchNorms see their real channels (BatchNorm statistics do not depend on the
width), a residual or concatenated group is cut consistently wherever it is read, and a removed channel
reads as zero exactly where pruning would drop it (tests compare with ``prune``). Masking after the
activation also keeps the gate gradient alive: a mask before a ReLU would give every wider candidate
a zero BinaryConnect gradient (``relu'(0) = 0``), so the search could only ever shrink.

Training alternates (Cai et al., ProxylessNAS, ICLR 2019):

1. weight step on a training batch: one width per group sampled from ``p_g``, SGD on the masked net;
2. architecture step on a validation batch with ProxylessNAS's two-path sampling: two candidate widths
   per group drawn from ``p_g`` without replacement, their probabilities renormalised, the active one
   drawn from that pair. Autograd through the masks gives the BinaryConnect gradient ``dL/dgate_k`` of
   every candidate; the pair's go through the softmax Jacobian of the renormalised probabilities ``q``,
   ``dL/dalpha_i = sum_j dL/dgate_j q_j (d_ij - q_i)`` (:func:`alpha_gradient`), Adam with ``beta1 = 0``
   steps, and the pair's logits are shifted so the other widths' probabilities stay unchanged;
3. the cost term's gradient is exact: the expected widths ``E[w_g] = sum_k p_gk w_k`` fed to
   :meth:`CostModel.cost_terms` give the expected MACs and parameters (each layer is bilinear in its
   input and output widths, so for independent groups that is the expected cost).

Cost-aware loss, an additive hinge ``L + lambda * sum_b max(0, E[cost_b] / dense_b - (1 - margin) t_b)``
over the given FLOP / parameter budgets ``t_b``, rather than ProxylessNAS's ``CE * (log E[lat] /
log target) ** beta``: (a) the log form depends on the unit (log of MACs ~ 17 barely moves when the
cost halves; with fractions ``log`` changes sign and the factor vanishes at the dense model, pushing the
wrong way); (b) a budget is a constraint, not a trade-off: the hinge stops pushing once the budget holds,
so probability mass settles at the budget instead of sliding below it and losing accuracy; (c) several
budgets (FLOPs and parameters) just add up. Seeds are then checked against the exact ``CostModel.cost``.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batch import to_device
from .cost import CostModel
from .errors import NasPruneError
from .graph import ChannelGraph
from .prune import channel_importance, channel_order
from .resumable import LoopState, Resumable
from .space import Budget, WidthSpace
from .task import CrossEntropyStep, loss_and_metrics
from .train import make_optimizer, make_scheduler, resolve_device

__all__ = ["GateResult", "GateSettings", "WidthGates", "alpha_gradient", "train_gates"]

_LAST_DIM_CHANNELS = (nn.Linear, nn.LayerNorm)  # layers whose channels are the last dimension


@dataclass(frozen=True)
class GateSettings:
    """How the gate supernet is trained.

    Attributes:
        epochs: passes over the training loader (fractions allowed); ``> 0``.
        lr: SGD learning rate of the supernet weights (cosine-decayed to 0).
        weight_decay: SGD weight decay (weights only, as :func:`nas_prune.train.make_optimizer`).
        arch_lr: Adam learning rate of the logits ``alpha`` (``betas=(0, 0.999)`` as in ProxylessNAS,
            whose 1e-3 suits a long search; a supernet of a few epochs needs more).
        warmup: fraction of the steps that train weights only (widths sampled uniformly), so narrow
            widths are usable before ``alpha`` learns from them (ProxylessNAS warms up its supernet).
        cost_weight: ``lambda`` of the hinge term.
        cost_margin: the hinge aims at ``(1 - margin)`` of each target, so more samples meet it.
        target_flops: FLOPs target as a fraction of the dense model; default: the budget's ``flops``.
        target_params: parameter target as a fraction; default: the budget's ``params``. A latency-only
            budget needs an explicit FLOPs (or parameter) target here.
        importance: channel-importance criterion that orders each group's channels.
        num_seeds: architectures :meth:`GateResult.seeds` returns by default.
        device: ``cpu``, ``cuda`` or ``auto``.
        seed: seeds the gate sampling (weights train from the given model).
        progress: show a tqdm bar.
    """

    epochs: float = 1.0
    lr: float = 0.01
    weight_decay: float = 5e-4
    arch_lr: float = 0.1
    warmup: float = 0.2
    cost_weight: float = 5.0
    cost_margin: float = 0.02
    target_flops: float | None = None
    target_params: float | None = None
    importance: str = "l2"
    num_seeds: int = 3
    device: str = "cpu"
    seed: int = 0
    progress: bool = True


def alpha_gradient(gate_grad: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """BinaryConnect gradient of the logits: ``dL/dalpha_i = sum_j dL/dgate_j p_j (delta_ij - p_i)``.

    Args:
        gate_grad: ``dL/dgate`` per candidate (of the sampled pair in two-path mode).
        probs: the candidates' probabilities (renormalised over the pair in two-path mode).
    """
    weighted = gate_grad * probs
    return weighted - probs * weighted.sum()


class WidthGates:
    """A deep copy of a dense model whose searched groups are masked by width gates.

    Masks are per-instance forward pre-hooks on the copy's layers that read a searched group (no global
    mode); use as a context manager or call :meth:`remove`. The user's model is never modified.

    Attributes:
        model: the supernet (a deep copy of the dense model, hooks attached).
        space: the width grid; ``space.names`` are the gated groups.
        alphas: group -> logits over ``space.choices[group]`` (leaf tensors, start uniform).
        gates: group -> current gate vector over the candidates (one-hot for sampled widths; any real
            values give the relaxed supernet ``sum_k gate_k * (x * mask_k)``).
    """

    def __init__(self, model: nn.Module, example_inputs, space: WidthSpace, importance: str = "l2"):
        self.space = space
        self.model = copy.deepcopy(model)
        scores = channel_importance(model, example_inputs, importance)
        graph = ChannelGraph(self.model, example_inputs)
        names = {module: name for name, module in self.model.named_modules()}
        self._keep: dict[str, torch.Tensor] = {}  # group -> (K, channels) 0/1: kept channels per width
        entries: dict[nn.Module, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        for group in graph.groups:
            if group.name not in space.choices:
                continue
            order = channel_order(scores[group.name], group.multiple)  # grouped convs: whole positions
            rank = torch.empty_like(order)
            rank[order] = torch.arange(len(order))
            widths = torch.tensor(space.choices[group.name])
            self._keep[group.name] = (rank[None, :] < widths[:, None]).float()
            members = {module for module, name in names.items() if name in group.modules}
            for item in graph.tp_group(group.name):
                module = item.dep.target.module
                if (
                    module in names
                    and module not in members
                    and not graph.dg.is_out_channel_pruning_fn(item.dep.handler)
                ):
                    where = (torch.tensor(item.idxs), torch.tensor(item.root_idxs))
                    entries.setdefault(module, []).append((group.name, *where))
        self.alphas = {n: torch.zeros(len(c), requires_grad=True) for n, c in space.choices.items()}
        self.gates: dict[str, torch.Tensor] = {}
        self.set_widths(space.dense())
        self._entries = entries
        self._handles = [module.register_forward_pre_hook(self._mask_input) for module in entries]

    def _mask_input(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        dim = -1 if isinstance(module, _LAST_DIM_CHANNELS) else 1
        mask = torch.ones(x.shape[dim], dtype=x.dtype, device=x.device)
        for name, idxs, root in self._entries[module]:
            kept = self.gates[name].to(x.dtype) @ self._keep[name].to(x.dtype)
            mask = mask.index_put((idxs,), kept[root])
        shape = [1] * x.ndim
        shape[dim] = -1
        return (x * mask.view(shape), *args[1:])

    def to(self, device: str | torch.device) -> WidthGates:
        """Move the supernet, logits, gates and masks to ``device``; returns ``self``."""
        self.model.to(device)
        self.alphas = {n: a.detach().to(device).requires_grad_() for n, a in self.alphas.items()}
        self.gates = {n: g.to(device) for n, g in self.gates.items()}
        self._keep = {n: k.to(device) for n, k in self._keep.items()}
        self._entries = {
            m: [(n, i.to(device), r.to(device)) for n, i, r in e] for m, e in self._entries.items()
        }
        return self

    def probs(self) -> dict[str, torch.Tensor]:
        """Group -> probability of each candidate width (detached)."""
        return {n: F.softmax(a.detach(), 0) for n, a in self.alphas.items()}

    def set_widths(self, widths: Mapping[str, int]) -> None:
        """One-hot gates at ``widths`` (grid values; groups left out: full width)."""
        device = next(iter(self.alphas.values())).device if self.alphas else "cpu"
        for name, choices in self.space.choices.items():
            gate = torch.zeros(len(choices), device=device)
            gate[choices.index(int(widths.get(name, choices[-1])))] = 1.0
            self.gates[name] = gate

    def sample(self, generator: torch.Generator) -> None:
        """One-hot gates at one width per group drawn from ``p`` (the weight step's sampling)."""
        for name, p in self.probs().items():
            gate = torch.zeros_like(p)
            gate[torch.multinomial(p.cpu(), 1, generator=generator).item()] = 1.0
            self.gates[name] = gate

    def sample_pairs(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """ProxylessNAS two-path sampling: per group two candidates drawn from ``p`` without replacement,
        the active one drawn from their renormalised probabilities; sets one-hot gates at the active ones.

        Returns:
            group -> the pair's candidate indices, the active one first.
        """
        pairs = {}
        for name, alpha in self.alphas.items():
            p = F.softmax(alpha.detach(), 0).cpu()
            pair = torch.multinomial(p.clamp_min(1e-12), 2, generator=generator)  # 2 draws need 2 non-zeros
            if torch.multinomial(F.softmax(alpha.detach().cpu()[pair], 0), 1, generator=generator).item():
                pair = pair.flip(0)
            gate = torch.zeros_like(alpha.detach())
            gate[pair[0]] = 1.0
            self.gates[name] = gate
            pairs[name] = pair.to(alpha.device)
        return pairs

    def expected_widths(self) -> dict[str, torch.Tensor]:
        """Group -> ``E[w] = sum_k p_k w_k``, differentiable in the logits."""
        return {
            n: F.softmax(a, 0) @ torch.tensor(self.space.choices[n], dtype=a.dtype, device=a.device)
            for n, a in self.alphas.items()
        }

    def remove(self) -> None:
        """Detach the masking hooks from the supernet."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> WidthGates:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __call__(self, *inputs, **keyword_inputs):
        return self.model(*inputs, **keyword_inputs)


def _targets(budget: Budget, settings: GateSettings) -> Budget:
    """The FLOP / parameter fractions the cost term aims at: explicit settings first, else the budget's."""
    flops = settings.target_flops if settings.target_flops is not None else budget.flops
    params = settings.target_params if settings.target_params is not None else budget.params
    if flops is None and params is None:
        raise NasPruneError(
            "the gate supernet needs a FLOPs or parameter target: a latency-only budget must pass "
            "GateSettings(target_flops=...)"
        )
    return Budget(flops=flops, params=params)


def _cost_ratios(gates: WidthGates, cost: CostModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected ``(MACs, params)`` as fractions of the dense model, differentiable in the logits."""
    macs, params = cost.cost_terms(gates.expected_widths())
    dense_macs, dense_params = cost.dense
    return macs / dense_macs, params / dense_params


def _hinge(ratios: tuple[torch.Tensor, torch.Tensor], targets: Budget, margin: float) -> torch.Tensor:
    """``sum_b max(0, ratio_b - (1 - margin) * target_b)`` over the FLOP and parameter targets."""
    terms = [
        F.relu(ratio - (1.0 - margin) * target)
        for ratio, target in zip(ratios, (targets.flops, targets.params), strict=True)
        if target is not None
    ]
    return torch.stack(terms).sum()


def _arch_step(
    gates: WidthGates,
    batch: Any,
    training_step: Callable[[nn.Module, Any], Any],
    cost: CostModel,
    targets: Budget,
    settings: GateSettings,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[float, tuple[float, float]]:
    """One two-path architecture update on a validation batch; returns the task's loss and expected cost
    ratios."""
    pairs = gates.sample_pairs(generator)
    names = list(pairs)
    for name in names:
        gates.gates[name].requires_grad_()
    ce = loss_and_metrics(training_step(gates, batch))[0]
    gate_grads = torch.autograd.grad(ce, [gates.gates[n] for n in names], allow_unused=True)
    ratios = _cost_ratios(gates, cost)
    alphas = [gates.alphas[n] for n in names]
    cost_grads = torch.autograd.grad(
        settings.cost_weight * _hinge(ratios, targets, settings.cost_margin), alphas
    )
    before = {}
    for name, alpha, gate_grad, cost_grad in zip(names, alphas, gate_grads, cost_grads, strict=True):
        pair = pairs[name]
        grad = cost_grad.clone()
        if gate_grad is not None:
            grad[pair] += alpha_gradient(gate_grad[pair], F.softmax(alpha.detach()[pair], 0))
        alpha.grad = grad
        before[name] = torch.logsumexp(alpha.detach()[pair], 0)
        gates.gates[name] = gates.gates[name].detach()
    optimizer.step()
    with torch.no_grad():  # ProxylessNAS: keep the pair's total probability, so the other widths' holds
        for name, alpha in zip(names, alphas, strict=True):
            pair = pairs[name]
            alpha[pair] -= torch.logsumexp(alpha[pair], 0) - before[name]
    return ce.item(), (ratios[0].item(), ratios[1].item())


def _weight_step(gates: WidthGates, batch: Any, training_step, optimizer, schedule) -> float:
    """One SGD step of the supernet's weights on a training batch at the sampled widths; its loss."""
    loss = loss_and_metrics(training_step(gates, batch))[0]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    return loss.item()


def _record(history: list, log: list, gates: WidthGates, cost: CostModel, step: int, epoch: float,
            losses: dict[str, float]) -> None:  # fmt: skip
    """Append the width distribution at ``step`` to ``history`` and its losses and expected cost ratios
    (computed here when the step had no architecture step) to ``log``."""
    for name, probs in gates.probs().items():
        for width, prob in zip(gates.space.choices[name], probs.tolist(), strict=True):
            history.append((step, epoch, name, width, prob))
    if "flops_ratio" not in losses:
        with torch.no_grad():
            losses["flops_ratio"], losses["params_ratio"] = map(float, _cost_ratios(gates, cost))
    log.append({"step": step, "epoch": epoch, **losses})


def _cycle(loader: Iterable[Any], skip: int) -> Iterator[Any]:
    """The loader's batches, pass after pass, from batch ``skip`` on."""
    return itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), skip, None)


def train_gates(
    model: nn.Module,
    example_inputs,
    space: WidthSpace,
    cost: CostModel,
    budget: Budget,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: GateSettings = GateSettings(),
    training_step: Callable[[nn.Module, Any], Any] | None = None,
    resumable: Resumable | None = None,
) -> GateResult:
    """Train a width-gate supernet of ``model`` and return its architecture distribution.

    Alternates a weight step on a training batch and (after the warm-up) a two-path architecture step
    on a validation batch; see the module docstring for the estimator and the cost term.

    Args:
        model: the dense model; left unchanged (the supernet is a deep copy).
        example_inputs: a batch the model accepts (traces channel couplings, scores importance).
        space: the width grid; its searched groups are gated.
        cost: the dense model's cost model (expected cost during training, exact cost for seeds).
        budget: the search budget; its FLOP/parameter fractions are the targets unless ``settings``
            gives them. Seeds meet both the budget and the targets.
        train_loader: shuffled training batches; ``settings.epochs`` counts passes over it. Both loaders
            run the supernet in train mode, so avoid batches of one (``drop_last=True``).
        val_loader: shuffled validation batches for the architecture steps (cycled as needed).
        settings: see :class:`GateSettings`.
        training_step: the task's ``(model, batch) -> loss`` (weights on training batches, logits on
            validation batches); default: classification's cross-entropy on ``(x, y)`` batches.
        resumable: where the training keeps its state (see :mod:`nas_prune.resumable`), so a killed run
            loses at most ``every_s`` seconds; the loaders must give the same batches when iterated
            again (seeded shuffles do), as the run skips those it had trained on.

    Returns:
        A :class:`GateResult`.

    Raises:
        NasPruneError: ``epochs <= 0``, no searched group, or no FLOP/parameter target.
    """
    if settings.epochs <= 0:
        raise NasPruneError(f"gate epochs must be positive, got {settings.epochs}")
    if not space.choices:
        raise NasPruneError("the search space has no searched group to gate")
    if len(train_loader) == 0 or len(val_loader) == 0:  # cycling an empty loader would never return
        raise NasPruneError("the gate supernet needs at least one training and one validation batch")
    targets = _targets(budget, settings)
    training_step = training_step or CrossEntropyStep()
    device = resolve_device(settings.device)
    generator = torch.Generator().manual_seed(settings.seed)
    steps = max(1, math.ceil(settings.epochs * len(train_loader)))
    warmup = int(settings.warmup * steps)
    record_every = max(1, steps // 100)

    with WidthGates(model, example_inputs, space, settings.importance).to(device) as gates:
        weights = make_optimizer(gates.model, lr=settings.lr, weight_decay=settings.weight_decay)
        schedule = make_scheduler(weights, steps)
        arch = torch.optim.Adam(
            list(gates.alphas.values()), lr=settings.arch_lr, betas=(0.0, 0.999), eps=1e-8
        )
        gates.model.train()
        state = LoopState(resumable, model=gates.model, weights=weights, schedule=schedule, arch=arch,
                          alphas=gates.alphas, generator=generator)  # fmt: skip
        done, saved = state.restore()
        history, log = saved if saved is not None else ([], [])
        if not done:
            _record(history, log, gates, cost, 0, 0.0, {})
        train_batches = _cycle(train_loader, done)
        val_batches = _cycle(val_loader, max(0, done - warmup))
        bar = tqdm(range(done + 1, steps + 1), desc="gates", disable=not settings.progress, leave=False,
                   initial=done, total=steps)  # fmt: skip
        for step in bar:
            gates.sample(generator)
            batch = to_device(next(train_batches), device)
            losses = {"train_loss": _weight_step(gates, batch, training_step, weights, schedule)}
            if step > warmup:
                val_batch = to_device(next(val_batches), device)
                val_loss, ratios = _arch_step(
                    gates, val_batch, training_step, cost, targets, settings, arch, generator
                )
                losses.update(val_loss=val_loss, flops_ratio=ratios[0], params_ratio=ratios[1])
            if step % record_every == 0 or step == steps:
                _record(history, log, gates, cost, step, step / len(train_loader), losses)
                bar.set_postfix(loss=f"{losses['train_loss']:.3f}", flops=f"{log[-1]['flops_ratio']:.2f}")
            if step < steps:
                state.save_if_due(step, (history, log))
        alphas = {n: a.detach().cpu() for n, a in gates.alphas.items()}
    state.finish()
    return GateResult(
        space=space,
        cost=cost,
        budget=budget,
        targets=targets,
        alphas=alphas,
        history=pd.DataFrame(history, columns=["step", "epoch", "group", "width", "probability"]),
        log=pd.DataFrame(log),
        num_seeds=settings.num_seeds,
        seed=settings.seed,
    )


@dataclass
class GateResult:
    """A trained width distribution, and the seed architectures read from it.

    Attributes:
        space, cost, budget: as given to :func:`train_gates`.
        targets: the FLOP/parameter fractions the cost term aimed at (seeds meet them too).
        alphas: group -> final logits (CPU).
        history: one row per (record step, group, width): ``step, epoch, group, width, probability``.
        log: one row per record step: ``step, epoch, train_loss, val_loss, flops_ratio, params_ratio``
            (expected cost ratios under the current distribution).
        num_seeds: default number of seeds.
        seed: seeds the architecture sampling of :meth:`seeds`.
    """

    space: WidthSpace
    cost: CostModel
    budget: Budget
    targets: Budget
    alphas: dict[str, torch.Tensor]
    history: pd.DataFrame = field(repr=False)
    log: pd.DataFrame = field(repr=False)
    num_seeds: int = 3
    seed: int = 0

    def probs(self) -> dict[str, np.ndarray]:
        """Group -> probability of each candidate width (float64)."""
        return {n: F.softmax(a.double(), 0).numpy() for n, a in self.alphas.items()}

    def _load(self, widths: Mapping[str, int]) -> tuple[bool, float, float]:
        """``(feasible, summed excess over every budget and target, summed used fraction of the budgeted
        resources)`` by the exact ``CostModel.cost``."""
        macs, params = self.cost.cost(dict(widths))
        dense_macs, dense_params = self.cost.dense
        limits = (self.budget, self.targets)
        excess = sum(
            max(0.0, v) for b in limits for v in b.violations(macs, params, *self.cost.dense).values()
        )
        used = (macs / dense_macs if any(b.flops is not None for b in limits) else 0.0) + (
            params / dense_params if any(b.params is not None for b in limits) else 0.0
        )
        return all(b.met(macs, params, *self.cost.dense) for b in limits), excess, used

    def feasible(self, widths: Mapping[str, int]) -> bool:
        """True when ``widths`` meet the budget and the targets, by the exact ``CostModel.cost``."""
        return self._load(widths)[0]

    def argmax(self) -> dict[str, int]:
        """The most probable width of every group (fixed groups at full width); may be over budget."""
        return self.space.decode({n: int(np.argmax(p)) for n, p in self.probs().items()})

    def fit_budget(self, widths: Mapping[str, int], grow: bool = True) -> dict[str, int] | None:
        """Walk ``widths`` on the grid to the budget: lower one group by one step at a time until feasible
        (the step losing the least log-probability per unit of excess removed), then, with ``grow``, raise
        one group at a time while feasible (least log-probability lost per unit of budget used), so a
        seed does not leave budget unused. ``None`` when even the smallest widths are over budget."""
        logp = {n: np.log(np.maximum(p, 1e-300)) for n, p in self.probs().items()}
        widths = dict(widths)
        while not self.feasible(widths):
            step = self._best_step(widths, logp, -1)
            if step is None:
                return None
            widths.update(step)
        while grow and (step := self._best_step(widths, logp, +1)) is not None:
            widths.update(step)
        return widths

    def _best_step(self, widths: dict[str, int], logp: dict[str, np.ndarray], direction: int) -> dict | None:
        """The one-grid-step move (down: -1, up: +1, which must stay feasible) with the least
        log-probability lost per unit of excess removed (down) or budget used (up)."""
        _, excess, used = self._load(widths)
        best = None
        for name, choices in self.space.choices.items():
            i = choices.index(widths[name])
            j = i + direction
            if not 0 <= j < len(choices):
                continue
            feasible, new_excess, new_used = self._load({**widths, name: choices[j]})
            if direction > 0 and not feasible:
                continue
            change = excess - new_excess if direction < 0 else new_used - used
            key = (logp[name][i] - logp[name][j]) / max(change, 1e-12)
            if best is None or key < best[0]:
                best = (key, {name: choices[j]})
        return None if best is None else best[1]

    def seeds(self, count: int | None = None, samples: int = 512) -> list[dict[str, int]]:
        """Up to ``count`` distinct feasible architectures on the grid, most probable first.

        The first is the argmax architecture walked to the budget (:meth:`fit_budget`: repaired if over
        it, grown if under it, since a spread distribution's mode can sit far below the budget its mean
        meets); the rest are the most probable of ``samples`` architectures drawn from the distribution
        that meet the budget, as drawn.
        """
        count = self.num_seeds if count is None else count
        out: list[dict[str, int]] = []
        first = self.fit_budget(self.argmax())
        if first is None or count <= 0:
            return out
        out.append(first)
        probs = self.probs()
        rng = np.random.default_rng(self.seed)
        draws = {n: rng.choice(len(p), size=samples, p=p / p.sum()) for n, p in probs.items()}
        score = sum(np.log(np.maximum(probs[n][d], 1e-300)) for n, d in draws.items())
        seen = {tuple(first[n] for n in self.space.names)}
        for i in np.argsort(-score, kind="stable"):
            widths = self.space.decode({n: int(d[i]) for n, d in draws.items()})
            key = tuple(widths[n] for n in self.space.names)
            if len(out) >= count:
                break
            if key not in seen and self.feasible(widths):
                out.append(widths)
            seen.add(key)
        return out
