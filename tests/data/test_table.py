"""Reading tables in every supported format, with labels as strings or ints."""

from __future__ import annotations

import json

import pytest

from fedfm.data.table import load_labelled_text
from fedfm.errors import DataError

ROWS = [("good film", 1), ("bad film", 0), ('fine, "quoted"\ttab', 1)]


def _write(path, fmt):
    if fmt == "csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence", "label"])
            w.writerows(ROWS)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"sentence": t, "label": y}) + "\n" for t, y in ROWS))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.table({"sentence": [t for t, _ in ROWS], "label": [y for _, y in ROWS]}), path
        )


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_formats_read_the_same(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    _write(path, fmt)
    data = load_labelled_text(path, "sentence", "label", None)
    assert data.texts == [t for t, _ in ROWS]
    assert data.label_names == ("0", "1")
    assert data.labels.tolist() == [1, 0, 1]


def test_tsv_with_quotes_from_shared_data():
    from tests.conftest import DATA

    data = load_labelled_text(DATA / "debian/test.tsv", "text", "label", None)
    assert len(data) == 2767 and len(data.label_names) == 21
    assert data.texts[0] and "maintainer" in data.columns


def test_errors(tmp_path):
    path = tmp_path / "d.csv"
    _write(path, "csv")
    with pytest.raises(
        DataError,
        match="data.text_column = 'text' is not a column of .*its columns: sentence, label",
    ):
        load_labelled_text(path, "text", "label", None)
    with pytest.raises(DataError, match="does not exist"):
        load_labelled_text(tmp_path / "missing.tsv", "text", "label", None)
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        load_labelled_text(tmp_path / "d.xlsx", "text", "label", None)
    with pytest.raises(DataError, match="label '1' is not among the labels"):
        load_labelled_text(path, "sentence", "label", ("0", "2"))
