"""Predictions of a finished run: ``fedfm.predict``, ``fedfm predict`` and the reloaded model
called the way HF users call models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fedfm
from fedfm.cli import main
from fedfm.config import load_config
from fedfm.tasks.classification import load_exported, load_labelled


@pytest.fixture(scope="module")
def test_rows(finished_run):
    _, test = load_labelled(load_config(finished_run / "config.toml"))
    return test


def test_predictions_score_the_run_s_final_accuracy(finished_run, test_rows):
    labels = fedfm.predict(finished_run, test_rows.texts)
    assert len(labels) == len(test_rows) == 400
    truth = [test_rows.label_names[i] for i in test_rows.labels]
    accuracy = float(np.mean([a == b for a, b in zip(labels, truth, strict=True)]))
    summary = json.loads((finished_run / "summary.json").read_text())
    # the run scores under bf16 autocast, predict in float32: a few borderline rows may differ
    assert accuracy == pytest.approx(summary["final_accuracy"], abs=0.02)
    assert accuracy > 0.4  # well above the 0.25 of guessing among 4 classes


def test_the_reloaded_model_takes_what_the_tokenizer_returns(finished_run, test_rows):
    tokenizer, model, labels = load_exported(finished_run)
    texts = test_rows.texts[:8]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    assert "token_type_ids" in batch  # BERT's tokenizer returns them
    with torch.inference_mode():
        logits = model(**batch)
    assert logits.shape == (8, 4)
    assert [labels[i] for i in logits.argmax(-1).tolist()] == fedfm.predict(finished_run, texts)


def test_cli_prints_one_label_per_text_or_line(finished_run, tmp_path, capsys):
    sample = ["Stocks fell as oil prices rose.", "The striker scored twice in the final."]
    expected = fedfm.predict(finished_run, sample)
    argv = ["predict", str(finished_run)]
    assert main([*argv, "--text", sample[0], "--text", sample[1]]) == 0
    assert capsys.readouterr().out.splitlines() == expected

    path = tmp_path / "texts.txt"
    path.write_text("\n".join(sample * 2) + "\n", encoding="utf-8")
    assert main([*argv, "--file", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == expected * 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "nothing to label"),
        (["--file", "/nonexistent/texts.txt"], "--file '/nonexistent/texts.txt': the file"),
    ],
)
def test_cli_bad_input_is_one_line(finished_run, capsys, extra, message):
    assert main(["predict", str(finished_run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_an_unfinished_run_has_nothing_to_predict_with(finished_run, tmp_path, capsys):
    (tmp_path / "config.toml").write_text((finished_run / "config.toml").read_text())
    assert main(["predict", str(tmp_path), "--text", "hello"]) == 2
    assert "has not finished" in capsys.readouterr().err
