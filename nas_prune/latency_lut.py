"""Per-layer latency lookup table (ProxylessNAS-style): predicted latency = sum of layer entries + constant.

Measuring a candidate's latency means building and timing the slim model; a search proposes far more
candidates than it can time. The LUT times each *layer shape* once instead, on the device at hand, and
predicts a network as the sum of its layers' entries plus one measured constant.

Which layers have entries, and why:

* every convolution, linear, BatchNorm and per-channel PReLU layer. :class:`~nas_prune.cost.CostModel`'s
  trace says exactly which channel groups cut their inputs and outputs, and they do nearly all the work;
* activation, pooling and dropout modules, and functional ops (seen by a ``TorchFunctionMode`` outside
  the leaf modules) that keep batch and channels and whose tensor arguments share one shape
  (``torch.relu``, ``x + y``, ``F.adaptive_avg_pool2d``, ``x.mean((2, 3))``...), whose input is the
  output of such a layer or op, found by tensor identity in one traced forward pass. At batch 1 they are
  mostly per-call overhead, but at large batches they are memory-bound and shrink with the channels they
  carry (a ResNet's residual adds and ReLUs, MobileNetV2's ReLU6s). An op only gets an entry if it still
  works on one channel fewer (``x.view(2, 16, 8, 8)`` does not).

Other ops (``flatten`` to a vector, ``cat``, channel reshapes, broadcasting products), everything fed by
them and modules of other kinds have no entry (:attr:`LatencyLUT.unmodelled` lists such modules): their
cost goes into the constant, which assumes it does not change with width.

Each entry times a fresh module (or op) of the key's shape alone with
:func:`~nas_prune.cost.measure_latency` (warm-up, then the median of the repeats); a call's Python
overhead is in its entry because every call in the network pays it too. Tests check that the keys at any
widths equal the keys of the physically pruned model.

The constant is the measured dense latency minus the sum of the dense model's entries: what the entries
miss (the ops above, ``forward`` glue, layers without entries, layers timed alone rather than back to
back). The dense model is timed in the same rounds as its entries (see ``rounds``). The constant is
measured once per model (fingerprint: the dense layer keys and the module tree) and cached with the
entries, so every process predicts the same numbers from the same table. Delete the cache file to
re-measure everything.

Cache: one JSON file per device label (``<cache_dir>/<slug of device_label>.json``), ``{"schema_version",
"device", "entries": {key: ms}, "constants": {fingerprint: {"constant_ms", "dense_ms", "model"}}}``,
re-read before each write and before measuring (so instances share entries), written atomically (temp
file + ``os.replace``: readers never see half a file; two processes writing at once may lose each other's
newest entries, which are then measured again). An unreadable file is replaced, with a warning.

During a search nothing may be timed while trials train on the same device (DESIGN.md), and timed entries
are cached for later runs. So the search calls :meth:`LatencyLUT.prepare` before any trial starts: it
measures every entry the space's grid can reach (or, past ``max_entries``, an evenly spaced sub-grid per
layer) and the constant. Then it predicts with ``predict(widths, measure_missing=False)``, which never
times: an entry missing from the table is interpolated from the measured entries of the same layer slot
(linear over the width, or bilinear over input and output widths), or scaled from the nearest measured
one. Other callers (and :meth:`LatencyLUT.validate`) keep the default ``measure_missing=True``, which times
and caches what is missing.

DESIGN.md: the LUT may reject candidates only once :meth:`LatencyLUT.validate` finds it trusted on the
device (median error <= 15% and Spearman >= 0.9 against measurement on random widths); otherwise it only
orders candidates.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import random
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .atomic import atomic_write_text
from .config import device_label
from .cost import CostModel, _batch_of, _cpu_threads, measure_latency
from .latency_calibration import KINDS, Calibration, fit_calibration

if TYPE_CHECKING:
    from .space import WidthSpace

__all__ = ["MAX_MEDIAN_ERROR", "MIN_SPEARMAN", "LatencyLUT"]

SCHEMA_VERSION = 1
MAX_MEDIAN_ERROR = 0.15
"""A LUT is trusted on a device when its median relative error is at most this ..."""
MIN_SPEARMAN = 0.9
"""... and its rank correlation with measured latency at least this."""

_ELEMENTWISE_MODULES = ("torch.nn.modules.activation", "torch.nn.modules.pooling", "torch.nn.modules.dropout")
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_KEY = re.compile(r"^(.*) in=(\d+) out=(\d+) groups=(\d+) (input=.*)$", re.S)


class _Call(nn.Module):
    """A traced functional op as a module, to time it alone: every tensor argument becomes the input."""

    def __init__(self, func: Callable, args: tuple, kwargs: dict):
        super().__init__()
        self.func, self.kwargs = func, kwargs
        self.tensors = frozenset(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        self.args = tuple(None if i in self.tensors else a for i, a in enumerate(args))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.func(*(x if i in self.tensors else a for i, a in enumerate(self.args)), **self.kwargs)

    def extra_repr(self) -> str:
        args = ["T" if i in self.tensors else repr(a) for i, a in enumerate(self.args)]
        return ", ".join(args + [f"{k}={v!r}" for k, v in sorted(self.kwargs.items())])


def _follows_channels(call: _Call, x: torch.Tensor) -> bool:
    """Whether a traced op still works, keeping batch and channels, on one sample with one channel fewer.

    Rules out ops whose arguments fix the shape (``x.view(2, 16, 8, 8)`` is element-wise in shape only).
    """
    if x.shape[1] < 2:
        return True  # a single channel is never cut
    probe = torch.zeros(1, x.shape[1] - 1, *x.shape[2:], dtype=x.dtype)
    try:
        out = call(probe)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return False
    return isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[:2] == probe.shape[:2]


@dataclasses.dataclass(frozen=True)
class _Slot:
    """One call of a layer with an entry: how its channels follow the widths, and what shape it sees."""

    label: str  # module class or function name
    template: nn.Module  # the dense layer (its configuration is copied, never its weights)
    kind: str  # "conv" | "linear" | "norm" | "elementwise"
    config: str  # width-independent part of the key
    size: tuple[int, ...]  # input shape besides batch and channels
    dense_in: int
    dense_out: int
    ins: tuple[tuple[str, int], ...]  # (group, channels of the group) cutting the input / output
    outs: tuple[tuple[str, int], ...]


def _kind(module: nn.Module) -> str | None:
    """Which kind of entry a module gets, if any (see the module docstring)."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if (type(module) in _BATCHNORMS and module.affine) or (
        isinstance(module, nn.PReLU) and module.num_parameters > 1
    ):
        return "norm"
    if isinstance(module, nn.PReLU) or (
        type(module).__module__ in _ELEMENTWISE_MODULES
        and not isinstance(module, nn.MultiheadAttention)
        and not any(True for _ in module.parameters())
    ):
        return "elementwise"
    return None


