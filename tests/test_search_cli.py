"""The search CLI as users meet it: bad input, a killed-and-resumed run, a Ray cluster address.

These run the search in subprocesses with their own Ray (the only Ray starts outside the session's one,
as DESIGN.md allows); each subprocess gets its own RAY_TMPDIR so its processes can be found and ended.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas_prune.cli import run_cli
from nas_prune.search import main

TRAINED = ["complete", "pruned", "failed"]
QUICK = ["--dataset", "synthetic", "--pretrain-epochs", "1", "--epochs-per-trial", "0.5"]


def _fails(capsys, argv, message):
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    return err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "synthetic"], "give at least one budget"),
        (["--budget-flops", "0"], "fraction in (0, 1]"),
        (["--budget-flops", "1.5"], "fraction in (0, 1]"),
        (["--budget-flops", "abc"], "invalid float value"),
        (["--budget-params", "-1"], "fraction in (0, 1]"),
        (["--budget-latency", "fast"], "neither a fraction"),
        (["--budget-flops", "0.3", "--model", "nope"], "unknown model 'nope'"),
        (["--budget-flops", "0.3", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["--budget-flops", "0.3", "--checkpoint", "/nonexistent.pt"], "does not exist"),
        (["--budget-flops", "0.3", "--trials", "0"], "--trials must be at least 1"),
        (["--budget-flops", "0.3", "--seeds", "magic"], "unknown seed"),
        (["--budget-flops", "0.3", "--sampler", "grid"], "unknown --sampler 'grid'"),
        (["--budget-flops", "0.3", "--gate-epochs", "-1"], "--gate-epochs must be >= 0"),
        (["--budget-latency", "0.5", "--lut-samples", "1"], "--lut-samples >= 2"),
        (["--resume", "/nonexistent-run"], "not a search run directory"),
        pytest.param(
            ["--budget-flops", "0.3", "--gpus-per-trial", "0.5"],
            "needs a GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    _fails(capsys, argv, message)


def test_budget_below_the_smallest_architecture(capsys, tmp_path):
    _fails(capsys, ["--budget-flops", "0.001", *QUICK, "--output", str(tmp_path / "r")], "no architecture")


def test_missing_data(capsys, monkeypatch, tmp_path):
    import nas_prune.data as data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "none")
    monkeypatch.setattr(data, "_download_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    _fails(capsys, ["--budget-flops", "0.3", "--dataset", "mnist", "--data-dir", str(tmp_path)], "not found")


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_unreadable_or_foreign_checkpoint(capsys, tmp_path, content):
    path = tmp_path / "ckpt.pt"
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    _fails(
        capsys,
        ["--budget-flops", "0.3", *QUICK, "--checkpoint", str(path), "--output", str(tmp_path / "r")],
        "checkpoint",
    )


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "nas_prune.search", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in (
        "--budget-flops",
        "--budget-params",
        "--budget-latency",
        "--latency-batch",
        "--trials",
        "--epochs-per-trial",
        "--workers",
        "--gpus-per-trial",
        "--device",
        "--ray-address",
        "--seed",
        "--output",
        "--resume",
        "--dry-run",
        "--time-budget",
        "--checkpoint",
        "--data-dir",
        "--gate-epochs",
        "--gate-seeds",
        "--sampler",
        "--lut-dir",
        "--lut-samples",
    ):
        assert flag in out.stdout


def test_dry_run_prints_groups_and_seeds(capsys):
    assert run_cli(main, ["--budget-flops", "0.3", "--dataset", "synthetic", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "features.conv1.conv" in out and "seed uniform" in out and "seed l2" in out


def _env(tmp: str) -> dict:
    return {**os.environ, "RAY_TMPDIR": tmp, "PYTHONUNBUFFERED": "1"}


def _end_processes_under(tmp: str) -> None:
    """End every process whose command line mentions ``tmp`` (the Ray started for one test)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if tmp in (proc / "cmdline").read_bytes().decode(errors="ignore"):
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def _trained(run: Path) -> pd.DataFrame:
    try:
        trials = pd.read_csv(run / "trials.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["state"])
    return trials[trials["state"].isin(TRAINED)]


def test_killed_search_resumes_without_duplicates(tmp_path):
    tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "nas_prune.search",
        "--budget-flops",
        "0.5",
        *QUICK,
        "--trials",
        "8",
        "--workers",
        "1",
        "--epochs-per-trial",
        "1",
        "--output",
        str(run),
    ]
    proc = subprocess.Popen(
        args, env=_env(tmp), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while len(_trained(run)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _end_processes_under(tmp)
    done_before = set(_trained(run)["trial_id"])
    assert 2 <= len(done_before) < 8
    try:
        resumed = subprocess.run(
            [sys.executable, "-m", "nas_prune.search", "--resume", str(run), "--trials", "8"],
            env=_env(tmp),
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        _end_processes_under(tmp)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = pd.read_csv(run / "trials.csv")
    assert trials["trial_id"].is_unique
    assert len(_trained(run)) == 8 and done_before <= set(_trained(run)["trial_id"])
    assert (run / "pareto.csv").is_file() and (run / "best_arch.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_joins_a_ray_head_node(tmp_path):
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    port = _free_port()
    env = {**_env(tmp), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    try:
        subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
        head = subprocess.run(
            [
                ray_cli,
                "start",
                "--head",
                f"--port={port}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={tmp}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert head.returncode == 0, head.stderr[-2000:]
        run = tmp_path / "run"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "nas_prune.search",
                "--budget-flops",
                "0.5",
                *QUICK,
                "--trials",
                "2",
                "--ray-address",
                f"127.0.0.1:{port}",
                "--output",
                str(run),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert len(_trained(run)) == 2
        logs = list(Path(tmp).glob("session_*/logs/*worker*"))
        assert logs, "the trials ran on the head node's workers"
    finally:
        _end_processes_under(tmp)
