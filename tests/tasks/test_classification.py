"""Classification data: a user's CSV without a test file gets a seeded held-out split."""

from __future__ import annotations

import csv
import logging

import pytest
from tests.conftest import DATA

from fedfm.config import load_config
from fedfm.data.table import read_table
from fedfm.errors import DataError
from fedfm.tasks.classification import load_labelled


@pytest.fixture
def user_csv(tmp_path):
    """The first 500 rows of SST-2's training set, as a user's own CSV file."""
    table = read_table(DATA / "sst2" / "train.tsv")
    path = tmp_path / "mine.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        w.writerows(zip(table["sentence"][:500], table["label"][:500], strict=True))
    return path


def _config(path, *more):
    return load_config(
        None,
        [f"data.train={path}", "data.test=''", "data.text_column=sentence", *more],
    )


def test_a_csv_without_a_test_file_gets_a_seeded_held_out_split(user_csv, caplog):
    with caplog.at_level(logging.WARNING):
        train, test = load_labelled(_config(user_csv))
    assert (len(train), len(test)) == (400, 100)  # data.test_fraction = 0.2
    assert sorted(train.texts + test.texts) == sorted(read_table(user_csv)["sentence"])
    assert set(test.labels.tolist()) == {0, 1}
    assert "holding out 100 of 500 rows of data.train" in caplog.text
    assert "seed 0" in caplog.text

    again, again_test = load_labelled(_config(user_csv))
    assert again_test.texts == test.texts and again.texts == train.texts  # seeded
    _, other = load_labelled(_config(user_csv, "seed=1", "data.test_fraction=0.1"))
    assert len(other) == 50 and other.texts != test.texts[:50]


def test_a_user_csv_with_the_default_test_file_says_how_to_hold_out(user_csv):
    config = load_config(None, [f"data.train={user_csv}", "data.text_column=sentence"])
    with pytest.raises(
        DataError, match="no test file\\? data.test = '' holds out part of data.train"
    ):
        load_labelled(config)
