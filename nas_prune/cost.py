"""What a model costs: MACs/FLOPs and parameters (exact, counted by thop) and measured latency.

Every function works on a deep copy, so the user's model keeps no hooks, buffers or device moves.
MACs count the multiply-accumulates of convolution and linear layers per sample; BatchNorm and
activations are excluded, as after BN folding at inference. FLOPs are reported as ``2 * MACs``.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch
import torch.nn as nn
from thop import profile

__all__ = ["count_macs", "count_params", "measure_latency"]

_COUNTED = (nn.modules.conv._ConvNd, nn.Linear)


def _no_ops(module, inputs, output):
    """thop hook that counts nothing (BatchNorm, activations, pooling...)."""


def _batch_of(example_inputs) -> tuple[torch.Tensor, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them: conv, linear, BatchNorm...)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, example_inputs) -> tuple[int, int]:
    """Per-sample MACs of conv and linear layers, and the parameter count.

    Args:
        model: any ``nn.Module``; a deep copy is profiled in eval mode.
        example_inputs: a batch (tensor or tuple of tensors); MACs are divided by its batch size.

    Returns:
        ``(macs, params)`` as ints.
    """
    inputs = _batch_of(example_inputs)
    probe = copy.deepcopy(model).cpu().eval()
    # Hook only leaves: thop does not descend into a module that has a hook of its own.
    skip = {
        type(m): _no_ops for m in probe.modules() if not isinstance(m, _COUNTED) and not any(m.children())
    }
    with torch.no_grad():
        total, _ = profile(probe, inputs=tuple(t.cpu() for t in inputs), custom_ops=skip, verbose=False)
    batch = inputs[0].shape[0]
    return int(round(float(total) / batch)), count_params(model)


@contextlib.contextmanager
def _cpu_threads(threads: int | None):
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_latency(
    model: nn.Module,
    example_inputs,
    device: str | torch.device = "cpu",
    batch: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    threads: int | None = None,
) -> float:
    """Median forward latency in milliseconds of ``model`` at ``batch`` on ``device``.

    Runs a deep copy in eval mode under ``torch.inference_mode()``: warm-up passes first, then the
    median of ``repeats`` timed passes; CUDA is timed with events after ``torch.cuda.synchronize``,
    the CPU with a monotonic clock and a fixed thread count (``threads``, default: torch's current).
    Only the shape of ``example_inputs`` is used; the input is resized to ``batch``.
    """
    device = torch.device(device)
    probe = copy.deepcopy(model).to(device).eval()
    inputs = tuple(
        torch.randn((batch, *t.shape[1:]), dtype=t.dtype, device=device)
        if t.is_floating_point()
        else t[:1].expand(batch, *t.shape[1:]).to(device)
        for t in _batch_of(example_inputs)
    )
    times = []
    with torch.inference_mode(), _cpu_threads(threads if device.type == "cpu" else None):
        for _ in range(warmup):
            probe(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                probe(*inputs)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(repeats):
                t0 = time.perf_counter()
                probe(*inputs)
                times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))
