"""The guide's code runs as written: the snippets of "Reloading a trained model", on a real run."""

from __future__ import annotations

import re

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
