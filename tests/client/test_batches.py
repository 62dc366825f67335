"""Batches: every row once per epoch, seeded, and length grouping cuts padding."""

from __future__ import annotations

import numpy as np
import pytest

from fedfm.client.app import ClientData
from fedfm.data.tokens import TokenizedText


def _data(n=640, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 65, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = TokenizedText(np.ones(int(offsets[-1]), dtype=np.int32), offsets)
    return ClientData(tokens, np.zeros(n, dtype=np.int64), np.arange(n)), lengths


@pytest.mark.parametrize("grouping", [1, 8])
def test_each_epoch_uses_every_row_once_and_is_seeded(grouping):
    data, _ = _data()
    steps = 640 // 32
    a = list(data.batches(32, steps, np.random.default_rng(1), grouping))
    b = list(data.batches(32, steps, np.random.default_rng(1), grouping))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    rows = np.concatenate(a)
    assert len(rows) == 640 and len(np.unique(rows)) == 640
    assert all(len(x) == 32 for x in a)


def test_length_grouping_cuts_padding():
    data, lengths = _data()

    def mean_width(grouping):
        batches = data.batches(32, 200, np.random.default_rng(2), grouping)
        return np.mean([lengths[b].max() for b in batches])

    plain, grouped = mean_width(1), mean_width(8)
    assert grouped < 0.85 * plain, (plain, grouped)


def test_small_client_still_gets_batches():
    data, _ = _data(n=5)
    batches = list(data.batches(32, 3, np.random.default_rng(0), 8))
    assert len(batches) == 3 and all(len(b) == 5 for b in batches)
