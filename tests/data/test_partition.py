"""Partitioners: every row used once, deterministic, and the promised skew."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import DATA

from fedfm.config import PartitionConfig
from fedfm.data.partition import partition
from fedfm.data.table import load_labelled_text
from fedfm.errors import DataError


@pytest.fixture(scope="module")
def agnews():
    return load_labelled_text(DATA / "agnews/train.tsv", "text", "label", None)


def _covers_once(part, n):
    rows = np.concatenate(part.indices)
    return len(rows) == n and len(np.unique(rows)) == n


def _classes_per_client(part, labels):
    return [len(np.unique(labels[ix])) for ix in part.indices]


@pytest.mark.parametrize(
    "config",
    [
        PartitionConfig(scheme="iid", clients=10),
        PartitionConfig(scheme="dirichlet", clients=10, alpha=0.5),
        PartitionConfig(scheme="shards", clients=10, classes_per_client=2),
        PartitionConfig(scheme="quantity", clients=10, sigma=1.0),
    ],
    ids=lambda c: c.scheme,
)
def test_every_row_once_and_deterministic(agnews, config):
    a = partition(agnews.labels, agnews.columns, config, seed=1)
    b = partition(agnews.labels, agnews.columns, config, seed=1)
    c = partition(agnews.labels, agnews.columns, config, seed=2)
    assert len(a.indices) == 10 and _covers_once(a, len(agnews))
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.indices, c.indices, strict=True))


def test_iid_sizes_equal_and_labels_balanced(agnews):
    part = partition(agnews.labels, agnews.columns, PartitionConfig(scheme="iid", clients=10), 0)
    assert max(part.sizes()) - min(part.sizes()) <= 1
    assert _classes_per_client(part, agnews.labels) == [4] * 10


def test_dirichlet_skew_grows_as_alpha_shrinks(agnews):
    def skew(alpha):
        part = partition(agnews.labels, agnews.columns, PartitionConfig(clients=10, alpha=alpha), 0)
        # mean share of each client's most common label
        return np.mean([np.bincount(agnews.labels[ix]).max() / len(ix) for ix in part.indices])

    strong, weak = skew(0.1), skew(100.0)
    assert strong > 0.6 and weak < 0.35 and strong > weak


def test_shards_give_few_classes(agnews):
    part = partition(
        agnews.labels,
        agnews.columns,
        PartitionConfig(scheme="shards", clients=10, classes_per_client=2),
        0,
    )
    # A shard may straddle a class boundary (as in McMahan et al.), so allow a sliver more.
    for ix in part.indices:
        top2 = np.sort(np.bincount(agnews.labels[ix]))[-2:].sum()
        assert top2 / len(ix) > 0.9


def test_quantity_sizes_vary(agnews):
    part = partition(
        agnews.labels, agnews.columns, PartitionConfig(scheme="quantity", clients=10, sigma=1.5), 0
    )
    assert max(part.sizes()) > 4 * min(part.sizes())
    assert _covers_once(part, len(agnews))


def test_column_split_on_debian_maintainers():
    debian = load_labelled_text(DATA / "debian/train.tsv", "text", "label", None)
    cfg = PartitionConfig(scheme="column", column="maintainer", clients=0, min_size=50)
    part = partition(debian.labels, debian.columns, cfg, 0)
    # 32 maintainers with >= 50 packages, plus one client of everyone else merged
    assert len(part.indices) == 33
    assert _covers_once(part, len(debian))
    assert any("merged" in note for note in part.notes)
    groups = dict(zip(part.groups, part.indices, strict=True))
    fonts = next(ix for name, ix in groups.items() if name.startswith("Debian Fonts"))
    fonts_share = np.mean([debian.label_names[i] == "fonts" for i in debian.labels[fonts]])
    assert fonts_share > 0.9  # real skew: the fonts team's packages are fonts

    dropped = partition(
        debian.labels,
        debian.columns,
        PartitionConfig(
            scheme="column", column="maintainer", clients=5, min_size=50, small_groups="drop"
        ),
        0,
    )
    assert len(dropped.indices) == 5 and sum(dropped.sizes()) < len(debian)
    assert len(dropped.notes) == 2


def test_errors_name_the_problem(agnews):
    few = agnews.labels[:5]
    with pytest.raises(DataError, match="partition.clients = 10 is more than the 5 training rows"):
        partition(few, {}, PartitionConfig(clients=10), 0)
    with pytest.raises(DataError, match="partition.column = 'maintainer' is not a column"):
        partition(
            agnews.labels, agnews.columns, PartitionConfig(scheme="column", column="maintainer"), 0
        )
