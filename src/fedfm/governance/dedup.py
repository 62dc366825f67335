"""Cross-client deduplication from keyed MinHash signatures (``[governance] dedup``).

Each client turns every row into a MinHash signature (Broder 1997, "On the resemblance and
containment of documents") of its character 5-gram shingles, hashing each shingle with BLAKE2b keyed
by the federation's dedup key: without the key, nobody can compute the signature of a known text
and look it up among the clients' signatures. The server sees only the signature matrices; it
finds the cross-client pairs whose estimated Jaccard similarity reaches the threshold through
LSH banding (Indyk & Motwani 1998; the bands and rows datasketch's ``MinHashLSH`` chooses for
the threshold, weighted for recall), and a policy says which rows each client drops before training:

- ``report``: none (the pairs are only counted);
- ``drop_later``: the later row of every pair, in the federation's client order;
- ``keep_one``: in every connected component of duplicate pairs, all rows but the one at the
  earliest client (lowest row there).

Each client sends ``rows × num_perm × 4`` bytes (uint32 signatures) and receives the positions of
the rows it drops. :func:`deduplicate` runs the whole exchange in simulation.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from datasketch import MinHash, MinHashLSH

from fedfm.data.partition import PARTITION_FILTERS, Partition
from fedfm.errors import DataError, ProtocolError
from fedfm.tasks import TASKS

log = logging.getLogger(__name__)

SHINGLES = ("word3", "char5")
# Character 5-grams: on Debian they find 99% of one-word edits at J ≥ 0.8 where word 3-grams
# find 86% (benchmarks/dedup.py); the price is ~4x the signing time, the bytes are the same.
DEFAULT_SHINGLES = "char5"
_SEED = 1  # datasketch's permutation seed: public; the secret is the key of the shingle hash
KEY_BYTES = 32
RECALL_WEIGHT = 0.95  # LSH bands: weight of a missed pair against a false candidate (measured)


class DuplicatePair(NamedTuple):
    """Two rows of different clients (``client_a`` < ``client_b``, positions in each client's
    own rows) and their estimated Jaccard similarity."""

    client_a: int
    row_a: int
    client_b: int
    row_b: int
    similarity: float


def normalise(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space."""
    return " ".join(text.lower().split())


def shingles(text: str, kind: str = DEFAULT_SHINGLES) -> set[str]:
    """The shingle set of a normalised text: word 3-grams or character 5-grams (a text shorter
    than one shingle is its own single shingle)."""
    if kind == "word3":
        words = text.split()
        if len(words) < 3:
            return {" ".join(words)}
        return {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}
    if kind == "char5":
        if len(text) < 5:
            return {text}
        return {text[i : i + 5] for i in range(len(text) - 4)}
    raise ValueError(f"shingles kind {kind!r}; allowed: {', '.join(SHINGLES)}")


def jaccard(a: set[str], b: set[str]) -> float:
    """The true Jaccard similarity |a ∩ b| / |a ∪ b| of two shingle sets."""
    return len(a & b) / len(a | b) if a or b else 1.0


def keyed_hash(key: bytes):
    """BLAKE2b keyed by ``key``, cut to 32 bits: datasketch's ``hashfunc`` for one shingle."""

    def hash32(data: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(data, key=key, digest_size=4).digest(), "little")

    return hash32


def client_signatures(
    texts: Sequence[str], key: bytes, num_perm: int = 128, kind: str = DEFAULT_SHINGLES
) -> np.ndarray:
    """A client's side: the keyed MinHash signature of each of its rows, ``(rows, num_perm)``
    uint32 (datasketch keeps 32-bit hash values), computed from its own texts only."""
    if not 1 <= len(key) <= 64:
        raise ValueError(f"the dedup key has {len(key)} bytes; allowed: 1 … 64 (BLAKE2b)")
    hashfunc = keyed_hash(key)
    permutations = MinHash(num_perm=num_perm, seed=_SEED).permutations  # drawn once, shared
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm, seed=_SEED, hashfunc=hashfunc, permutations=permutations)
        m.update_batch([s.encode() for s in shingles(normalise(text), kind)])
        out[i] = m.hashvalues
    return out


