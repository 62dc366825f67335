"""The docs: the guide's code runs as written (the snippets of "Reloading a trained model", on a
real run), and the MkDocs site builds with warnings as errors."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT


def _section_code(path, heading: str) -> list[str]:
    text = path.read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_guide_reload_snippets_run(finished_run, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "agnews-lora").symlink_to(finished_run)
    monkeypatch.chdir(tmp_path)
    blocks = _section_code(ROOT / "docs" / "guide.md", "## Reloading a trained model")
    assert len(blocks) == 2
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, "docs/guide.md", "exec"), namespace)  # noqa: S102
    assert namespace["head"]["weight"].shape == (4, 384)


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    """``mkdocs build --strict`` (as ``make docs``): every page, the generated config reference
    and the API reference from the docstrings, with no broken link or failed reference."""
    import os
    import subprocess
    import sys

    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "NO_MKDOCS_2_WARNING": "1",
    }
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
        + ["-d", str(site)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "index.html").is_file()
    for page in ("usage", "guide", "logging", "network", "workflows", "fm4fl", "benchmarks"):
        assert (site / page / "index.html").is_file(), page
    reference = (site / "config" / "index.html").read_text()
    for key in ("federation.rounds", "logging.report_to", "strategy.server_lr", "method.r"):
        assert f"<code>{key}</code>" in reference, key
    api = (site / "api" / "index.html").read_text()
    for name in ("fedfm.run", "fedfm.metrics.sinks.Sink", "fedfm.strategies.base.Strategy"):
        assert f'id="{name}"' in api, name


def test_the_committed_config_reference_is_the_generated_one():
    """docs/config.md is read on GitHub as well as on the site: it must be what the schema
    generates today (``make config-reference`` writes it)."""
    import subprocess
    import sys

    # a fresh interpreter: plug-ins the tests register must not appear on the page
    code = "import fedfm; from fedfm.config.reference import reference_markdown as r; print(r(), end='')"
    generated = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == generated, "docs/config.md is stale: run make config-reference"
