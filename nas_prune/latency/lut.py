"""The latency lookup table of one model: predicted latency = calibrated sum of layer entries + constant.

:class:`LatencyLUT` ties the pieces of :mod:`nas_prune.latency` together: the model's slots (``trace``),
their entries in the device's table (``table``), timed (``timing``) or estimated (``estimate``), the grid
measured before a search (``grid``) and the calibration that turns entries into a prediction
(``calibration``).

The constant is the measured dense latency minus the sum of the dense model's entries: what the entries
miss (functional ops without entries, ``forward`` glue, layers without entries, layers timed alone rather
than back to back). The dense model is timed in the same rounds as its entries (see ``rounds``). The
constant is measured once per model (fingerprint: the dense layer keys and the module tree) and cached
with the entries, so every process predicts the same numbers from the same table. Delete the cache file
to re-measure everything.

The LUT may reject candidates only once :meth:`LatencyLUT.validate` finds it trusted on the
device; otherwise it only orders candidates.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..batch import detach_cpu, map_tensors, tensors, zeros_batch
from ..config import device_label
from ..cost import CostModel, _cpu_threads
from .calibration import KINDS, Calibration, agreement, default_samples, fit_calibration
from .estimate import Estimator
from .grid import plan
from .slots import channels, depthwise
from .table import Entry, Keys, Table
from .timing import MeasureFn, Timer
from .trace import trace

if TYPE_CHECKING:
    from ..space import WidthSpace

__all__ = ["LatencyLUT"]


class LatencyLUT:
    """Latency of any width assignment of one model, predicted from per-layer entries measured on a device.

    Args:
        model: the dense model; a deep copy is traced and kept, the model itself is never touched.
        example_inputs: a batch the model accepts (a tensor, a tuple of them or a dict of keyword
            inputs); only its structure, per-sample shapes and dtypes matter.
        device: where layers are timed (``"cpu"``, ``"cuda"``...).
        batch: the batch size latency is predicted for.
        cache_dir: folder of the per-device JSON tables.
        threads: CPU threads for timing (default: torch's current setting); part of the device label.
        measure_fn: ``measure_fn(module, input_shape_with_batch, device) -> ms`` times one layer, or the
            whole dense model for the constant; default: :func:`~nas_prune.cost.measure_latency` (warm-up
            then median) on a zero input of the model's dtype. For a model with several inputs (a tuple
            or dict) the whole model gets its zero inputs instead of a shape
            (:data:`~nas_prune.latency.timing.MeasureFn`). Tests inject a deterministic one.
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
        measure_fn: MeasureFn | None = None,
        rounds: int = 3,
    ):
        inputs = detach_cpu(example_inputs)  # traced on a CPU copy; timed on device
        if not tensors(inputs):
            raise ValueError("LatencyLUT needs example inputs with at least one tensor")
        if batch < 1 or rounds < 1:
            raise ValueError(f"batch and rounds must be >= 1, got {batch} and {rounds}")
        self.device = torch.device(device)
        self.batch = int(batch)
        self.rounds = int(rounds)
        self.threads = threads if self.device.type == "cpu" else None
        self._dense = copy.deepcopy(model).cpu().eval()
        self.dtype = next(
            (p.dtype for p in self._dense.parameters() if p.is_floating_point()), tensors(inputs)[0].dtype
        )
        self._inputs = inputs
        single = _single_tensor(inputs)
        # One input tensor: measure_fn gets shapes, and the fingerprint is the per-sample shape, as ever.
        self._sample_shape = None if single is None else tuple(single.shape[1:])
        with _cpu_threads(self.threads):
            self.device_name = device_label(self.device)
        self._cache = Table(cache_dir, self.device_name)
        self.path = self._cache.path
        self.table = self._cache.entries
        self._timer = Timer(self.device, self.dtype, self.batch, self.rounds, self.threads, measure_fn)
        self._keys = Keys(self.batch, self.dtype, self.device_name)

        self._cost = CostModel(self._dense, inputs)
        self.groups = dict(self._cost.groups)
        self._slots, self.unmodelled = trace(self._dense, self._cost, inputs)
        self.trusted = False
        self._kinds = ["depthwise" if depthwise(slot) else slot.kind for slot in self._slots]
        self._estimator = Estimator(self._slots, self._kinds, self._keys, self.table)
        self._cache.load()
        dense_keys = self.layer_keys({})
        shapes = self._sample_shape
        if shapes is None:
            shapes = map_tensors(lambda t: (tuple(t.shape[1:]), str(t.dtype)), inputs)
        digest = hashlib.sha1("\n".join([repr(shapes), repr(self._dense), *dense_keys]).encode())
        self._fingerprint = digest.hexdigest()[:16]

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
                missing entry is estimated from its slot's measured entries
                (:mod:`~nas_prune.latency.estimate`).
        """
        resolved = self._resolve(widths)
        if measure_missing:
            if any(key not in self.table for key, *_ in resolved):
                self._fill(resolved)
            return [self.table[key] for key, *_ in resolved]
        estimate = self._estimator.estimate
        return [self.table[key] if key in self.table else estimate(*entry) for key, *entry in resolved]

    def predict(self, widths: Mapping[str, int], measure_missing: bool = True) -> float:
        """Predicted latency in ms at :attr:`batch` on this device (never negative).

        ``sum over kinds of scale[kind] * (that kind's entries) + constant`` (:attr:`calibration`).
        With ``measure_missing=False`` nothing is timed (missing entries are estimated, see
        :meth:`layer_ms`) and a prediction costs tens of microseconds; the dense model must then be
        measured already (:meth:`prepare`, or the cache), else ``RuntimeError``.
        """
        return self._calibration(measure_missing).predict(self.kind_sums(widths, measure_missing))

    def kind_sums(self, widths: Mapping[str, int], measure_missing: bool = True) -> dict[str, float]:
        """Sum of the entries of each kind (:data:`~nas_prune.latency.KINDS`) at ``widths``."""
        sums = dict.fromkeys(KINDS, 0.0)
        if measure_missing:
            for kind, ms in zip(self._kinds, self.layer_ms(widths, True), strict=True):
                sums[kind] += ms
            return sums
        return self._estimator.kind_sums(self._drop(widths), sums)

    def rejects(self, widths: Mapping[str, int], limit_ms: float) -> bool:
        """Whether the LUT may reject ``widths`` at ``limit_ms``: only a trusted LUT predicting it over the limit.

        An untrusted LUT only orders candidates, seeds included; it never rejects. Never times.
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

    def calibrate(
        self,
        samples: Sequence[Mapping[str, int]] | None = None,
        measure: Callable[[Mapping[str, int]], float] | None = None,
        count: int = 8,
        seed: int = 0,
    ) -> Calibration:
        """Fit the per-kind scales and the constant to whole-model measurements, and cache the fit.

        The dense model is always one of the samples, timed again with the others: every whole-model
        point of one fit comes from the same moment of the machine, so a machine that got faster or
        slower since the table was built shifts them all alike instead of bending the fit. Missing
        entries of the samples are timed first.

        Args:
            samples: architectures to time (``{group: channels}``); default: ``count`` random widths (each group
                between 10% and all of its channels; see :func:`default_samples`).
                A search should pass architectures of its grid.
            measure: ``widths -> ms`` of the whole pruned model (``{}``: the dense one); default:
                :meth:`time_pruned` on the samples and the dense model together.
            count: number of default samples.
            seed: seed of the default samples and of the timing order.

        Returns:
            The :class:`Calibration` (also :attr:`calibration` from now on, in every process sharing the
            cache), with its error on the samples it was fitted to.
        """
        record = self._dense_record(measure=True)
        samples = (
            [dict(w) for w in samples] if samples is not None else default_samples(self.groups, count, seed)
        )
        sums = [self.kind_sums(w) for w in samples]
        measured = (
            [float(measure(w)) for w in [{}, *samples]] if measure else self.time_pruned([{}, *samples], seed)
        )
        fitted = fit_calibration([record["sums"], *sums], measured)
        record["calibration"] = fitted.to_json()
        self._cache.save()
        return fitted

    def time_pruned(self, samples: Sequence[Mapping[str, int]], seed: int = 0) -> list[float]:
        """Measured ms of the model pruned to each of ``samples`` (``{}``: the dense model) with the LUT's
        ``measure_fn``: the fastest of :attr:`rounds` rounds over all samples, each round in a new
        random order (:func:`~nas_prune.latency.timing.in_rounds`), so that what is compared is timed
        under the same conditions."""
        return self._timer.pruned(self._dense, self._zeros(2), self._measured_inputs(), samples, seed)

    def _zeros(self, batch: int):
        """Zero inputs of the model's structure at ``batch`` (floating ones in the model's dtype)."""
        if self._sample_shape is not None:
            return torch.zeros((batch, *self._sample_shape), dtype=self.dtype)
        return zeros_batch(self._inputs, batch, self.dtype)

    def _measured_inputs(self):
        """What ``measure_fn`` gets for the whole model: the input shape at :attr:`batch` for one input
        tensor, else zero inputs of the model's structure at that batch."""
        if self._sample_shape is not None:
            return (self.batch, *self._sample_shape)
        return self._zeros(self.batch)

    def validate(
        self, samples: Sequence[Mapping[str, int]], measure: Callable[[Mapping[str, int]], float]
    ) -> dict:
        """Compare predictions with ``measure(widths) -> ms`` on ``samples``; decide whether to trust the LUT.

        Returns:
            :func:`~nas_prune.latency.calibration.agreement`'s report; its ``trusted`` is also stored in
            :attr:`trusted`.
        """
        if not samples:
            raise ValueError("validate needs at least one sample")
        pairs = []
        for widths in samples:
            predicted = self.predict(widths)  # before measuring: may time missing layers
            pairs.append((dict(widths), predicted, float(measure(widths))))
        report = agreement(pairs)
        self.trusted = report["trusted"]
        return report

    def prepare(self, space: WidthSpace, max_entries: int = 3000, progress: bool = True) -> dict:
        """Measure, before a search, the entries its candidates can reach, so it predicts without timing.

        The entries of the space's grid, or of a sub-grid past ``max_entries`` missing ones (see
        :func:`~nas_prune.latency.grid.plan`), are timed through the usual path (:attr:`rounds`, cached),
        then the constant.

        Returns:
            ``entries`` (distinct keys on the full grid), ``measured`` (how many of them are now in the
            table), ``targets`` (keys prepared: the grid or the sub-grid, plus the fallbacks), ``timed``
            (keys timed by this call), ``subgrid`` (bool), ``per_axis`` (the sub-grid's ``k``, or
            ``None``) and ``fallback_layers`` (slots that were not enumerated).
        """
        from tqdm.auto import tqdm

        self._cache.load()
        chosen = plan(self._slots, space, self._cost, self._keys, self.table, max_entries)
        todo = [entry for key, entry in chosen.targets.items() if key not in self.table]
        with tqdm(
            total=len(todo) * self.rounds, desc="latency LUT", unit="timing", disable=not progress
        ) as bar:
            for start in range(0, len(todo), 500):  # chunks: the cache is saved after each
                self._fill(todo[start : start + 500], bar=bar)
        self._dense_record(measure=True)
        return {
            "entries": len(chosen.full),
            "measured": sum(key in self.table for key in chosen.full),
            "targets": len(chosen.targets),
            "timed": len(todo),
            "subgrid": chosen.per_axis is not None,
            "per_axis": chosen.per_axis,
            "fallback_layers": chosen.fallback_layers,
        }

    def _drop(self, widths: Mapping[str, int]) -> dict[str, float]:
        """Fraction of each group's channels ``widths`` removes; unknown groups are an error."""
        unknown = set(widths) - set(self.groups)
        if unknown:
            raise ValueError(f"unknown channel group(s) {sorted(unknown)}; groups: {list(self.groups)}")
        return self._cost.drop_fractions(widths)

    def _resolve(self, widths: Mapping[str, int]) -> list[Entry]:
        """``(key, slot, in, out, groups)`` of every entry of the model pruned to ``widths``."""
        drop = self._drop(widths)
        return [self._keys.entry(slot, *channels(slot, drop)) for slot in self._slots]

    def _fill(self, resolved: list[Entry], also: Callable[[], float] | None = None, bar=None) -> list[float]:
        """Time the entries of ``resolved`` missing from the table and cache them (see
        :meth:`Timer.entries <nas_prune.latency.timing.Timer.entries>`); ``also``'s times are returned."""
        self._cache.load()  # other instances may have measured some meanwhile
        todo = {key: rest for key, *rest in resolved if key not in self.table}
        best, also_times = self._timer.entries(todo, also, bar)
        self.table.update(best)
        if todo:
            self._cache.save()
        return also_times

    def _calibration(self, measure: bool) -> Calibration:
        record = self._dense_record(measure)
        if "calibration" in record:
            return Calibration(**record["calibration"])
        return Calibration.from_dense(record["sums"], record["dense_ms"])

    def _dense_record(self, measure: bool) -> dict:
        """This model's cached ``{"dense_ms", "sums", "model"[, "calibration"]}``, measured if missing."""
        constants = self._cache.constants
        if self._fingerprint not in constants:
            self._cache.load()
        record = constants.get(self._fingerprint)
        if record is None:
            if not measure:
                raise RuntimeError(
                    "the latency LUT's dense model is not measured yet: call prepare() before predicting "
                    "with measure_missing=False"
                )
            inputs = self._measured_inputs()
            timed = self._fill(
                self._resolve({}),
                lambda: self._timer.measure(copy.deepcopy(self._dense), inputs, self.device),
            )
            record = {"dense_ms": min(timed), "model": type(self._dense).__name__}
            constants[self._fingerprint] = record
        if "sums" not in record:  # also caches written before calibration existed
            record["sums"] = self.kind_sums({}, measure_missing=True)
            self._cache.save()
        return record


def _single_tensor(inputs) -> torch.Tensor | None:
    """The one input tensor of ``inputs`` (a tensor, or a tuple or list of one), else ``None``."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (tuple, list)) and len(inputs) == 1 and isinstance(inputs[0], torch.Tensor):
        return inputs[0]
    return None