def bands(threshold: float, num_perm: int, recall_weight: float = RECALL_WEIGHT) -> tuple[int, int]:
    """(bands, rows per band) of the LSH index for ``threshold``: datasketch's choice, weighing
    missed pairs by ``recall_weight`` and false candidates by the rest. Every candidate is
    checked on its whole signature, so a false candidate costs a comparison and a missed pair
    costs a duplicate: recall weighs more (0.5 would find a third of the pairs at J = 0.9)."""
    lsh = MinHashLSH(
        threshold=threshold, num_perm=num_perm, weights=(1 - recall_weight, recall_weight)
    )
    return lsh.b, lsh.r


def _check_signatures(signatures: Sequence[np.ndarray], num_perm: int) -> None:
    """What a server receives is checked before use (shape, dtype, size)."""
    for k, s in enumerate(signatures):
        if not isinstance(s, np.ndarray) or s.dtype != np.uint32 or s.ndim != 2:
            raise ProtocolError(f"client {k}: dedup signatures must be a 2-D uint32 array")
        if s.shape[1] != num_perm:
            raise ProtocolError(
                f"client {k}: dedup signatures have {s.shape[1]} values per row; expected "
                f"governance.dedup_num_perm = {num_perm}"
            )


def find_duplicates(
    signatures: Sequence[np.ndarray],
    threshold: float = 0.8,
    num_perm: int = 128,
    recall_weight: float = RECALL_WEIGHT,
) -> list[DuplicatePair]:
    """The server's side: cross-client pairs of rows whose signatures agree on at least
    ``threshold`` of their values, from the clients' signature matrices only (in client order).

    Candidates are rows that share one LSH band exactly; each candidate's similarity is then
    estimated from its whole signature, so the result holds no pair below the threshold."""
    _check_signatures(signatures, num_perm)
    if len(signatures) < 2:
        return []
    matrix = np.concatenate(signatures)  # (all rows, num_perm)
    owner = np.concatenate([np.full(len(s), k) for k, s in enumerate(signatures)])
    local = np.concatenate([np.arange(len(s)) for s in signatures])
    b, r = bands(threshold, num_perm, recall_weight)
    candidates: set[tuple[int, int]] = set()
    for band in range(b):
        block = np.ascontiguousarray(matrix[:, band * r : (band + 1) * r])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * r))).ravel()
        _, bucket = np.unique(keys, return_inverse=True)
        order = np.argsort(bucket, kind="stable")
        starts = np.flatnonzero(np.diff(bucket[order], prepend=-1))
        for group in np.split(order, starts[1:]):
            if len(group) < 2 or len(np.unique(owner[group])) < 2:
                continue  # only rows of different clients make a pair
            for x, i in enumerate(group):
                for j in group[x + 1 :]:
                    if owner[i] != owner[j]:
                        candidates.add((int(min(i, j)), int(max(i, j))))
    if not candidates:
        return []
    pairs = np.array(sorted(candidates))
    similarity = (matrix[pairs[:, 0]] == matrix[pairs[:, 1]]).mean(axis=1)
    out = []
    for (i, j), s in zip(pairs, similarity, strict=True):
        if s >= threshold:
            out.append(
                DuplicatePair(int(owner[i]), int(local[i]), int(owner[j]), int(local[j]), float(s))
            )
    return out


def rows_to_drop(
    pairs: Sequence[DuplicatePair], sizes: Sequence[int], policy: str
) -> list[np.ndarray]:
    """Per client, the sorted positions of the rows ``policy`` drops (see the module doc)."""
    drop: list[set[int]] = [set() for _ in sizes]
    if policy == "drop_later":
        for p in pairs:
            drop[p.client_b].add(p.row_b)
    elif policy == "keep_one":
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def root(x: tuple[int, int]) -> tuple[int, int]:
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]  # path halving
                x = parent[x]
            return x

        for p in pairs:
            a, b = root((p.client_a, p.row_a)), root((p.client_b, p.row_b))
            parent[max(a, b)] = min(a, b)  # the root is the earliest (client, row) of a component
        for node in list(parent):
            if root(node) != node:
                drop[node[0]].add(node[1])
    elif policy not in ("report", "off"):
        raise ValueError(f"dedup policy {policy!r}; allowed: report, drop_later, keep_one")
    return [np.array(sorted(d), dtype=np.int64) for d in drop]


