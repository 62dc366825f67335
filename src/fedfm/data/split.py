"""Write a config's partition as one data file per client, e.g. to hand out for ``fedfm join``.

The files keep the original columns; client ``k``'s file holds exactly the rows the simulation
gives client ``k``, so a network run can be compared with a simulated one row for row.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fedfm.config import ExperimentConfig, resolve_path
from fedfm.data.partition import partition
from fedfm.data.table import load_labelled_text, read_table


def write_client_files(config: ExperimentConfig, out: str | Path) -> dict[str, Path]:
    """``{client_id: path}`` of the TSV files written under ``out`` (one per client)."""
    d = config.data
    path = resolve_path(d.train)
    train = load_labelled_text(
        path, d.text_column, d.label_column, d.labels or None, d.train_rows, "data.train"
    )
    part = partition(train.labels, train.columns, config.partition, config.seed)
    table = read_table(path)
    columns = list(table)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for cid, rows in zip(part.client_ids, part.indices, strict=True):
        target = out / f"{cid}.tsv"
        tmp = out / f".{cid}.tsv.tmp"
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            for i in rows:
                writer.writerow([table[c][i] for c in columns])
        tmp.replace(target)
        written[cid] = target
    return written