def _config(module: nn.Module, kind: str) -> str:
    """The part of a layer's configuration that widths do not change."""
    if kind == "conv":
        m = module
        return (
            f"kernel={tuple(m.kernel_size)} stride={tuple(m.stride)} padding={m.padding} "
            f"dilation={tuple(m.dilation)} bias={m.bias is not None} mode={m.padding_mode}"
        )
    if kind == "linear":
        return f"bias={module.bias is not None}"
    if isinstance(module, nn.PReLU) and kind == "norm":
        return "per-channel"
    if kind == "norm":
        return f"eps={module.eps} track_running_stats={module.track_running_stats}"
    return module.extra_repr()


def _build(slot: _Slot, cin: int, cout: int, groups: int) -> nn.Module:
    """A fresh module shaped like ``slot``'s layer at the given channels (weights are not copied)."""
    m = slot.template
    if slot.kind == "conv":
        conv = _CONVS[len(m.kernel_size)]
        return conv(
            cin,
            cout,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            groups,
            m.bias is not None,
            m.padding_mode,
        )
    if slot.kind == "linear":
        return nn.Linear(cin, cout, bias=m.bias is not None)
    if isinstance(m, nn.PReLU) and slot.kind == "norm":
        return nn.PReLU(cout)
    if slot.kind == "norm":
        return type(m)(
            cout, eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=m.track_running_stats
        )
    return copy.deepcopy(m)


def _channels(slot: _Slot, drop: Mapping[str, float]) -> tuple[int, int, int]:
    """``(in, out, groups)`` of ``slot`` when each group loses the fraction ``drop[group]`` of its channels."""
    cout = round(slot.dense_out - sum(n * drop[g] for g, n in slot.outs))
    cin = round(slot.dense_in - sum(n * drop[g] for g, n in slot.ins))
    groups = 1
    if slot.kind == "conv":
        groups = slot.template.groups
        if _depthwise(slot):
            cin = groups = cout
    return cin, cout, groups


def _depthwise(slot: _Slot) -> bool:
    m = slot.template
    return slot.kind == "conv" and m.groups == m.in_channels == m.out_channels > 1


def _work(slot: _Slot, cin: int, cout: int, groups: int) -> float:
    """What an entry's time is taken to scale with: weights (conv, linear) or channels (the rest)."""
    if slot.kind in ("conv", "linear"):
        return max(cin, 1) * max(cout, 1) / max(groups, 1)
    return max(cout, 1)


def _spread(values: Sequence[int], k: int) -> list[int]:
    """``k`` evenly spaced items of sorted ``values``, always the first and the last (all if fewer)."""
    n = len(values)
    if n <= k:
        return list(values)
    return sorted({values[round(i * (n - 1) / (k - 1))] for i in range(k)})