def simulation_key(seed: int) -> bytes:
    """The dedup key of a simulated federation: derived from the experiment seed, so that every
    process of a run (Ray workers prepare their own copy) drops the same rows. It is therefore
    no secret in simulation; a deployment would have the clients agree on a random key that
    the server never sees."""
    return hashlib.blake2b(f"fedfm-dedup-key/{seed}".encode(), digest_size=KEY_BYTES).digest()


@dataclass
class DedupResult:
    """The partition after deduplication and the report written to ``dedup.json``."""

    partition: Partition
    report: dict


def deduplicate(
    part: Partition,
    texts: Sequence[str],
    policy: str,
    threshold: float,
    num_perm: int,
    seed: int,
    kind: str = DEFAULT_SHINGLES,
) -> DedupResult:
    """Run the exchange in simulation: each client signs its own rows of ``texts`` (the training
    table's row texts), the server step sees only the signatures, the policy's rows leave the
    partition. A client left with no rows leaves the federation (with a warning)."""
    key = simulation_key(seed)
    signatures = [
        client_signatures([texts[i] for i in rows], key, num_perm, kind) for rows in part.indices
    ]
    pairs = find_duplicates(signatures, threshold, num_perm)  # signatures only: no text
    drops = rows_to_drop(pairs, part.sizes(), policy)
    ids, indices, groups, clients, removed = [], [], [], [], []
    for k, (cid, rows) in enumerate(zip(part.client_ids, part.indices, strict=True)):
        kept = np.delete(rows, drops[k])
        clients.append(
            {
                "client": cid,
                "rows": len(rows),
                "rows_dropped": len(drops[k]),
                "bytes_sent": int(signatures[k].nbytes),
                "bytes_received": int(len(drops[k]) * 4),  # int32 positions of the dropped rows
                "dropped": [int(i) for i in rows[drops[k]]],
            }
        )
        if len(kept) == 0:
            removed.append(cid)
            log.warning("dedup: every row of client %s duplicates another client's; it leaves", cid)
            continue
        ids.append(cid)
        indices.append(kept)
        if part.groups is not None:
            groups.append(part.groups[k])
    if not ids:
        raise DataError("governance.dedup left no client with rows")
    dropped = sum(len(d) for d in drops)
    notes = [*part.notes]
    if dropped or policy == "report":
        notes.append(f"dedup {policy}: {len(pairs)} cross-client pairs, {dropped} rows dropped")
    new = Partition(ids, indices, groups if part.groups is not None else None, notes)
    b, r = bands(threshold, num_perm)
    report = {
        "policy": policy,
        "threshold": threshold,
        "num_perm": num_perm,
        "shingles": kind,
        "bands": b,
        "rows_per_band": r,
        "pairs": len(pairs),
        "rows_dropped": dropped,
        "clients_removed": removed,
        "bytes_sent_total": sum(c["bytes_sent"] for c in clients),
        "clients": clients,
        "pair_list": [
            [
                part.client_ids[p.client_a],
                int(part.indices[p.client_a][p.row_a]),
                part.client_ids[p.client_b],
                int(part.indices[p.client_b][p.row_b]),
                round(p.similarity, 4),
            ]
            for p in pairs
        ],
    }
    return DedupResult(new, report)


@PARTITION_FILTERS.register("dedup")
def dedup_filter(config, train, part: Partition) -> tuple[Partition, dict | None]:
    """``[governance] dedup``: each client signs its own rows, the server pairs signatures only,
    the policy's rows leave the partition before anything trains (simulation only)."""
    g = config.governance
    if g.dedup == "off":
        return part, None
    texts = TASKS.get(config.task.type).row_texts(train)
    result = deduplicate(part, texts, g.dedup, g.dedup_threshold, g.dedup_num_perm, config.seed)
    return result.partition, result.report
