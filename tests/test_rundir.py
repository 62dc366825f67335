"""The run directory over its life: provenance in summary.json, resuming with --set, resuming a
finished run, and Ctrl-C naming the directory to resume from."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import torch
import transformers

import fedfm
from fedfm.cli import main
from tests.conftest import ROOT, TINY


@pytest.fixture
def finished(finished_run):
    return finished_run


def _copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / run_dir.name)


def test_summary_records_when_with_which_versions_and_command(finished):
    summary = json.loads((finished / "summary.json").read_text())
    when = datetime.fromisoformat(summary["finished_at"])
    assert when.tzinfo is not None and abs(datetime.now(UTC) - when).total_seconds() < 3600
    versions = summary["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__
    assert {"fedfm", "peft", "python"} <= versions.keys()
    assert isinstance(summary["command"], str) and summary["command"]


def test_resuming_a_finished_run_does_not_run_or_rewrite_it(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "already finished its 3 rounds; nothing to do" in out
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_resume_with_more_rounds_says_so_and_records_it(finished, tmp_path, caplog):
    run_dir = _copy(finished, tmp_path)
    with caplog.at_level(logging.WARNING, logger="fedfm"):
        result = fedfm.run(resume=run_dir, overrides=["federation.rounds=4"])
    assert "federation.rounds = 4 (was 3)" in caplog.text and str(run_dir) in caplog.text
    assert [r["round"] for r in result.metrics] == [1, 2, 3, 4] and not result.already_finished
    assert "rounds = 4" in (run_dir / "config.toml").read_text()  # the directory says what ran
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 4


def test_resume_with_fewer_rounds_than_already_ran_is_refused(finished, tmp_path, capsys):
    run_dir = _copy(finished, tmp_path)
    argv = ["run", "--resume", str(run_dir), "--set", "federation.rounds=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "federation.rounds = 1 is fewer than the 3 rounds" in err and "allowed: ≥ 3" in err


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
@pytest.mark.slow
def test_ctrl_c_stops_the_run_names_its_directory_and_resume_continues(tmp_path):
    # Started as a script starts a background job: SIGINT inherited *ignored*, with which Python
    # used to ignore Ctrl-C and the run went on to its last round.
    argv = [sys.executable, "-m", "fedfm", "run", "--quiet", "--out", str(tmp_path)]
    for item in [*TINY, "federation.rounds=50"]:
        argv += ["--set", item]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint,
    )
    run_dir = tmp_path / "agnews-lora"
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().strip()):  # round 1 is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"fedfm run still running 120 s after SIGINT: {proc.communicate()}")
    assert time.monotonic() - sent < 60  # promptly: it stops mid-round, it does not finish it
    assert proc.returncode == 130, err
    assert err.splitlines() == [
        f"fedfm: interrupted; run directory {run_dir}; continue with `fedfm run --resume {run_dir}`"
    ]
    assert not (run_dir / "summary.json").exists()

    before = [json.loads(line) for line in metrics.read_text().splitlines()]
    done = len(before)  # rounds logged before the interrupt
    assert 1 <= done < 50
    rounds = done + 1
    assert (
        main(["run", "--resume", str(run_dir), "--quiet", "--set", f"federation.rounds={rounds}"])
        == 0
    )
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert rows[: done - 1] == before[: done - 1]  # continued from its checkpoint, not restarted
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == rounds and 0 <= summary["final_accuracy"] <= 1
