"""Packing documents into blocks for language-model pre-training."""

from __future__ import annotations

import numpy as np
import pytest

from fedfm.data.packing import pack, read_texts
from fedfm.data.tokens import TokenizedText
from fedfm.errors import DataError

EOS = 0


def _docs(*rows: list[int]) -> TokenizedText:
    lengths = [len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedText(np.array([t for r in rows for t in r], dtype=np.int32), offsets)


def _blocks(tokens: TokenizedText) -> list[list[int]]:
    return [
        tokens.ids[tokens.offsets[i] : tokens.offsets[i + 1]].tolist() for i in range(len(tokens))
    ]


def test_documents_of_a_group_are_joined_by_eos_and_cut_into_full_blocks():
    docs = _docs([11, 12, 13], [21, 22], [31, 32, 33, 34])
    blocks, first = pack(docs, np.zeros(3, dtype=np.int64), 4, EOS)
    # stream: 11 12 13 0 | 21 22 0 31 | 32 33 34 0
    assert _blocks(blocks) == [[11, 12, 13, 0], [21, 22, 0, 31], [32, 33, 34, 0]]
    assert first.tolist() == [0, 1, 2]  # the document of each block's first token


def test_no_block_mixes_two_groups_and_a_short_tail_is_kept_but_a_single_token_dropped():
    docs = _docs([1, 2, 3], [4, 5], [6, 7, 8, 9], [10])
    groups = np.array([7, 3, 7, 3])  # groups in order of first appearance: 7, then 3
    blocks, first = pack(docs, groups, 3, EOS)
    # group 7: 1 2 3 0 6 7 8 9 0 -> [1 2 3] [0 6 7] [8 9 0]
    # group 3: 4 5 0 10 0 -> [4 5 0] [10 0]
    assert _blocks(blocks) == [[1, 2, 3], [0, 6, 7], [8, 9, 0], [4, 5, 0], [10, 0]]
    assert first.tolist() == [0, 0, 2, 1, 3]
    # a tail of one token predicts nothing: dropped
    blocks, _ = pack(_docs([1, 2, 3]), np.zeros(1, dtype=np.int64), 2, EOS)
    assert _blocks(blocks) == [[1, 2], [3, 0]]
    blocks, _ = pack(_docs([1, 2]), np.zeros(1, dtype=np.int64), 2, EOS)
    assert _blocks(blocks) == [[1, 2]]  # "0" alone is dropped


def test_every_token_but_dropped_tails_is_packed_exactly_once():
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(1, 1000, size=rng.integers(1, 40))) for _ in range(200)]
    groups = rng.integers(0, 5, size=200)
    blocks, first = pack(_docs(*rows), groups, 16, EOS)
    lengths = blocks.lengths()
    assert (lengths[:-1] <= 16).all() and (lengths >= 2).all()
    for g in range(5):  # each group's blocks, concatenated, are its documents + EOS in order
        mine = [b for b, d in zip(_blocks(blocks), first, strict=True) if groups[d] == g]
        stream = [t for r, gr in zip(rows, groups, strict=True) if gr == g for t in [*r, EOS]]
        joined = [t for b in mine for t in b]
        assert stream[: len(joined)] == joined and len(stream) - len(joined) <= 1


def test_text_without_labels_is_one_group_and_a_missing_text_column_is_named(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("body\tsite\nhello there\ta\nmore text\tb\n")
    table = read_texts(path, "body", "label")
    assert table.texts == ["hello there", "more text"]
    assert table.labels.tolist() == [0, 0] and table.label_names == ("all",)
    assert table.columns["site"] == ["a", "b"]
    with pytest.raises(DataError, match=r"data.text_column = 'text' is not a column .* body, site"):
        read_texts(path, "text", "label")
