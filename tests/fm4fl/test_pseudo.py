"""Scarce labels: clients keep a seeded share of their labels; an FM teacher adds confident
pseudo-labels that are mostly right."""

from __future__ import annotations

import numpy as np
import pytest

from fedfm.assemble import prepare
from fedfm.bench.scenarios import AGNEWS_DESCRIPTIONS
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.fm4fl.pseudo import labelled_rows


def test_labelled_rows_are_a_seeded_disjoint_split_of_each_client():
    indices = [np.arange(0, 100), np.arange(100, 103)]
    lab, unl = labelled_rows(indices, 0.1, seed=0)
    assert [len(x) for x in lab] == [10, 1] and [len(x) for x in unl] == [90, 2]
    for rows, a, b in zip(indices, lab, unl, strict=True):
        assert sorted([*a, *b]) == rows.tolist()
    again, _ = labelled_rows(indices, 0.1, seed=0)
    other, _ = labelled_rows(indices, 0.1, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(lab, again, strict=True))
    assert not np.array_equal(lab[0], other[0])


def test_clients_without_a_teacher_train_on_their_labelled_rows_only(tiny_config):
    p = prepare(tiny_config("data.labelled_fraction=0.1"))
    report = p.fm4fl["scarce_labels"]
    assert (
        report["labelled_rows"] == sum(p.partition.sizes()) and 70 <= sum(p.partition.sizes()) <= 90
    )
    assert report["labelled_rows"] + report["unlabelled_rows"] == 800


def test_confident_teacher_labels_join_and_are_mostly_right(tiny_config):
    plain = prepare(tiny_config("data.labelled_fraction=0.1"))
    p = prepare(
        tiny_config(
            "data.labelled_fraction=0.1",
            "teacher.type=embedding",
            "teacher.pseudo_label_threshold=0.7",
            AGNEWS_DESCRIPTIONS,
        )
    )
    report = p.fm4fl["scarce_labels"]
    assert report["pseudo_labelled_rows"] > 200  # measured: 421 of 719 at 0.7
    assert report["pseudo_label_accuracy"] > 0.8  # better than the teacher on all rows …
    assert report["pseudo_label_accuracy"] > report["teacher_accuracy_unlabelled"]  # … by τ
    assert sum(p.partition.sizes()) == report["labelled_rows"] + report["pseudo_labelled_rows"]
    for before, after in zip(plain.partition.indices, p.partition.indices, strict=True):
        assert set(before) <= set(after)  # labelled rows stay, with their true labels
        assert np.array_equal(plain.train.labels[before], p.train.labels[before])


def test_pseudo_labels_need_a_teacher_and_unlabelled_rows():
    with pytest.raises(ConfigError, match="a teacher for teacher.pseudo_label_threshold"):
        load_config(None, ["data.labelled_fraction=0.1", "teacher.pseudo_label_threshold=0.7"])
    with pytest.raises(ConfigError, match="data.labelled_fraction < 1"):
        load_config(None, ["teacher.type=embedding", "teacher.pseudo_label_threshold=0.7"])
    with pytest.raises(ConfigError, match="data.labelled_fraction"):
        load_config(None, ["data.labelled_fraction=0"])
