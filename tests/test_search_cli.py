"""The search CLI as users meet it: bad input, a killed-and-resumed run, a Ray cluster address.

These run the search in subprocesses with their own Ray (the only Ray starts outside the session's one:
a kill and a cluster address need a separate process); each subprocess gets its own RAY_TMPDIR so its
processes can be found and ended.
"""

from __future__ import annotations

import dataclasses
import json
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
import yaml

from nas_prune.cli import run_cli
from nas_prune.config import SearchConfig, load_config
from nas_prune.errors import NasPruneError
from nas_prune.search import main
from nas_prune.search.inputs import validate

EVALUATED = ["complete", "stopped", "failed"]
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
        (["--budget-flops", "0.3", "--fine-tune-from", "scratch"], "invalid choice: 'scratch'"),
        (["--budget-flops", "0.3", "--rung0-judge", "dense"], "invalid choice: 'dense'"),
        (["--budget-flops", "0.3", "--supernet-grad-clip", "-1"], "--supernet-grad-clip must be >= 0"),
        (["--budget-latency", "0.5", "--lut-samples", "1"], "--lut-samples >= 2"),
        (["--resume", "/nonexistent-run"], "not a search run directory"),
        (["--budget-flops", "0.3", "--round-to", "0"], "--round-to must be a positive number"),
        (["--budget-flops", "0.3", "--min-fraction", "0"], "--min-fraction must be in (0, 1]"),
        (["--budget-flops", "0.3", "--rungs", "-1"], "--rungs must be >= 0"),
        (["--budget-flops", "0.3", "--reduction-factor", "1"], "--reduction-factor >= 2"),
        (["--budget-flops", "0.3", "--cost-levels", "0.5"], "must be fractions in (0, 1] and include 1.0"),
        (
            ["--budget-flops", "0.3", "--cost-levels", "1", "1.5"],
            "must be fractions in (0, 1] and include 1.0",
        ),
        (["--budget-flops", "0.3", "--budget-band", "0"], "--budget-band must be in (0, 1)"),
        (["--budget-flops", "0.3", "--time-budget", "-5"], "--time-budget must be positive"),
        pytest.param(
            ["--budget-flops", "0.3", "--gpus-per-trial", "0.5"],
            "needs a GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    _fails(capsys, argv, message)


def test_resume_with_a_broken_config_yaml(capsys, tmp_path):
    (tmp_path / "config.yaml").write_text("settings: [unclosed\n")
    _fails(capsys, ["--resume", str(tmp_path)], "not valid YAML")
    (tmp_path / "config.yaml").write_text("just a string\n")
    _fails(capsys, ["--resume", str(tmp_path)], "no 'settings' mapping")


def test_resume_refuses_an_unknown_setting_but_reads_retired_ones(capsys, tmp_path):
    settings = {**dataclasses.asdict(SearchConfig(budget_flops=0.5)), "cost_levels": [1.0]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"settings": {**settings, "budget_flopz": 0.3}}))
    err = _fails(capsys, ["--resume", str(tmp_path)], "unknown setting(s) budget_flopz")
    assert err.startswith("nas_prune.search: error: --resume")
    old = {**settings, "reports_per_trial": 4, "extra": {"note": "x"}}  # written by older versions
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"settings": old}))
    assert load_config(tmp_path / "config.yaml") == SearchConfig(budget_flops=0.5, cost_levels=(1.0,))


def test_a_run_from_before_fine_tune_from_resumes_as_it_started(tmp_path):
    """Older versions fine-tuned from the supernet, trained it unclipped and wrote neither setting: a
    resume goes on so."""
    settings = dataclasses.asdict(SearchConfig(budget_flops=0.5, supernet_epochs=1.0))
    assert settings.pop("fine_tune_from") == "dense"  # the defaults now
    assert settings.pop("supernet_grad_clip") == 5.0
    assert settings.pop("rung0_judge") == "both"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"settings": settings}))
    old = load_config(tmp_path / "config.yaml")
    assert (
        old.fine_tune_from == "supernet" and old.supernet_grad_clip is None and old.rung0_judge == "supernet"
    )  # so its supernet.pt still fits
    with pytest.raises(NasPruneError, match="--fine-tune-from must be dense or supernet"):
        validate(SearchConfig(budget_flops=0.5, fine_tune_from="scratch"))
    with pytest.raises(NasPruneError, match="--rung0-judge must be supernet or both"):
        validate(SearchConfig(budget_flops=0.5, rung0_judge="dense"))  # a config.yaml edited by hand


