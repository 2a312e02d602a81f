"""What a model costs: MACs/FLOPs and parameters (exact, counted by thop) and measured latency.

Every function works on a deep copy, so the user's model keeps no hooks, buffers or device moves.
MACs count the multiply-accumulates of convolution and linear layers per sample; BatchNorm and
activations are excluded, as after BN folding at inference. FLOPs are reported as ``2 * MACs``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.utils.benchmark as benchmark
from thop import profile
from thop.profile import register_hooks

from .batch import as_call_args, batch_size, call_model, map_tensors, resize_batch, to_device

__all__ = [
    "CostModel",
    "LayerCut",
    "Speedup",
    "count_macs",
    "count_params",
    "measure_latency",
    "measure_speedup",
    "steady_heap",
]

_COUNTED = (nn.modules.conv._ConvNd, nn.Linear)


def _no_ops(module, inputs, output):
    """thop hook that counts nothing (BatchNorm, activations, pooling...)."""


class _Keywords(nn.Module):
    """``model`` called with fixed keyword inputs: for thop, which passes only positional ones."""

    def __init__(self, model: nn.Module, kwargs: dict[str, Any]):
        super().__init__()
        self.model, self.kwargs = model, kwargs

    def forward(self, *args: Any) -> Any:
        return self.model(*args, **self.kwargs)


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them: conv, linear, BatchNorm...)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, example_inputs) -> tuple[int, int]:
    """Per-sample MACs of conv and linear layers, and the parameter count.

    Args:
        model: any ``nn.Module``; a deep copy is profiled in eval mode.
        example_inputs: a batch the model accepts (a tensor, a tuple of them or a dict of keyword inputs);
            MACs are divided by its batch size (:func:`~nas_prune.batch.batch_size`).

    Returns:
        ``(macs, params)`` as ints.
    """
    args, kwargs = as_call_args(to_device(example_inputs, "cpu"))
    probe = copy.deepcopy(model).cpu().eval()
    # Hook only leaves: thop does not descend into a module that has a hook of its own.
    ops = {type(m): _no_ops for m in probe.modules() if not isinstance(m, _COUNTED) and not any(m.children())}
    # thop matches exact types: a Conv2d/Linear subclass (a masked conv...) is counted as its base class.
    for m in probe.modules():
        if isinstance(m, _COUNTED) and type(m) not in register_hooks:
            ops[type(m)] = next(register_hooks[c] for c in type(m).__mro__ if c in register_hooks)
    with torch.no_grad():
        total, _ = profile(_Keywords(probe, kwargs), inputs=args, custom_ops=ops, verbose=False)
    return int(round(float(total) / max(1, batch_size(example_inputs)))), count_params(model)


@contextlib.contextmanager
def _cpu_threads(threads: int | None):
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.cache
def steady_heap() -> bool:
    """Keep freed memory in the process (glibc): the timings measure compute, not page faults.

    Every forward pass frees and re-allocates its activations. With glibc's defaults the big ones are
    ``mmap``-ed and handed back to the OS on each free, so every pass pays fresh page faults whose cost
    depends on the machine's memory state, not on the model: on a 2-vCPU VM the same mobilenetv2 at
    batch 32 timed 81 to 157 ms between rounds (spread 13-77% per model), and a sum of per-layer entries
    (small tensors, no faults) could not predict it. With allocations served from the heap and freed
    memory kept (no mmap, no trimming) the spread fell to 16-37% and the timings by up to 27%; this is
    also what a long-running server settles into. Applied once per process, on first timing; it stays
    (a process keeps its peak heap). Returns whether it could be applied (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    settings = ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 64 << 20))
    return all(mallopt(option, value) == 1 for option, value in settings)


