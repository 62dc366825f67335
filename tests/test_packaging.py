"""``pip install`` from a clean virtualenv: build the wheel, install it with plain pip (torch
2.13.0 CPU first, as the Makefile does, else pip picks the CUDA build), run the entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Without PYTHONPATH: a checkout on it (with its .egg-info) would look installed already.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", *args], check=True, env=ENV)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_virtualenv_and_runs(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        env=ENV,
    )
    (wheel,) = dist.glob("fedfm-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    python = bin_dir / "python"
    _pip(python, "torch==2.13.0")
    _pip(python, str(wheel))  # no constraints file, no --no-deps: what a user types

    for argv in ([str(bin_dir / "fedfm"), "--help"], [str(python), "-m", "fedfm", "--help"]):
        out = subprocess.run(argv, env=ENV, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "examples:" in out.stdout and "fedfm run" in out.stdout
    # The installed fedfm (not this checkout) loads the packaged model offline.
    probe = (
        "import fedfm, fedfm.tasks.models as m; tok, enc = m.load_encoder('minilm'); "
        "print(fedfm.__file__); print(enc.config.hidden_size)"
    )
    out = subprocess.run(
        [str(python), "-c", probe], env=ENV, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    path, hidden = out.stdout.split()
    assert path.startswith(str(tmp_path / "venv")) and hidden == "384"