def test_output_that_is_a_file_or_cannot_be_created(capsys, tmp_path):
    existing = tmp_path / "taken"
    existing.write_text("x")
    _fails(capsys, ["--budget-flops", "0.5", *QUICK, "--output", str(existing)], "is a file")
    _fails(capsys, ["--budget-flops", "0.5", *QUICK, "--output", str(existing / "run")], "cannot create")


def test_freeze_keeps_a_group_at_full_width(capsys):
    argv = ["--budget-flops", "0.5", "--dataset", "synthetic", "--dry-run", "--freeze", "features.conv2.conv"]
    assert run_cli(main, argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "features.conv2.conv" in x)
    assert "fixed" in line
    _fails(
        capsys,
        ["--budget-flops", "0.5", "--dataset", "synthetic", "--dry-run", "--freeze", "nope"],
        "not channel groups",
    )


def test_budget_below_the_smallest_architecture(capsys, tmp_path):
    _fails(capsys, ["--budget-flops", "0.001", *QUICK, "--output", str(tmp_path / "r")], "no architecture")


def test_missing_data(capsys, monkeypatch, tmp_path):
    import nas_prune.data.files as data_files

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_files, "SYSTEM_DATA_DIR", tmp_path / "none")
    monkeypatch.setattr(
        data_files, "_download_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline"))
    )
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
        "--rungs",
        "--reduction-factor",
        "--cost-levels",
        "--budget-band",
        "--freeze",
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


def _results(run: Path) -> list[tuple[int, int]]:
    """(trial_id, rung) of every finished evaluation in the journal, torn last line ignored."""
    path = run / "evaluations.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event["kind"] == "result":
            out.append((event["trial_id"], event["rung"]))
    return out


def test_killed_search_resumes_without_losing_or_repeating_an_evaluation(tmp_path):
    tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "nas_prune.search", "--budget-flops", "0.5", *QUICK, "--trials", "16",
            "--workers", "1", "--gate-epochs", "0", "--reduction-factor", "4", "--output", str(run)]  # fmt: skip
    proc = subprocess.Popen(
        args, env=_env(tmp), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while len(_results(run)) < 6 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _end_processes_under(tmp)
    before = _results(run)
    assert 6 <= len(before) and not (run / "pareto.csv").exists()
    try:
        resumed = subprocess.run(
            [sys.executable, "-m", "nas_prune.search", "--resume", str(run)],
            env=_env(tmp),
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        _end_processes_under(tmp)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = _results(run)
    assert after[: len(before)] == before and len(after) == len(set(after))  # none lost, none repeated
    trials = pd.read_csv(run / "trials.csv")
    assert trials["trial_id"].is_unique and trials["state"].isin(EVALUATED).sum() == 16
    assert (trials.loc[trials["source"].isin(["uniform", "l2", "sensitivity"]), "state"] == "complete").all()
    assert (run / "pareto.csv").is_file() and (run / "best_arch.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_joins_a_ray_head_node(tmp_path):
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    port = _free_port()
    env = {**_env(tmp), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/"}  # `ray start` still reports "disabled" there  # fmt: skip
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
                "6",
                "--gate-epochs",
                "0",
                "--rungs",
                "0",
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
        assert len(set(t for t, rung in _results(run) if rung == 0)) == 6
        logs = list(Path(tmp).glob("session_*/logs/*worker*"))
        assert logs, "the evaluations ran on the head node's workers"
    finally:
        _end_processes_under(tmp)
