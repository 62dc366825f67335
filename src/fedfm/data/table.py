"""Reading a labelled text table (CSV, TSV, JSONL or Parquet) with clear errors."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfm.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def require_file(path: Path, field: str) -> None:
    """Raise the one-line :class:`DataError` for a configured data file that does not exist."""
    if not path.is_file():
        hint = ""
        if "shared/data" in str(path):
            hint = " (set FEDFM_DATA to the folder that holds agnews/, sst2/ and debian/)"
        raise DataError(f"{field} = {str(path)!r}: the file does not exist{hint}")


def read_table(path: Path, field: str = "data.train") -> dict[str, list]:
    """Read a table into ``{column: values}``; the format comes from the file's suffix."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{field} = {str(path)!r}: unknown file type {path.suffix!r}; allowed: "
            + ", ".join(sorted(FORMATS))
        )
    require_file(path, field)
    try:
        if fmt in ("csv", "tsv"):
            return _read_delimited(path, "\t" if fmt == "tsv" else ",")
        if fmt == "jsonl":
            return _read_jsonl(path)
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pydict()
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
        raise DataError(f"{field} = {str(path)!r} cannot be read as {fmt}: {e}") from None


def _read_delimited(path: Path, delimiter: str) -> dict[str, list]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DataError(f"{str(path)!r} is empty: expected a header row")
        columns: dict[str, list] = {name: [] for name in header}
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataError(
                    f"{str(path)!r} row {lineno} has {len(row)} fields, the header has {len(header)}"
                )
            for name, value in zip(header, row, strict=True):
                columns[name].append(value)
    return columns


def _read_jsonl(path: Path) -> dict[str, list]:
    columns: dict[str, list] = {}
    n = 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{str(path)!r} line {lineno} is not JSON: {e}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{str(path)!r} line {lineno} is not a JSON object")
            for key in obj.keys() - columns.keys():
                columns[key] = [None] * n
            for key, values in columns.items():
                values.append(obj.get(key))
            n += 1
    return columns


@dataclass(frozen=True)
class LabelledText:
    """Texts with integer labels, plus every other column of the table (for natural partitions)."""

    texts: list[str]
    labels: np.ndarray  # int64, indices into label_names
    label_names: tuple[str, ...]
    columns: dict[str, list]

    def __len__(self) -> int:
        return len(self.texts)


def load_labelled_text(
    path: Path,
    text_column: str,
    label_column: str,
    label_names: tuple[str, ...] | None,
    rows: int = 0,
    field: str = "data.train",
) -> LabelledText:
    """Load texts and labels; labels may be strings or ints and are mapped to ``label_names``.

    With ``label_names=None`` the names are the sorted distinct labels of this table.
    """
    table = read_table(path, field)
    for key, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in table:
            raise DataError(
                f"data.{key} = {column!r} is not a column of {str(path)!r}; "
                f"its columns: {', '.join(table)}{_test_hint(field)}"
            )
    n = len(table[text_column]) if rows == 0 else min(rows, len(table[text_column]))
    table = {k: v[:n] for k, v in table.items()}
    if n == 0:
        raise DataError(f"{field} = {str(path)!r} has no rows")
    texts = table[text_column]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"{str(path)!r} row {i + 1}: {text_column!r} is {t!r}, not text")
    raw = table[label_column]
    for i, v in enumerate(raw):
        if (
            v is None
            or (isinstance(v, str) and not v.strip())
            or isinstance(v, float | bool | list | dict)
        ):
            raise DataError(
                f"{str(path)!r} row {i + 1}: label {v!r} in {label_column!r} is not a string or integer"
            )
    as_str = [str(v) for v in raw]
    if label_names is None:
        distinct = sorted(
            set(as_str),
            key=lambda s: (
                not s.lstrip("-").isdigit(),
                int(s) if s.lstrip("-").isdigit() else 0,
                s,
            ),
        )
        label_names = tuple(distinct)
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(as_str) - index.keys())
    if unknown:
        raise DataError(
            f"{field} = {str(path)!r}: label {unknown[0]!r} is not among the labels "
            f"{list(label_names)} (set data.labels, or check the label column){_test_hint(field)}"
        )
    labels = np.fromiter((index[s] for s in as_str), dtype=np.int64, count=n)
    return LabelledText(texts=list(texts), labels=labels, label_names=label_names, columns=table)


def _test_hint(field: str) -> str:
    """What to do when the test file does not fit the training data (often: no test file)."""
    return (
        " (no test file? data.test = '' holds out part of data.train)"
        if field == "data.test"
        else ""
    )


def hold_out(table: LabelledText, fraction: float, seed: int) -> tuple[LabelledText, LabelledText]:
    """``(rest, held_out)``: a seeded random ``fraction`` of the rows (at least one) held out."""
    n_test = max(1, round(fraction * len(table)))
    order = np.random.default_rng([seed, 0x7E57]).permutation(len(table))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])

    def subset(idx: np.ndarray) -> LabelledText:
        return LabelledText(
            [table.texts[i] for i in idx],
            table.labels[idx],
            table.label_names,
            {k: [v[i] for i in idx] for k, v in table.columns.items()},
        )

    return subset(train_idx), subset(test_idx)
