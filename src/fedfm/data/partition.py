"""Partitioners: how the training rows are split over clients.

Each partitioner is a function ``(labels, columns, config, rng) -> (indices per client, groups)``
registered by name in :data:`PARTITIONERS`; ``[partition] scheme`` names one.

- ``iid``: a random permutation cut into equal parts.
- ``dirichlet``: label skew; each class is spread over clients with proportions drawn from
  Dir(alpha) (Hsu et al. 2019, "Measuring the effects of non-identical data distribution").
- ``shards``: pathological label skew; rows sorted by label, cut into ``clients ×
  classes_per_client`` shards, each client gets ``classes_per_client`` of them (McMahan et al. 2017).
- ``quantity``: quantity skew; client sizes proportional to log-normal(0, sigma) draws.
- ``column``: a natural split; every distinct value of a column is a client (e.g. Debian's
  ``maintainer``); groups under ``min_size`` rows are merged into one client or dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedfm.errors import DataError
from fedfm.registry import Registry

PartitionFn = Callable[..., tuple[list[np.ndarray], list[str] | None]]
PARTITIONERS: Registry[PartitionFn] = Registry("partition scheme", "partition.scheme")

PartitionFilter = Callable[..., "tuple[Partition, dict | None]"]
PARTITION_FILTERS: Registry[PartitionFilter] = Registry("partition filter", "governance")
"""``(config, train table, partition) → (partition, report or None)``, applied in order after
the partition is built, before anything trains; registered by plug-ins (``[governance] dedup``)."""


@dataclass(frozen=True)
class Partition:
    """Row indices per client, with the client ids and a report of what was done."""

    client_ids: list[str]
    indices: list[np.ndarray]
    groups: list[str] | None = None  # scheme 'column': the column value(s) of each client
    notes: list[str] = field(default_factory=list)

    def sizes(self) -> list[int]:
        return [len(ix) for ix in self.indices]

    def describe(self, labels: np.ndarray, label_names: tuple[str, ...]) -> dict:
        """A JSON-able summary: per client its size, label histogram and group."""
        clients = []
        for i, (cid, ix) in enumerate(zip(self.client_ids, self.indices, strict=True)):
            hist = Counter(int(v) for v in labels[ix])
            entry = {
                "client": cid,
                "rows": len(ix),
                "labels": {label_names[k]: hist[k] for k in sorted(hist)},
            }
            if self.groups is not None:
                entry["group"] = self.groups[i]
            clients.append(entry)
        return {"clients": clients, "notes": self.notes}


def partition(labels: np.ndarray, columns: dict[str, list], config, seed: int) -> Partition:
    """Split the rows of a training table over clients as ``config`` (a PartitionConfig) says."""
    n = len(labels)
    if config.scheme != "column" and config.clients > n:
        raise DataError(
            f"partition.clients = {config.clients} is more than the {n} training rows; "
            f"allowed: at most {n}"
        )
    rng = np.random.default_rng([seed, 0x9A27])
    notes: list[str] = []
    indices, groups = PARTITIONERS.get(config.scheme)(labels, columns, config, rng, notes)
    empty = [i for i, ix in enumerate(indices) if len(ix) == 0]
    if empty:
        raise DataError(
            f"partition.scheme = {config.scheme!r} left client {empty[0]} with no rows "
            f"({n} rows over {len(indices)} clients); use fewer clients or another scheme"
        )
    width = len(str(len(indices) - 1))
    ids = [f"c{i:0{width}d}" for i in range(len(indices))]
    return Partition(ids, [np.sort(ix) for ix in indices], groups, notes)


@PARTITIONERS.register("iid")
def iid(labels, columns, config, rng, notes):
    return list(np.array_split(rng.permutation(len(labels)), config.clients)), None


@PARTITIONERS.register("dirichlet")
def dirichlet(labels, columns, config, rng, notes, max_tries: int = 100):
    n, k = len(labels), config.clients
    # Every client should get at least a few rows; resample like Flower's DirichletPartitioner.
    floor = min(config.min_size, n // k)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        for c in classes:
            rows = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(k, config.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].append(chunk)
        indices = [np.concatenate(p) for p in parts]
        if min(len(ix) for ix in indices) >= floor:
            return indices, None
    raise DataError(
        f"partition.alpha = {config.alpha}: after {max_tries} draws some client still had fewer "
        f"than {floor} rows; use a larger alpha, fewer clients or a smaller partition.min_size"
    )


@PARTITIONERS.register("shards")
def shards(labels, columns, config, rng, notes):
    n_shards = config.clients * config.classes_per_client
    if n_shards > len(labels):
        raise DataError(
            f"partition.classes_per_client = {config.classes_per_client} × clients = {n_shards} "
            f"shards is more than the {len(labels)} rows"
        )
    order = np.argsort(labels, kind="stable")
    # Shuffle within each label first so that a shard is a random sample of its label.
    order = np.concatenate([rng.permutation(order[labels[order] == c]) for c in np.unique(labels)])
    pieces = np.array_split(order, n_shards)
    assignment = rng.permutation(n_shards).reshape(config.clients, config.classes_per_client)
    return [np.concatenate([pieces[s] for s in row]) for row in assignment], None


@PARTITIONERS.register("quantity")
def quantity(labels, columns, config, rng, notes):
    n, k = len(labels), config.clients
    weights = rng.lognormal(mean=0.0, sigma=config.sigma, size=k)
    # One row each first, then the rest in proportion to the draws.
    sizes = 1 + np.floor(weights / weights.sum() * (n - k)).astype(int)
    sizes[np.argmax(weights)] += n - sizes.sum()
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1]), None


@PARTITIONERS.register("column")
def by_column(labels, columns, config, rng, notes):
    if config.column not in columns:
        raise DataError(
            f"partition.column = {config.column!r} is not a column of the training data; "
            f"its columns: {', '.join(columns)}"
        )
    values = [str(v) for v in columns[config.column]]
    groups: dict[str, list[int]] = {}
    for row, value in enumerate(values):
        groups.setdefault(value, []).append(row)
    # Largest first, ties by name: deterministic.
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    kept = [g for g in ordered if len(g[1]) >= config.min_size]
    small = [g for g in ordered if len(g[1]) < config.min_size]
    small_rows = sum(len(r) for _, r in small)
    if small and config.small_groups == "merge" and small_rows >= config.min_size:
        merged = sorted(row for _, rows in small for row in rows)
        kept.append((f"(merged {len(small)} groups)", merged))
        kept.sort(key=lambda kv: -len(kv[1]))
        notes.append(
            f"merged {len(small)} groups of {config.column!r} under {config.min_size} rows "
            f"({small_rows} rows) into one client"
        )
    elif small:
        notes.append(
            f"dropped {len(small)} groups of {config.column!r} under {config.min_size} rows "
            f"({small_rows} rows)"
        )
    if config.clients and len(kept) > config.clients:
        dropped = kept[config.clients :]
        kept = kept[: config.clients]
        notes.append(
            f"kept the {config.clients} largest groups (partition.clients); dropped "
            f"{len(dropped)} more ({sum(len(r) for _, r in dropped)} rows)"
        )
    if not kept:
        raise DataError(
            f"partition.min_size = {config.min_size}: no group of {config.column!r} is that large"
        )
    return [np.asarray(rows, dtype=np.int64) for _, rows in kept], [name for name, _ in kept]


def held_out(n: int, share: float, seed: int, position: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions among a client's ``n`` rows: ``round(share·n)`` rows (at
    least 1 when ``share > 0`` and ``n ≥ 2``) drawn with (run seed, client position), so that
    a simulated client and the same client over the network hold out the same rows."""
    k = min(max(int(round(share * n)), 1), n - 1) if share > 0 and n >= 2 else 0
    order = np.random.default_rng([seed, 0xE7A1, position]).permutation(n)
    return np.sort(order[k:]), np.sort(order[:k])
