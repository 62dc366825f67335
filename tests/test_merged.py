"""``fedfm export RUN --merged OUT``: a folder transformers.pipeline() loads, giving the labels
``fedfm predict`` gives."""

from __future__ import annotations

import pytest

import fedfm
from fedfm.cli import main

TEXTS = [
    "Stocks fell sharply as oil prices climbed to a record high.",
    "The striker scored twice as United won the cup final.",
    "A new chip promises faster laptops and longer battery life.",
    "Rebels and government troops clashed near the capital.",
    "Shares of the software maker jumped after earnings beat forecasts.",
    "NASA delays the launch of its new space telescope.",
]


def test_pipeline_on_the_merged_folder_gives_the_same_labels(finished_run, tmp_path, capsys):
    from transformers import pipeline

    out = tmp_path / "merged"
    assert main(["export", str(finished_run), "--merged", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    classify = pipeline("text-classification", model=str(out), trust_remote_code=True)
    got = [r["label"] for r in classify(TEXTS, truncation=True)]
    assert got == fedfm.predict(finished_run, TEXTS)


def test_export_refuses_an_existing_folder(finished_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["export", str(finished_run), "--merged", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty" in err


@pytest.mark.parametrize("missing", ["summary.json"])
def test_export_of_an_unfinished_run_is_one_line(finished_run, tmp_path, capsys, missing):
    (tmp_path / "config.toml").write_text((finished_run / "config.toml").read_text())
    assert main(["export", str(tmp_path), "--merged", str(tmp_path / "out")]) == 2
    assert "not a finished run directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
