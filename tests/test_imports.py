"""The core imports light: no Ray, no Optuna, no process started; the search package is callable."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest


def _marked_processes(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose environment holds ``marker`` (read from /proc)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # ended meanwhile, or another user's
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="reads processes from /proc")
def test_module_is_callable_and_imports_no_ray_into_the_core():
    """Importing the package and its core modules loads neither Ray nor Optuna and starts no process
    (no raylet, no gcs_server): every process the importer starts inherits its marked environment."""
    search_module = importlib.import_module("nas_prune.search")
    assert callable(search_module) and search_module.search is not None
    name, value = "NAS_PRUNE_IMPORT_PROBE", uuid.uuid4().hex
    marker = f"{name}={value}"
    core = ("graph", "prune", "cost", "space", "seeds", "train", "models", "data", "objective")
    code = (
        "import importlib, sys, nas_prune\n"
        f"for name in {core!r}: importlib.import_module('nas_prune.' + name)\n"
        "print('ray' in sys.modules, 'optuna' in sys.modules, flush=True)\n"
        "sys.stdin.read()"  # alive until the test has looked for its child processes
    )
    probe = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, name: value},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        imported = probe.stdout.readline().split()
        started = {pid: cmd for pid, cmd in _marked_processes(marker).items() if pid != probe.pid}
    finally:
        probe.communicate("")
    assert probe.returncode == 0 and imported == ["False", "False"]
    assert started == {} and _marked_processes(marker) == {}