def measure_latency(
    model: nn.Module,
    example_inputs,
    device: str | torch.device = "cpu",
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    threads: int | None = None,
    min_run_time: float = 0.1,
) -> float:
    """Median forward latency in milliseconds of ``model`` at ``batch`` on ``device``.

    Runs a deep copy in eval mode under ``torch.inference_mode()``: ``warmup`` passes first, then
    ``torch.utils.benchmark.Timer.blocked_autorange`` (it synchronises CUDA and fixes the CPU thread
    count: ``threads``, default torch's current) for at least ``min_run_time`` seconds and long enough
    for about ``repeats`` blocks; the median block time is returned. Only the structure and shapes of
    ``example_inputs`` (a tensor, a tuple of them or a dict of keyword inputs) are used: every tensor is
    resized to ``batch`` (:func:`~nas_prune.batch.resize_batch`) and floating ones drawn at random. The
    first call makes the process keep its freed memory (:func:`steady_heap`), so the timing is of
    compute, not of page faults.
    """
    steady_heap()
    device = torch.device(device)
    probe = copy.deepcopy(model).to(device).eval()
    args, kwargs = as_call_args(_timing_inputs(example_inputs, batch, device))
    num_threads = (threads or torch.get_num_threads()) if device.type == "cpu" else 1
    with torch.inference_mode(), _cpu_threads(threads if device.type == "cpu" else None):
        for _ in range(warmup):
            probe(*args, **kwargs)
        start = time.perf_counter()  # one more pass, warm: how long the timed blocks must run
        probe(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        per_pass = time.perf_counter() - start
        timer = benchmark.Timer(
            stmt="probe(*args, **kwargs)",
            globals={"probe": probe, "args": args, "kwargs": kwargs},
            num_threads=num_threads,
        )
        measured = timer.blocked_autorange(min_run_time=max(min_run_time, 1.2 * repeats * per_pass))
    return float(measured.median * 1e3)


def _timing_inputs(example_inputs: Any, batch: int, device: torch.device) -> Any:
    """The example's structure at ``batch`` on ``device``: floating tensors drawn at random (made there,
    not copied: a layer's input at batch 256 is large), the others' rows repeated."""

    def make(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            shape = (batch, *t.shape[1:]) if t.ndim else ()
            return torch.randn(shape, dtype=t.dtype, device=device)
        return resize_batch(t, batch).to(device)

    return map_tensors(make, example_inputs)


class Speedup(NamedTuple):
    """Dense vs pruned latency timed interleaved (A B A B ...), see :func:`measure_speedup`.

    Attributes:
        ratio: median over rounds of dense ms / pruned ms (each round's pair timed back to back).
        low: the smallest round's ratio.
        high: the largest round's ratio (``high - low`` is the spread).
        dense_ms: median dense latency over the rounds.
        pruned_ms: median pruned latency over the rounds.
        rounds: number of rounds.
    """

    ratio: float
    low: float
    high: float
    dense_ms: float
    pruned_ms: float
    rounds: int


def measure_speedup(
    dense: nn.Module,
    pruned: nn.Module,
    example_inputs,
    device: str | torch.device = "cpu",
    batch: int = 1,
    rounds: int = 5,
    latency_fn: Callable[..., float] | None = None,
    **kwargs: Any,
) -> Speedup:
    """Speed-up of ``pruned`` over ``dense``, both timed in the same rounds: dense, pruned, dense, ...

    Timing each model once, minutes apart, on a loaded machine gave the same architecture 2.37x in one
    retrain and 0.89x in the next; a round's two timings share the machine's load, so their ratio is
    stable, and the median over rounds discards a round a burst of load split.

    Args:
        dense, pruned: the models (deep-copied by the timing function, never changed).
        example_inputs: a batch the models accept; only its shape is used.
        device, batch: where and at what batch size to time.
        rounds: A B pairs timed (at least 1).
        latency_fn: ``fn(model, example_inputs, device=, batch=, **kwargs) -> ms``; default
            :func:`measure_latency`. Tests inject a deterministic one.
        **kwargs: passed to ``latency_fn`` (``warmup``, ``repeats``, ``threads``...).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    latency_fn = latency_fn or measure_latency
    pairs = []
    for _ in range(rounds):
        a = float(latency_fn(dense, example_inputs, device=device, batch=batch, **kwargs))
        b = float(latency_fn(pruned, example_inputs, device=device, batch=batch, **kwargs))
        pairs.append((a, b))
    ratios = [a / b for a, b in pairs]
    return Speedup(
        ratio=float(statistics.median(ratios)),
        low=min(ratios),
        high=max(ratios),
        dense_ms=float(statistics.median(a for a, _ in pairs)),
        pruned_ms=float(statistics.median(b for _, b in pairs)),
        rounds=rounds,
    )


class LayerCut(NamedTuple):
    """One layer with parameters of the traced dense model, and the channel groups that cut it.

    Attributes:
        name: qualified module name.
        module: the dense module (of CostModel's private traced copy); for a per-channel parameter used
            outside its module's layers (``x * self.scale``), the parameter itself.
        params: its own parameters at full width.
        area: conv/linear MACs per (output channel x input channel per group), per sample; else 0.
        outs: ``(group, channels of the group among the layer's outputs)`` pairs.
        ins: the same for the layer's inputs.
    """

    name: str
    module: nn.Module
    params: int
    area: float
    outs: list[tuple[str, int]]
    ins: list[tuple[str, int]]


class CostModel:
    """Exact MACs and parameters of any width assignment, without building the slim model.

    Pruning a group removes the same channels from every layer coupled to it, so each conv/linear
    layer's cost is ``out * in / groups * (kernel area x output positions)`` with ``out`` and ``in``
    lowered by the groups feeding them; BatchNorm-like layers cost ``2 * channels`` parameters. The
    layer table is read once from the traced dense model; :meth:`cost` is then pure arithmetic, cheap
    enough to check every search proposal against a budget before anything trains. Tests check it
    against ``count_macs(prune(...))`` on random widths of every zoo model.
    """

    def __init__(self, model: nn.Module, example_inputs):
        from .graph import ChannelGraph  # graph imports nothing from here; keep the core acyclic

        probe = copy.deepcopy(model).cpu().eval()
        example_inputs = to_device(example_inputs, "cpu")
        graph = ChannelGraph(probe, example_inputs)
        self.groups = {g.name: g.channels for g in graph.groups}
        area = _output_area(probe, example_inputs)
        names = {m: n for n, m in probe.named_modules()}
        names.update({p: n for n, p in probe.named_parameters()})  # per-channel parameters used in forward
        # name -> [(group, channels of the group in this layer's outputs / inputs)]
        cut_out: dict[str, list[tuple[str, int]]] = {}
        cut_in: dict[str, list[tuple[str, int]]] = {}
        for group in graph.groups:
            for item in graph.tp_group(group.name) if graph.traced(group.name) else ():
                layer = names.get(item.dep.target.module)
                if layer is None:
                    continue
                side = cut_out if graph.dg.is_out_channel_pruning_fn(item.dep.handler) else cut_in
                side.setdefault(layer, []).append((group.name, len(item.idxs)))
        self.layers: list[LayerCut] = []
        """Every module with parameters of the traced dense model, in ``named_modules()`` order, then every
        parameter cut on its own (one Torch-Pruning traces as used outside its module's layers)."""
        loose = {p for p in probe.parameters() if names[p] in cut_out}
        for name, module in probe.named_modules():
            own = sum(p.numel() for p in module.parameters(recurse=False) if p not in loose)
            if own:
                outs, ins = cut_out.get(name, []), cut_in.get(name, [])
                self.layers.append(LayerCut(name, module, own, area.get(name, 0), outs, ins))
        for param in loose:
            self.layers.append(LayerCut(names[param], param, param.numel(), 0, cut_out[names[param]], []))
        self.dense = self.cost(dict(self.groups))

    def cost(self, widths: dict[str, int]) -> tuple[int, int]:
        """``(macs, params)`` per sample of the model pruned to ``widths`` (missing groups: full width)."""
        macs, params = self.cost_terms(widths)
        return int(round(macs)), int(round(params))

    def drop_fractions(self, widths: dict) -> dict:
        """Fraction of each group's channels that ``widths`` removes (missing groups: 0)."""
        return {g: (c - widths.get(g, c)) / c for g, c in self.groups.items()}

    def cost_terms(self, widths: dict) -> tuple:
        """Unrounded ``(macs, params)``; widths may be floats or tensors, so a gate supernet can
        differentiate the cost of its expected widths (each layer's cost is bilinear in its input and
        output widths, so for independent groups the cost of the expected widths is the expected cost)."""
        drop = self.drop_fractions(widths)
        macs = params = 0.0
        for _, module, own, area, outs, ins in self.layers:
            out_cut = sum(n * drop[g] for g, n in outs)
            in_cut = sum(n * drop[g] for g, n in ins)
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                out_ratio, in_ratio, inner = _weight_ratios(module, out_cut, in_cut)
                macs += module.weight.numel() * out_ratio * in_ratio * area / inner
                params += _layer_params(module, out_ratio, in_ratio)
            elif outs:  # per-channel parameters: BatchNorm, GroupNorm, LayerNorm, PReLU, a loose scale...
                channels = sum(n for _, n in outs) if isinstance(module, nn.Parameter) else _channels(module)
                params += own * (channels - out_cut) / channels
            else:
                params += own
        return macs, params


def _weight_ratios(module: nn.Module, out_cut, in_cut) -> tuple:
    """Kept fractions of a conv/linear weight's output rows and per-group input columns, and the weight's
    size per (output x input-per-group) channel pair (kernel area), which MACs are counted in."""
    if isinstance(module, nn.Linear):
        return 1 - out_cut / module.out_features, 1 - in_cut / module.in_features, 1
    depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
    in_ratio = 1 if depthwise else 1 - in_cut / module.in_channels  # groups are kept: blocks shrink alike
    return 1 - out_cut / module.out_channels, in_ratio, module.weight[0, 0].numel()


def _layer_params(module: nn.Module, out_ratio, in_ratio):
    """Parameters of a conv/linear layer: the weight and the extra tensors that :func:`nas_prune.prune`
    slices with it (same dims as the weight: like the weight; 1-D of the output size: like the bias)."""
    weight = module.weight
    total = 0.0
    for tensor in module.parameters(recurse=False):
        if tensor.dim() == weight.dim() and tensor.shape[0] == weight.shape[0]:
            total = total + tensor.numel() * out_ratio * (
                in_ratio if tensor.shape[1] == weight.shape[1] else 1
            )
        elif tensor.dim() == 1 and tensor.shape[0] == weight.shape[0]:
            total = total + tensor.numel() * out_ratio
        else:
            total = total + tensor.numel()
    return total


def _channels(module: nn.Module) -> int:
    return next(p.shape[0] for p in module.parameters(recurse=False))


def _output_area(model: nn.Module, example_inputs) -> dict[str, float]:
    """Per conv/linear layer: MACs per (output channel x input channel per group), per sample."""
    batch = max(1, batch_size(example_inputs))
    area: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, _COUNTED):

            def record(mod, args, out, name=name):
                conv = isinstance(mod, nn.modules.conv._ConvNd)
                positions = out.numel() / (batch * out.shape[1 if conv else -1])  # channels: dim 1 / last
                kernel = mod.weight[0, 0].numel() if conv else 1
                area[name] = area.get(name, 0.0) + positions * kernel

            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            call_model(model, to_device(example_inputs, "cpu"))
    finally:
        for hook in hooks:
            hook.remove()
    return area
