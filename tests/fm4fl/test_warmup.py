"""Server warm-up: distilling an FM teacher or training on verified synthetic data lifts the
global model before round 1; the result is cached; copies of client rows never reach training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fedfm.assemble import prepare
from fedfm.bench.scenarios import AGNEWS_DESCRIPTIONS
from fedfm.client.trainer import Trainer
from fedfm.data.table import load_labelled_text
from fedfm.errors import ConfigError, DataError
from fedfm.fm4fl import synthetic
from fedfm.fm4fl.warmup import temper
from tests.conftest import DATA

TRANSFER = [
    "runtime.threads=1",
    "teacher.type=embedding",
    AGNEWS_DESCRIPTIONS,
    "warmup.source=transfer",
    "warmup.data=${FEDFM_DATA}/agnews/train.tsv",
    "warmup.offset=8000",  # rows no client holds (clients have the first 800)
    "warmup.rows=400",
    "warmup.steps=15",
]


def test_temper_flattens_with_temperature():
    p = np.array([[0.8, 0.2]])
    assert np.allclose(temper(p, 1.0), p)
    assert temper(p, 4.0)[0, 0] < 0.8 and np.isclose(temper(p, 4.0).sum(), 1.0)


def test_distillation_warm_up_lifts_the_initial_model_and_is_cached(tiny_config, monkeypatch):
    config = tiny_config(*TRANSFER)
    p = prepare(config)
    report = p.fm4fl["warmup"]
    assert report["soft_targets"] and report["rows"] == 400
    assert report["accuracy_before"] < 0.4  # a fresh head: chance level
    assert report["accuracy_after"] > report["accuracy_before"] + 0.3
    state = p.task.get_state()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached warm-up must be read back, not trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    again = prepare(config)
    assert again.fm4fl["warmup"] == report
    assert all(np.array_equal(state[n], t) for n, t in again.task.get_state().items())


def test_black_box_distillation_uses_hard_labels(tiny_config):
    p = prepare(tiny_config(*TRANSFER, "teacher.access=black_box", "warmup.steps=5"))
    assert p.fm4fl["warmup"]["soft_targets"] is False


@pytest.mark.parametrize("labelled", [1.0, 0.05])
def test_synthetic_warm_up_drops_copies_of_client_rows_before_training(
    tiny_config, tmp_path, labelled
):
    train = load_labelled_text(DATA / "agnews" / "train.tsv", "text", "label", None, 0, "t")
    # a stand-in for a generator's output: real texts no client holds, plus 12 verbatim copies
    # of client rows (clients hold the first 800 training rows)
    rows = [
        {"text": train.texts[i], "label": train.label_names[train.labels[i]]}
        for i in range(9000, 9300)
    ]
    rows += [
        {"text": train.texts[i], "label": train.label_names[train.labels[i]]}
        for i in range(0, 120, 10)
    ]
    path = tmp_path / "synthetic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config(
        "runtime.threads=1",
        "warmup.source=synthetic",
        f"synthetic.file={path}",
        "synthetic.min_words=3",
        "warmup.steps=20",
        f"data.labelled_fraction={labelled}",
    )
    report = prepare(config).fm4fl["warmup"]
    # with scarce labels most copied rows are unlabelled ones: they are looked for all the same
    assert report["generated"] == 312
    # the 12 copies, and AG News's own near-duplicate articles across the two ranges
    assert 12 <= report["dropped"]["memorised"] <= 15
    assert report["client_matches"] >= 12
    assert report["kept"] + sum(report["dropped"].values()) == 312
    assert report["label_tv_after"] <= report["label_tv_before_balance"] + 1e-9
    assert report["accuracy_after"] > report["accuracy_before"] + 0.2


def test_a_synthetic_set_with_unknown_labels_or_all_dropped_is_a_clear_error(tiny_config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b c d e f g h i", "label": "Weather"}\n')
    with pytest.raises(DataError, match="'Weather' is not one of"):
        prepare(tiny_config("warmup.source=synthetic", f"synthetic.file={bad}"))
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "too short", "label": "World"}\n')
    with pytest.raises(DataError, match="all 1 generated samples were dropped"):
        prepare(tiny_config("warmup.source=synthetic", f"synthetic.file={short}"))


def test_generation_is_seeded_and_cached(tiny_config, tiny_lm, monkeypatch):
    config = tiny_config(
        f"synthetic.model={tiny_lm}",
        "synthetic.per_label=3",
        "synthetic.batch_size=2",
        "synthetic.max_new_tokens=6",
    )
    names = ("Business", "Sci/Tech", "Sports", "World")
    first = synthetic.generate(config, names)
    assert len(first.texts) == 12 and first.labels == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert first.path.is_file()
    import fedfm.tasks.models as models

    def no_model(*a, **k):
        raise AssertionError("a cached synthetic set must not load the generator")

    monkeypatch.setattr(models, "load_causal_lm", no_model)
    assert synthetic.generate(config, names).texts == first.texts
    assert synthetic.prompts(config, names)[2] == "Write one short news article about Sports."
    monkeypatch.undo()
    first.path.unlink()  # generated again from scratch: the same seed gives the same texts
    assert synthetic.generate(config, names).texts == first.texts
    other = synthetic.generate(replace(config, seed=1), names)
    assert other.texts != first.texts and other.path != first.path


def test_a_prompt_with_unknown_fields_is_a_config_error(tiny_config):
    with pytest.raises(ConfigError, match="no other"):
        tiny_config("synthetic.prompt=Write {n} words about {label}.")
    assert tiny_config("synthetic.prompt=Write {{json}} about {label}.")  # escaped braces


def test_black_box_abstentions_are_dropped_from_the_transfer_set(tiny_config):
    report = prepare(
        tiny_config(
            "runtime.threads=1",
            "teacher.type=function",
            "teacher.access=black_box",
            "teacher.model=tests.fm4fl.test_teacher:keyword_labels",
            *TRANSFER[3:],
            "warmup.steps=2",
        )
    ).fm4fl["warmup"]
    assert report["abstained"] > 0 and report["transfer_rows"] > 0
    assert report["abstained"] + report["transfer_rows"] == 400
    assert report["rows"] == report["transfer_rows"] and not report["soft_targets"]


def test_synthesize_writes_every_sample_with_its_verdict(tmp_path, capsys):
    from fedfm.cli import main
    from tests.conftest import TINY

    train = load_labelled_text(DATA / "agnews" / "train.tsv", "text", "label", None, 0, "t")
    rows = [
        {"text": train.texts[i], "label": train.label_names[train.labels[i]]}
        for i in (9000, 9001, 9002, 3)  # row 3 is a client's (clients hold the first 800)
    ]
    rows.append({"text": "Short.", "label": "World"})
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["synthesize", "--out", str(out), "--set", f"synthetic.file={path}"]
    argv += [x for o in TINY for x in ("--set", o)]
    assert main([*argv, "--set", "synthetic.balance=false"]) == 0
    written = [json.loads(line) for line in (out / "synthetic.jsonl").read_text().splitlines()]
    assert [w["dropped"] for w in written] == [None, None, None, "memorised", "quality:too_short"]
    assert [w["kept"] for w in written] == [True, True, True, False, False]
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 3 and report["dropped"]["memorised"] == 1
    assert "3 of 5 samples kept" in capsys.readouterr().out
