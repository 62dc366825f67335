"""Unlabelled text for language-model pre-training, packed into fixed-size blocks.

Each document is tokenised whole (no truncation, no special tokens) and followed by the
tokenizer's end-of-text id; the documents of one *group* are concatenated in file order and cut
into blocks of ``block`` tokens, so no compute is spent on padding and no block mixes two groups.
A group is what a partition must not split: the values of ``partition.column`` (one maintainer's
descriptions stay with that maintainer), else the label (label-skewed partitions), else the
whole file. The last block of a group may be shorter (kept: no text is dropped); a block of one
token predicts nothing and is dropped.

A block carries the columns and the label of the document its first token comes from, so the
partition schemes work on blocks as they work on rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedfm.data.table import read_table
from fedfm.data.tokens import TokenizedText, tokenize
from fedfm.errors import DataError

# Longest document tokenised whole: far beyond any description or article; a safety cap.
MAX_DOCUMENT_TOKENS = 1 << 20


@dataclass(frozen=True)
class PackedText:
    """Blocks of token ids, one row per block, with what partitions read (labels, columns)."""

    tokens: TokenizedText  # row i = block i
    labels: np.ndarray  # int64: the label of each block's first document (0 without labels)
    label_names: tuple[str, ...]
    columns: dict[str, list]  # every column of the table, per block (its first document's)
    documents: int  # documents the blocks were cut from

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class TextTable:
    """Documents read from a table: texts, an optional label per row, and every column."""

    texts: list[str]
    labels: np.ndarray
    label_names: tuple[str, ...]
    columns: dict[str, list]


def read_texts(
    path: Path, text_column: str, label_column: str = "", rows: int = 0, field: str = "data.train"
) -> TextTable:
    """Read the text column of a table (CSV, TSV, JSONL, Parquet); the label column too when the
    file has it (its values group rows for label-skewed partitions; text needs no label)."""
    table = read_table(path, field)
    if text_column not in table:
        raise DataError(
            f"data.text_column = {text_column!r} is not a column of {str(path)!r}; "
            f"its columns: {', '.join(table)}"
        )
    n = len(table[text_column]) if rows == 0 else min(rows, len(table[text_column]))
    if n == 0:
        raise DataError(f"{field} = {str(path)!r} has no rows")
    table = {k: v[:n] for k, v in table.items()}
    texts = ["" if t is None else str(t) for t in table[text_column]]
    if label_column and label_column in table:
        names, labels = np.unique([str(v) for v in table[label_column]], return_inverse=True)
        return TextTable(texts, labels.astype(np.int64), tuple(names.tolist()), table)
    return TextTable(texts, np.zeros(n, dtype=np.int64), ("all",), table)


def pack(
    documents: TokenizedText, groups: np.ndarray, block: int, eos_id: int
) -> tuple[TokenizedText, np.ndarray]:
    """Cut each group's documents (each followed by ``eos_id``) into blocks of ``block`` tokens.

    Returns the blocks and, per block, the index of the document its first token comes from.
    Groups are taken in order of first appearance; documents keep their file order inside one.
    """
    if block < 2:
        raise ValueError(f"block = {block}: a block needs at least 2 tokens")
    lengths = documents.lengths() + 1  # + end of text
    _, first = np.unique(groups, return_index=True)
    group_order = groups[np.sort(first)]
    ids_out: list[np.ndarray] = []
    block_lengths: list[np.ndarray] = []
    first_doc: list[np.ndarray] = []
    for g in group_order:
        docs = np.flatnonzero(groups == g)
        stream = np.empty(int(lengths[docs].sum()), dtype=np.int32)
        starts = np.concatenate([[0], np.cumsum(lengths[docs])[:-1]])
        for d, s in zip(docs, starts, strict=True):
            a, b = documents.offsets[d], documents.offsets[d + 1]
            stream[s : s + b - a] = documents.ids[a:b]
            stream[s + b - a] = eos_id
        cuts = np.arange(0, len(stream), block)
        sizes = np.minimum(block, len(stream) - cuts)
        keep = sizes >= 2
        cuts, sizes = cuts[keep], sizes[keep]
        ids_out.append(stream[: int(cuts[-1] + sizes[-1])] if len(cuts) else stream[:0])
        block_lengths.append(sizes)
        # the document whose span holds each block's first token
        first_doc.append(docs[np.searchsorted(starts, cuts, side="right") - 1])
    sizes = np.concatenate(block_lengths) if block_lengths else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ids = np.concatenate(ids_out) if ids_out else np.zeros(0, dtype=np.int32)
    return TokenizedText(ids.astype(np.int32), offsets), np.concatenate(first_doc).astype(np.int64)


def pack_table(
    table: TextTable,
    tokenizer,
    tokenizer_key: str,
    block: int,
    grouping: str | None = "",
    field: str = "data.train",
) -> PackedText:
    """Tokenise ``table``'s documents (cached) and pack them into blocks of ``block`` tokens.

    ``grouping``: a column name (its values are the groups), ``""`` (by label) or ``None``
    (one group: the file order, e.g. a test set whose first blocks are scored)."""
    docs = tokenize(
        table.texts,
        tokenizer,
        f"{tokenizer_key}|documents",
        MAX_DOCUMENT_TOKENS,
        add_special_tokens=False,
    )
    if grouping is None:
        groups = np.zeros(len(table.texts), dtype=np.int64)
    elif grouping:
        if grouping not in table.columns:
            raise DataError(
                f"partition.column = {grouping!r} is not a column of {field}; "
                f"its columns: {', '.join(table.columns)}"
            )
        _, groups = np.unique([str(v) for v in table.columns[grouping]], return_inverse=True)
    else:
        groups = table.labels
    blocks, first = pack(docs, np.asarray(groups), block, int(tokenizer.eos_token_id))
    if len(blocks) == 0:
        raise DataError(f"{field}: its text holds fewer than 2 tokens; nothing to learn from")
    columns = {name: [values[i] for i in first] for name, values in table.columns.items()}
    return PackedText(blocks, table.labels[first], table.label_names, columns, len(table.texts))
