"""Tests for the packaging: a built wheel ships what an installed nas_prune reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nas_prune.models import model_names

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_every_search_space(tmp_path):
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("pip is not available to build a wheel")
    # Build from a clean copy: an in-tree build/ folder could hold stale files from an earlier build.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "nas_prune", source / "nas_prune", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"), str(source)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("nas_prune-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    missing = [name for name in model_names() if f"nas_prune/search_spaces/{name}.yaml" not in shipped]
    assert not missing, f"the wheel lacks the search spaces of {missing}"
