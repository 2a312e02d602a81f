"""The search CLI's ``--dry-run`` lists a grouped-convolution zoo model's grouped groups as searchable."""

import subprocess
import sys


def test_resnext_dry_run_lists_grouped_groups_as_searchable():
    cmd = [sys.executable, "-m", "nas_prune.search", "--dry-run", "--budget-flops", "0.3"]
    cmd += ["--model", "resnext20", "--dataset", "synthetic"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    grouped = [line for line in run.stdout.splitlines() if ".grouped.conv " in line]
    assert len(grouped) == 6  # one per block
    for line in grouped:
        choices = line.split("choices (")[1].rstrip(")").split(", ")
        assert len(choices) > 1 and all(int(c) % 8 == 0 for c in choices)  # multiples of the 8 groups