def _between(points: Mapping[float, float], x: float) -> float | None:
    """Linear interpolation of ``{x: y}`` at ``x`` (exact hit or bracketed), ``None`` outside the range."""
    if x in points:
        return points[x]
    below = max((p for p in points if p < x), default=None)
    above = min((p for p in points if p > x), default=None)
    if below is None or above is None:
        return None
    t = (x - below) / (above - below)
    return points[below] * (1 - t) + points[above] * t


def _samples(record: Mapping) -> int:
    """Whole-model measurements behind a cached dense record (1: the dense model alone)."""
    return int(record.get("calibration", {}).get("samples", 1))


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "device"


class LatencyLUT:
    """Latency of any width assignment of one model, predicted from per-layer entries measured on a device.

    Args:
        model: the dense model; a deep copy is traced and kept, the model itself is never touched.
        example_inputs: a batch the model accepts (one tensor); only its per-sample shape matters.
        device: where layers are timed (``"cpu"``, ``"cuda"``...).
        batch: the batch size latency is predicted for.
        cache_dir: folder of the per-device JSON tables.
        threads: CPU threads for timing (default: torch's current setting); part of the device label.
        measure_fn: ``measure_fn(module, input_shape_with_batch, device) -> ms`` times one layer, or the
            whole dense model for the constant; default: :func:`~nas_prune.cost.measure_latency` (warm-up
            then median) on a zero input of the model's dtype. Tests inject a deterministic one.
        rounds: each missing entry (and the dense model, for the constant) is timed this many times,
            in rounds over all missing entries, and the fastest round kept: a busy moment on a shared
            machine only ever adds time, and it then spoils one round of an entry, not the entry.

    Attributes:
        device_name: :func:`~nas_prune.config.device_label` of ``device`` at ``threads``.
        path: this device's cache file.
        groups: channel group -> dense width (``nas_prune.channel_groups`` names).
        table: every entry known to this instance, ``{key: ms}``.
        unmodelled: names of the called modules without an entry (their time is in the constant).
        trusted: set by :meth:`validate`; only a trusted LUT may reject candidates.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        *,
        device: str | torch.device = "cpu",
        batch: int = 1,
        cache_dir: str | Path = "results/lut",
        threads: int | None = None,
        measure_fn: Callable[[nn.Module, tuple[int, ...], torch.device], float] | None = None,
        rounds: int = 3,
    ):
        inputs = tuple(t.cpu() for t in _batch_of(example_inputs))  # traced on a CPU copy; timed on device
        if len(inputs) != 1:
            raise ValueError(f"LatencyLUT needs a model with one input tensor, got {len(inputs)}")
        if batch < 1 or rounds < 1:
            raise ValueError(f"batch and rounds must be >= 1, got {batch} and {rounds}")
        self.device = torch.device(device)
        self.batch = int(batch)
        self.rounds = int(rounds)
        self.threads = threads if self.device.type == "cpu" else None
        self._measure = measure_fn or self._time
        self._dense = copy.deepcopy(model).cpu().eval()
        self.dtype = next(
            (p.dtype for p in self._dense.parameters() if p.is_floating_point()), inputs[0].dtype
        )
        self._sample_shape = tuple(inputs[0].shape[1:])
        with _cpu_threads(self.threads):
            self.device_name = device_label(self.device)
        self.path = Path(cache_dir) / f"{_slug(self.device_name)}.json"

        self._cost = CostModel(self._dense, inputs)
        self.groups = dict(self._cost.groups)
        self._slots, self.unmodelled = self._trace(inputs)
        self.trusted = False
        self.table: dict[str, float] = {}
        self._index: dict[tuple[str, str], dict[tuple[int, int, int], float]] = {}  # for _estimate
        self._estimates: dict[str, float] = {}
        self._indexed = -1  # len(table) when _index was built (entries are only ever added)
        self._constants: dict[str, dict] = {}
        self._kinds = ["depthwise" if _depthwise(slot) else slot.kind for slot in self._slots]
        self._memo: dict[tuple[int, int, int, int], float] = {}  # (slot, in, out, groups) -> ms
        self._memo_size = -1
        self._load()
        dense_keys = self.layer_keys({})
        digest = hashlib.sha1("\n".join([repr(self._sample_shape), repr(self._dense), *dense_keys]).encode())
        self._fingerprint = digest.hexdigest()[:16]

    # ------------------------------------------------------------------------------------------------
    # Tracing
    # ------------------------------------------------------------------------------------------------

    def _trace(self, inputs: tuple[torch.Tensor, ...]) -> tuple[list[_Slot], list[str]]:
        """One forward pass of a copy with hooks: the layers called, their input shapes and channel cuts."""
        probe = copy.deepcopy(self._dense)
        cuts = {layer.name: layer for layer in self._cost.layers}
        slots: list[_Slot] = []
        unmodelled: list[str] = []
        known: dict[int, tuple] = {}  # id(tensor) -> groups cutting its channels (dim 1)
        alive: list[torch.Tensor] = []  # keep traced tensors alive so their ids are not reused
        depth = [0]  # > 0 inside a leaf module, whose functional calls are its own entry's business

        def pass_through(x, out, entry: _Slot | None) -> bool:
            """Give ``out`` the channel groups of ``x``, and record ``entry``, if both are traced."""
            source = known.get(id(x))
            if source is None or out.shape[1] != x.shape[1]:
                return False
            alive.append(out)
            known[id(out)] = source
            if entry is not None:
                slots.append(dataclasses.replace(entry, ins=source, outs=source))
            return True

        def elementwise(label, template, x) -> _Slot:
            config = _config(template, "elementwise")
            c = x.shape[1]
            return _Slot(label, template, "elementwise", config, tuple(x.shape[2:]), c, c, (), ())

        def record(module, args, out, name):
            depth[0] -= 1
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if x is None or not isinstance(out, torch.Tensor) or min(x.dim(), out.dim()) < 2:
                unmodelled.append(name)
                return
            kind = _kind(module)
            if kind in ("conv", "norm") or (kind == "linear" and out.dim() == 2):
                layer = cuts[name]
                outs = tuple(layer.outs)
                ins = outs if kind == "norm" else tuple(layer.ins)
                if kind == "linear":  # features last; other dims besides batch are the "input size"
                    size, dense_in, dense_out = tuple(x.shape[1:-1]), x.shape[-1], out.shape[-1]
                else:
                    size, dense_in, dense_out = tuple(x.shape[2:]), x.shape[1], out.shape[1]
                label, config = type(module).__name__, _config(module, kind)
                slots.append(_Slot(label, module, kind, config, size, dense_in, dense_out, ins, outs))
                alive.append(out)
                known[id(out)] = outs
            elif kind == "elementwise":
                if not pass_through(x, out, elementwise(type(module).__name__, module, x)):
                    unmodelled.append(name)
            elif any(True for _ in module.parameters()) or not pass_through(x, out, None):
                unmodelled.append(name)

        def enter(module, args):
            depth[0] += 1

        class Functional(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                if depth[0] == 0 and tensors and isinstance(out, torch.Tensor) and out.dim() >= 2:
                    x = tensors[0]
                    same = all(t.shape == x.shape for t in tensors) and not any(
                        isinstance(v, torch.Tensor) for v in kwargs.values()
                    )
                    if same and out.shape[:2] == x.shape[:2]:  # element-wise, pooling, reductions...
                        call = _Call(func, args, kwargs)
                        if _follows_channels(call, x):
                            label = getattr(func, "__name__", type(func).__name__)
                            pass_through(x, out, elementwise(label, call, x))
                return out

        leaves = [(name, module) for name, module in probe.named_modules() if not any(module.children())]
        hooks = [module.register_forward_pre_hook(enter) for _, module in leaves]
        hooks += [
            module.register_forward_hook(lambda m, a, o, name=name: record(m, a, o, name))
            for name, module in leaves
        ]
        try:
            with torch.no_grad(), Functional():
                probe(*(t.cpu() for t in inputs))
        finally:
            for hook in hooks:
                hook.remove()
        return slots, list(dict.fromkeys(unmodelled))

    # ------------------------------------------------------------------------------------------------
    # Keys and prediction
    # ------------------------------------------------------------------------------------------------

    def _resolve(self, widths: Mapping[str, int]) -> list[tuple[str, _Slot, int, int, int]]:
        """``(key, slot, in, out, groups)`` of every entry of the model pruned to ``widths``."""
        unknown = set(widths) - set(self.groups)
        if unknown:
            raise ValueError(f"unknown channel group(s) {sorted(unknown)}; groups: {list(self.groups)}")
        drop = self._cost.drop_fractions(widths)
        return [self._entry(slot, *_channels(slot, drop)) for slot in self._slots]

    def _entry(self, slot: _Slot, cin: int, cout: int, groups: int) -> tuple[str, _Slot, int, int, int]:
        """``(key, slot, in, out, groups)`` of ``slot`` at the given channels."""
        head, tail = self._key_parts(slot)
        return f"{head} in={cin} out={cout} groups={groups} {tail}", slot, cin, cout, groups

    def _key_parts(self, slot: _Slot) -> tuple[str, str]:
        """The width-independent parts of ``slot``'s keys: before and after ``in=.. out=.. groups=..``."""
        dtype = str(self.dtype).removeprefix("torch.")
        size = "x".join(map(str, slot.size)) or "-"
        return f"{slot.label}[{slot.config}]", f"input={size} batch={self.batch} {dtype} @ {self.device_name}"

    def layer_keys(self, widths: Mapping[str, int]) -> list[str]:
        """One key per layer call of the model pruned to ``widths`` (``{group: channels}``, missing = full).

        A key holds the layer kind and configuration (kernel, stride, padding, dilation, bias), in/out
        channels, groups, input size, batch, dtype and the device label (CPU model and threads, or GPU).
        """
        return [key for key, *_ in self._resolve(widths)]

    def layer_ms(self, widths: Mapping[str, int], measure_missing: bool = True) -> list[float]:
        """The entry of each layer of :meth:`layer_keys`.

        Args:
            widths: ``{group: channels}``, missing groups at full width.
            measure_missing: time and cache missing entries first; when false nothing is timed and a
                missing entry is estimated from its slot's measured entries (see :meth:`_estimate`).
        """
        resolved = self._resolve(widths)
        if measure_missing:
            if any(key not in self.table for key, *_ in resolved):
                self._fill(resolved)
            return [self.table[key] for key, *_ in resolved]
        return [self.table[key] if key in self.table else self._estimate(*entry) for key, *entry in resolved]

    def predict(self, widths: Mapping[str, int], measure_missing: bool = True) -> float:
        """Predicted latency in ms at :attr:`batch` on this device (never negative).

        ``sum over kinds of scale[kind] * (that kind's entries) + constant`` (:attr:`calibration`).
        With ``measure_missing=False`` nothing is timed (missing entries are estimated, see
        :meth:`layer_ms`) and a prediction costs tens of microseconds; the dense model must then be
        measured already (:meth:`prepare`, or the cache), else ``RuntimeError``.
        """
        return self._calibration(measure_missing).predict(self.kind_sums(widths, measure_missing))

    def kind_sums(self, widths: Mapping[str, int], measure_missing: bool = True) -> dict[str, float]:
        """Sum of the entries of each kind (:data:`~nas_prune.latency_calibration.KINDS`) at ``widths``."""
        sums = dict.fromkeys(KINDS, 0.0)
        if measure_missing:
            for kind, ms in zip(self._kinds, self.layer_ms(widths, True), strict=True):
                sums[kind] += ms
            return sums
        unknown = set(widths) - set(self.groups)
        if unknown:
            raise ValueError(f"unknown channel group(s) {sorted(unknown)}; groups: {list(self.groups)}")
        if len(self.table) != self._memo_size:  # entries are only ever added: estimates may change
            self._memo, self._memo_size = {}, len(self.table)
        drop = self._cost.drop_fractions(widths)
        for i, (slot, kind) in enumerate(zip(self._slots, self._kinds, strict=True)):
            channels = _channels(slot, drop)
            memo_key = (i, *channels)
            ms = self._memo.get(memo_key)
            if ms is None:
                key, *entry = self._entry(slot, *channels)
                ms = self._memo[memo_key] = self.table[key] if key in self.table else self._estimate(*entry)
            sums[kind] += ms
        return sums

    def rejects(self, widths: Mapping[str, int], limit_ms: float) -> bool:
        """Whether the LUT may reject ``widths`` at ``limit_ms``: only a trusted LUT predicting it over the limit.

        DESIGN.md: an untrusted LUT only orders candidates, seeds included; it never rejects. Never times.
        """
        return self.trusted and self.predict(widths, measure_missing=False) > limit_ms

    @property
    def constant_ms(self) -> float:
        """The calibration's constant: what the entries miss (cached per model fingerprint)."""
        return self._calibration(measure=True).constant_ms

    @property
    def calibration(self) -> Calibration:
        """How entries become a prediction: fitted by :meth:`calibrate`, else from the dense model alone
        (:meth:`Calibration.from_dense`). Measures the dense model if it is not cached."""
        return self._calibration(measure=True)

    def _calibration(self, measure: bool) -> Calibration:
        record = self._dense_record(measure)
        if "calibration" in record:
            return Calibration(**record["calibration"])
        return Calibration.from_dense(record["sums"], record["dense_ms"])

    def _dense_record(self, measure: bool) -> dict:
        """This model's cached ``{"dense_ms", "sums", "model"[, "calibration"]}``, measured if missing."""
        if self._fingerprint not in self._constants:
            self._load()
        record = self._constants.get(self._fingerprint)
        if record is None:
            if not measure:
                raise RuntimeError(
                    "the latency LUT's dense model is not measured yet: call prepare() before predicting "
                    "with measure_missing=False"
                )
            shape = (self.batch, *self._sample_shape)
            resolved = self._resolve({})
            dense = min(
                self._fill(resolved, lambda: self._measure(copy.deepcopy(self._dense), shape, self.device))
            )
            record = {"dense_ms": dense, "model": type(self._dense).__name__}
            self._constants[self._fingerprint] = record
        if "sums" not in record:  # also caches written before calibration existed
            record["sums"] = self.kind_sums({}, measure_missing=True)
            self._save()
        return record

    def calibrate(
        self,
        samples: Sequence[Mapping[str, int]] | None = None,
        measure: Callable[[Mapping[str, int]], float] | None = None,
        count: int = 8,
        seed: int = 0,
    ) -> Calibration:
        """Fit the per-kind scales and the constant to whole-model measurements, and cache the fit.

        The dense model is always one of the samples. Missing entries of the samples are timed first.

        Args:
            samples: architectures to time (``{group: channels}``); default: uniform 1/4, 1/2 and 3/4
                plus random widths (each group between 10% and all of its channels), ``count`` in all.
                A search should pass architectures of its grid.
            measure: ``widths -> ms`` of the whole pruned model; default: the LUT's ``measure_fn`` on
                ``prune(model, ..., widths)``, :attr:`rounds` rounds over all samples, fastest kept.
            count: number of default samples.
            seed: seed of the default samples.

        Returns:
            The :class:`Calibration` (also :attr:`calibration` from now on, in every process sharing the
            cache), with its error on the samples it was fitted to.
        """
        record = self._dense_record(measure=True)
        samples = [dict(w) for w in samples] if samples is not None else self._default_samples(count, seed)
        sums = [self.kind_sums(w) for w in samples]
        measured = [float(measure(w)) for w in samples] if measure else self._measure_models(samples)
        fitted = fit_calibration([record["sums"], *sums], [record["dense_ms"], *measured])
        record["calibration"] = fitted.to_json()
        self._save()
        return fitted

    def _default_samples(self, count: int, seed: int) -> list[dict[str, int]]:
        rng = random.Random(seed)
        fractions = [0.25, 0.5, 0.75][:count]
        samples = [{g: max(1, round(c * f)) for g, c in self.groups.items()} for f in fractions]
        samples += [
            {g: rng.randint(max(1, round(0.1 * c)), c) for g, c in self.groups.items()}
            for _ in range(count - len(fractions))
        ]
        return samples

    def _measure_models(self, samples: Sequence[Mapping[str, int]]) -> list[float]:
        """Each pruned model timed with ``measure_fn`` in :attr:`rounds` rounds over all; fastest kept."""
        from .prune import prune  # prune imports the graph; keep this module importable on its own

        example = torch.zeros((2, *self._sample_shape), dtype=self.dtype)
        models = [prune(self._dense, example, dict(w)) for w in samples]
        shape = (self.batch, *self._sample_shape)
        times = [[self._measure(m, shape, self.device) for m in models] for _ in range(self.rounds)]
        return [min(column) for column in zip(*times, strict=True)]

    # ------------------------------------------------------------------------------------------------
    # Preparing the grid, and estimating without timing
    # ------------------------------------------------------------------------------------------------

    def prepare(self, space: WidthSpace, max_entries: int = 3000, progress: bool = True) -> dict:
        """Measure, before a search, the entries its candidates can reach, so it predicts without timing.

        Each layer slot gets every combination of the widths of the groups cutting its input and output
        (``space.choices``; ``space.fixed`` groups at their width). If more than ``max_entries`` of these
        are missing from the table, each slot gets a sub-grid instead: the same number ``k`` of evenly
        spaced widths per axis (input, output; always the smallest and the largest), the largest ``k``
        that keeps the missing entries within ``max_entries`` (at least 2). A slot whose combinations
        cannot be enumerated (over 200,000) gets the keys of a few architectures (smallest, dense,
        uniform 1/4, 1/2, 3/4). Entries are timed through the usual path (:attr:`rounds`, cached), then
        the constant.

        Returns:
            ``entries`` (distinct keys on the full grid), ``measured`` (how many of them are now in the
            table), ``targets`` (keys prepared: the grid or the sub-grid, plus the fallbacks), ``timed``
            (keys timed by this call), ``subgrid`` (bool), ``per_axis`` (the sub-grid's ``k``, or
            ``None``) and ``fallback_layers`` (slots that were not enumerated).
        """
        from tqdm.auto import tqdm

        self._load()
        grids, fallback = [], {}
        for slot in self._slots:
            triples = self._slot_grid(slot, space)
            if triples is None:
                for widths in [
                    space.smallest(),
                    space.dense(),
                    *(space.uniform(f) for f in (0.25, 0.5, 0.75)),
                ]:
                    entry = self._entry(slot, *_channels(slot, self._cost.drop_fractions(widths)))
                    fallback[entry[0]] = entry
            else:
                grids.append((slot, triples))
        dense = {entry[0]: entry for entry in self._resolve({})}
        full = {**dense, **fallback}
        for slot, triples in grids:
            full.update((entry[0], entry) for entry in (self._entry(slot, *t) for t in triples))

        def missing(keys) -> int:
            return sum(key not in self.table for key in keys)

        targets, per_axis = full, None
        if missing(full) > max_entries:
            longest = max((len({t[i] for t in triples}) for _, triples in grids for i in (0, 1)), default=2)
            low, high = 2, max(2, longest)
            while low < high:  # the largest k whose sub-grid fits (2 even if it does not)
                mid = (low + high + 1) // 2
                if missing(self._subgrid(grids, mid).keys() | dense.keys() | fallback.keys()) <= max_entries:
                    low = mid
                else:
                    high = mid - 1
            per_axis = low
            targets = {**dense, **fallback, **self._subgrid(grids, per_axis)}
            if missing(targets) > max_entries:
                warnings.warn(
                    f"latency LUT: even 2 widths per axis need {missing(targets)} entries "
                    f"(> max_entries={max_entries}); measuring them anyway",
                    stacklevel=2,
                )
        todo = [entry for key, entry in targets.items() if key not in self.table]
        with tqdm(
            total=len(todo) * self.rounds, desc="latency LUT", unit="timing", disable=not progress
        ) as bar:
            for start in range(0, len(todo), 500):  # chunks: the cache is saved after each
                self._fill(todo[start : start + 500], bar=bar)
        self._dense_record(measure=True)
        return {
            "entries": len(full),
            "measured": len(full) - missing(full),
            "targets": len(targets),
            "timed": len(todo),
            "subgrid": per_axis is not None,
            "per_axis": per_axis,
            "fallback_layers": len(self._slots) - len(grids),
        }

    def _slot_grid(self, slot: _Slot, space: WidthSpace) -> set[tuple[int, int, int]] | None:
        """``(in, out, groups)`` of ``slot`` at every combination of its groups' widths (``None``: too many)."""
        names = list(dict.fromkeys(g for g, _ in (*slot.ins, *slot.outs)))
        options = [space.choices.get(g) or (space.fixed.get(g, self.groups[g]),) for g in names]
        if math.prod(len(o) for o in options) > 200_000:
            return None
        drops = [
            [(self.groups[g] - w) / self.groups[g] for w in o] for g, o in zip(names, options, strict=True)
        ]
        return {_channels(slot, dict(zip(names, combo, strict=True))) for combo in itertools.product(*drops)}

    def _subgrid(self, grids: list, k: int) -> dict[str, tuple]:
        """Entries of every slot's sub-grid with ``k`` evenly spaced widths per axis."""
        out = {}
        for slot, triples in grids:
            if all(cin == cout for cin, cout, _ in triples):  # one axis: norms, depthwise, element-wise
                by_width = {cout: (cin, cout, groups) for cin, cout, groups in triples}
                chosen = [by_width[c] for c in _spread(sorted(by_width), k)]
            else:
                groups = next(iter(triples))[2]
                ins = _spread(sorted({t[0] for t in triples}), k)
                outs = _spread(sorted({t[1] for t in triples}), k)
                chosen = [(i, o, groups) for i in ins for o in outs if i % groups == 0 and o % groups == 0]
            out.update((entry[0], entry) for entry in (self._entry(slot, *t) for t in chosen))
        return out

    def _estimate(self, slot: _Slot, cin: int, cout: int, groups: int) -> float:
        """A missing entry from the measured entries of the same slot (same key but the widths).

        Linear over the width for one-axis slots (norms, depthwise convs, element-wise ops); over the
        output width within each measured input width, then over the input width (bilinear on a grid)
        otherwise; else the nearest measured entry scaled by :func:`_work` (weights ``in * out / groups``
        or channels), else the dense entry scaled the same way.
        """
        key = self._entry(slot, cin, cout, groups)[0]
        if len(self.table) != self._indexed:
            self._index, self._estimates, self._indexed = {}, {}, len(self.table)
            for k, ms in self.table.items():
                match = _KEY.match(k)
                if match:
                    head, i, o, g, tail = match.groups()
                    self._index.setdefault((head, tail), {})[int(i), int(o), int(g)] = ms
        if key in self._estimates:
            return self._estimates[key]
        points = self._index.get(self._key_parts(slot), {})
        if _depthwise(slot):
            own = {(i, o): ms for (i, o, g), ms in points.items() if i == o == g}
        else:
            own = {(i, o): ms for (i, o, g), ms in points.items() if g == groups}
        one_axis = slot.kind not in ("conv", "linear") or _depthwise(slot)
        if one_axis or (cin == cout and own and all(i == o for i, o in own)):  # e.g. in and out one group
            value = _between({o: ms for (i, o), ms in own.items() if i == o}, cout)
        else:
            columns: dict[int, dict[float, float]] = {}
            for (i, o), ms in own.items():
                columns.setdefault(i, {})[o] = ms
            across = {i: _between(col, cout) for i, col in columns.items()}
            value = _between({i: v for i, v in across.items() if v is not None}, cin)
        if value is None:
            if not own:
                dense = self._entry(slot, *_channels(slot, dict.fromkeys(self.groups, 0.0)))
                if dense[0] not in self.table:
                    raise RuntimeError(f"no measured entry to estimate {key!r} from: call prepare() first")
                own = {dense[2:4]: self.table[dense[0]]}

            def distance(point):
                return abs(math.log(max(point[0], 1) / max(cin, 1))) + abs(
                    math.log(max(point[1], 1) / max(cout, 1))
                )

            i, o = min(own, key=distance)
            g = o if _depthwise(slot) else groups
            value = own[i, o] * _work(slot, cin, cout, groups) / _work(slot, i, o, g)
        self._estimates[key] = float(value)
        return float(value)

    def validate(
        self, samples: Sequence[Mapping[str, int]], measure: Callable[[Mapping[str, int]], float]
    ) -> dict:
        """Compare predictions with ``measure(widths) -> ms`` on ``samples``; decide whether to trust the LUT.

        Returns:
            A dict with ``median_error`` and ``worst_error`` (relative ``|predicted - measured| /
            measured``), ``spearman`` (rank correlation; NaN below 2 samples or for constant values),
            ``trusted`` (median error <= 15% and Spearman >= 0.9; also stored in :attr:`trusted`) and
            ``pairs``: one ``{"widths", "predicted_ms", "measured_ms", "error"}`` per sample.
        """
        if not samples:
            raise ValueError("validate needs at least one sample")
        pairs = []
        for widths in samples:
            predicted = self.predict(widths)  # before measuring: may time missing layers
            measured = float(measure(widths))
            pairs.append(
                {
                    "widths": dict(widths),
                    "predicted_ms": predicted,
                    "measured_ms": measured,
                    "error": abs(predicted - measured) / measured,
                }
            )
        frame = pd.DataFrame(pairs)
        spearman = float(frame["predicted_ms"].rank().corr(frame["measured_ms"].rank()))
        median_error = float(frame["error"].median())
        self.trusted = (
            median_error <= MAX_MEDIAN_ERROR and not math.isnan(spearman) and spearman >= MIN_SPEARMAN
        )
        return {
            "median_error": median_error,
            "worst_error": float(frame["error"].max()),
            "spearman": spearman,
            "trusted": self.trusted,
            "pairs": pairs,
        }

    # ------------------------------------------------------------------------------------------------
    # Measurement and cache
    # ------------------------------------------------------------------------------------------------

    def _fill(self, resolved: list, also: Callable[[], float] | None = None, bar=None) -> list[float]:
        """Measure the entries of ``resolved`` missing from the table and cache them.

        Each missing entry is timed :attr:`rounds` times, in rounds over all of them, and the fastest kept;
        ``also`` (the dense model, for the constant) is timed once per round too, and its times returned.
        ``bar`` (a tqdm bar) advances once per timing of an entry.
        """
        self._load()  # other instances may have measured some meanwhile
        todo = {key: rest for key, *rest in resolved if key not in self.table}
        times: dict[str, list[float]] = {key: [] for key in todo}
        also_times = []
        for _ in range(self.rounds):
            for key, (slot, cin, cout, groups) in todo.items():
                times[key].append(self._measure_slot(slot, cin, cout, groups))
                if bar is not None:
                    bar.update(1)
            if also is not None:
                also_times.append(float(also()))
        self.table.update({key: min(t) for key, t in times.items()})
        if todo:
            self._save()
        return also_times

    def _measure_slot(self, slot: _Slot, cin: int, cout: int, groups: int) -> float:
        module = _build(slot, cin, cout, groups).to(self.dtype).eval()
        if slot.kind == "linear":
            shape = (self.batch, *slot.size, cin)
        else:
            shape = (self.batch, cin, *slot.size)
        return float(self._measure(module, shape, self.device))

    def _time(self, module: nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
        """Default ``measure_fn``: :func:`measure_latency` on a zero input, 10 ms of blocks for a layer
        (thousands of entries are timed), 100 ms for a whole model."""
        example = torch.zeros(shape, dtype=self.dtype)
        seconds = 0.1 if any(module.children()) else 0.01
        return measure_latency(
            module, example, device=device, batch=shape[0], threads=self.threads, min_run_time=seconds
        )

    def _load(self) -> None:
        """Merge this device's cache file into the instance (an unreadable file counts as empty)."""
        if not self.path.is_file():
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            entries = {str(k): float(v) for k, v in doc["entries"].items()}
            constants = {str(k): dict(v) for k, v in doc.get("constants", {}).items()}
            for value in constants.values():
                float(value["dense_ms"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            warnings.warn(
                f"latency LUT cache {self.path} is unreadable ({type(err).__name__}: {err}); "
                "starting a fresh table (the file is replaced on the next write)",
                stacklevel=3,
            )
            return
        self.table.update({k: v for k, v in entries.items() if k not in self.table})
        for k, v in constants.items():  # a calibrated record (or one fitted to more samples) wins
            ours = self._constants.get(k, {})
            if k not in self._constants or _samples(v) > _samples(ours):
                self._constants[k] = v

    def _save(self) -> None:
        """Write the merged table atomically (temp file + ``os.replace``)."""
        self._load()
        doc = {
            "schema_version": SCHEMA_VERSION,
            "device": self.device_name,
            "entries": dict(sorted(self.table.items())),
            "constants": self._constants,
        }
        atomic_write_text(self.path, json.dumps(doc, indent=1) + "\n")
