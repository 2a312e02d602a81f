"""Per-layer latency lookup table (ProxylessNAS-style): predicted latency = sum of layer entries + constant.

Measuring a candidate's latency means building and timing the slim model; a search proposes far more
candidates than it can time. The LUT times each *layer shape* once instead, on the device at hand, and
predicts a network as the sum of its layers' entries, calibrated, plus one measured constant.

Modules: ``slots`` (a layer call with an entry, and its channels at any widths), ``trace`` (which calls
of a model get entries), ``table`` (keys and the per-device cache file), ``timing`` (timing entries and
whole models in rounds), ``estimate`` (entries without timing), ``grid`` (what to measure before a search),
``calibration`` (entries -> prediction, trust, bisection to a latency limit) and ``lut`` (the
:class:`LatencyLUT` facade).
"""

from .calibration import KINDS, Calibration, bisect_to_latency, fit_calibration
from .lut import LatencyLUT
from .timing import in_rounds

__all__ = ["KINDS", "Calibration", "LatencyLUT", "bisect_to_latency", "fit_calibration", "in_rounds"]
