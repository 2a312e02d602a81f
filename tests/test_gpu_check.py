"""scripts/gpu_check.sh in its CPU dry mode (CI has no GPU): it says so, checks the LUT and the search's
flags on the CPU, writes its CSVs and exits 0."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_gpu_check_cpu_dry_mode(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "No CUDA device here" in done.stdout and "| LUT held-out error | convnet | 1 |" in done.stdout
    lut = pd.read_csv(tmp_path / "lut.csv")
    assert lut["model"].tolist() == ["convnet"] and (lut["predictions_per_s"] > 0).all()
    assert "space:" in (tmp_path / "search_dry_run.txt").read_text()  # the search parsed every flag
    assert (tmp_path / "speedup.csv").is_file()
    assert pd.read_csv(tmp_path / "round_to.csv")["speedup"].gt(0).all()
    assert "| uniform widths vs dense | convnet (0.5 round_to=8) | 1 |" in done.stdout
