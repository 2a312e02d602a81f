"""The on-disk latency table of one device: entries by key, and each model's dense record.

A key holds the layer kind and configuration (kernel, stride, padding, dilation, bias), in/out channels,
groups, input size, batch, dtype and the device label (CPU model and threads, or GPU), so one table
serves every model and width on its device. Tests check that the keys at any widths equal the keys of
the physically pruned model.

Cache: one JSON file per device label (``<cache_dir>/<slug of device_label>.json``), ``{"schema_version",
"device", "entries": {key: ms}, "constants": {fingerprint: {"constant_ms", "dense_ms", "model"}}}``,
re-read before each write and before measuring (so instances share entries), written atomically (temp
file + ``os.replace``: readers never see half a file; two processes writing at once may lose each other's
newest entries, which are then measured again). An unreadable file is replaced, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from .slots import Slot

SCHEMA_VERSION = 1
_KEY = re.compile(r"^(.*) in=(\d+) out=(\d+) groups=(\d+) (input=.*)$", re.S)

Entry = tuple[str, Slot, int, int, int]
"""``(key, slot, in, out, groups)``: one entry of a slot at given channels."""


@dataclasses.dataclass(frozen=True)
class Keys:
    """How the entries of one model at one batch, dtype and device are named."""

    batch: int
    dtype: torch.dtype
    device_name: str

    def entry(self, slot: Slot, cin: int, cout: int, groups: int) -> Entry:
        """``(key, slot, in, out, groups)`` of ``slot`` at the given channels."""
        head, tail = self.parts(slot)
        return f"{head} in={cin} out={cout} groups={groups} {tail}", slot, cin, cout, groups

    def parts(self, slot: Slot) -> tuple[str, str]:
        """The width-independent parts of ``slot``'s keys: before and after ``in=.. out=.. groups=..``."""
        dtype = str(self.dtype).removeprefix("torch.")
        size = "x".join(map(str, slot.size)) or "-"
        return f"{slot.label}[{slot.config}]", f"input={size} batch={self.batch} {dtype} @ {self.device_name}"


def split_key(key: str) -> tuple[tuple[str, str], tuple[int, int, int]] | None:
    """A key as its :meth:`Keys.parts` and ``(in, out, groups)``; ``None`` if it is not an entry key."""
    match = _KEY.match(key)
    if not match:
        return None
    head, i, o, g, tail = match.groups()
    return (head, tail), (int(i), int(o), int(g))


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "device"


def _samples(record: Mapping) -> int:
    """Whole-model measurements behind a cached dense record (1: the dense model alone)."""
    return int(record.get("calibration", {}).get("samples", 1))


class Table:
    """One device's entries and dense records, merged with its cache file (see the module docstring).

    Attributes:
        path: the cache file, ``<cache_dir>/<slug of device_name>.json``.
        entries: every entry known, ``{key: ms}``; only ever added to.
        constants: model fingerprint -> ``{"dense_ms", "sums", "model"[, "calibration"]}``.
    """

    def __init__(self, cache_dir: str | Path, device_name: str):
        self.device_name = device_name
        self.path = Path(cache_dir) / f"{_slug(device_name)}.json"
        self.entries: dict[str, float] = {}
        self.constants: dict[str, dict] = {}

    def load(self) -> None:
        """Merge the cache file into the table (an unreadable file counts as empty)."""
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
        self.entries.update({k: v for k, v in entries.items() if k not in self.entries})
        for k, v in constants.items():  # a calibrated record (or one fitted to more samples) wins
            ours = self.constants.get(k, {})
            if k not in self.constants or _samples(v) > _samples(ours):
                self.constants[k] = v

    def save(self) -> None:
        """Write the merged table atomically (temp file + ``os.replace``)."""
        self.load()
        doc = {
            "schema_version": SCHEMA_VERSION,
            "device": self.device_name,
            "entries": dict(sorted(self.entries.items())),
            "constants": self.constants,
        }
        atomic_write_text(self.path, json.dumps(doc, indent=1) + "\n")
