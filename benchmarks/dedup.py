"""Cross-client deduplication on Debian's natural clients: precision, recall, seconds, bytes.

Usage, from the repository root (``FEDFM_DATA`` defaults to ``../shared/data``):

    .venv/bin/python benchmarks/dedup.py [--plant 200] [--out benchmarks/results/dedup]

The clients are ``configs/debian_maintainers.toml``'s: one per maintaining team with at least 50
packages (32), plus one client of every other maintainer merged. Two scenarios:

* ``natural``: the training split as it is (11,028 descriptions);
* ``planted``: the same, plus ``--plant`` rows copied from their client into another random
  client, half of them exactly and half with their middle word replaced.

For each shingling (word 3-grams, character 5-grams), each MinHash size and each threshold (0.8,
0.9) every client signs its own rows with the keyed hash, the server step pairs the signatures,
and the detected cross-client pairs are scored against two ground truths computed from the texts:

* ``exact``: pairs of clients' rows whose normalised texts are equal;
* ``jaccard``: pairs whose true Jaccard similarity of shingle sets reaches the threshold, over
  *all* cross-client pairs (an exact all-pairs similarity join with prefix filtering: two sets
  with Jaccard ≥ t share a token among the first |A| − ⌈t·|A|⌉ + 1 of their rarest tokens).

Writes ``OUT/dedup.json`` with the hardware and the git commit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from fedfm.config import load_config
from fedfm.data.partition import partition
from fedfm.governance.dedup import (
    RECALL_WEIGHT,
    bands,
    client_signatures,
    find_duplicates,
    normalise,
    shingles,
    simulation_key,
)
from fedfm.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("FEDFM_DATA", str(ROOT.parent / "shared" / "data"))
THRESHOLDS = (0.8, 0.9)
WEIGHTS = (0.5, RECALL_WEIGHT)  # datasketch's default bands, and fedfm's recall-weighted ones


def hardware() -> dict:
    """CPU, cores, torch and Python (as compare_commits.py records them) and the git commit."""
    from compare_commits import _hardware

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {**_hardware(), "commit": commit}


def clients(seed: int) -> tuple[list[str], list[np.ndarray], list[str]]:
    """Debian's training texts, each client's rows and the client ids."""
    config = load_config(ROOT / "configs" / "debian_maintainers.toml", [f"seed={seed}"])
    train, _ = TASKS.get("classification").load_splits(config)
    part = partition(train.labels, train.columns, config.partition, config.seed)
    return list(train.texts), list(part.indices), part.client_ids


def plant(texts, indices, n: int, seed: int):
    """Copy ``n`` random rows into another random client: half exact, half one word edited."""
    rng = np.random.default_rng([seed, 0xD0])
    texts, indices = list(texts), [list(ix) for ix in indices]
    owner = {int(i): k for k, ix in enumerate(indices) for i in ix}
    planted = []
    for m, src in enumerate(rng.choice(len(texts), size=n, replace=False)):
        a = owner[int(src)]
        b = int(rng.choice([k for k in range(len(indices)) if k != a]))
        text = texts[src]
        if m % 2:
            words = text.split()
            words[len(words) // 2] = "zyzzyva"
            text = " ".join(words)
        texts.append(text)
        indices[b].append(len(texts) - 1)
        planted.append({"source": int(src), "copy": len(texts) - 1, "exact": m % 2 == 0})
    return texts, [np.sort(np.array(ix)) for ix in indices], planted


def exact_truth(texts, owner) -> set[tuple[int, int]]:
    """Cross-client pairs of equal normalised text (global row ids, low first)."""
    groups = defaultdict(list)
    for i, t in enumerate(texts):
        groups[normalise(t)].append(i)
    return {
        (a, b)
        for rows in groups.values()
        for x, a in enumerate(rows)
        for b in rows[x + 1 :]
        if owner[a] != owner[b]
    }


def jaccard_truth(sets, owner, threshold: float) -> dict[tuple[int, int], float]:
    """Every cross-client pair with true Jaccard ≥ threshold (prefix-filtered, then exact)."""
    df = defaultdict(int)
    for s in sets:
        for token in s:
            df[token] += 1
    index = defaultdict(list)
    candidates = set()
    for i, s in enumerate(sets):
        ordered = sorted(s, key=lambda t: (df[t], t))
        prefix = ordered[: len(s) - math.ceil(threshold * len(s)) + 1]
        for token in prefix:
            for j in index[token]:
                if owner[j] != owner[i]:
                    candidates.add((j, i))
            index[token].append(i)
    out = {}
    for a, b in candidates:
        inter = len(sets[a] & sets[b])
        j = inter / (len(sets[a]) + len(sets[b]) - inter)
        if j >= threshold:
            out[(a, b)] = j
    return out


def score(found: set, truth: set) -> dict:
    hit = len(found & truth)
    return {
        "truth_pairs": len(truth),
        "true_positives": hit,
        "precision": round(hit / len(found), 4) if found else None,
        "recall": round(hit / len(truth), 4) if truth else None,
    }


def lsh_datasketch(signatures, threshold, num_perm) -> tuple[set, float]:
    """The same search with datasketch's MinHashLSH index: its pairs and seconds."""
    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes = {}
    for k, s in enumerate(signatures):
        for r, row in enumerate(s):
            hashes[(k, r)] = LeanMinHash(seed=1, hashvalues=row)
            lsh.insert((k, r), hashes[(k, r)])
    pairs = set()
    for key, m in hashes.items():
        for other in lsh.query(m):
            if other[0] > key[0] and m.jaccard(hashes[other]) >= threshold:
                pairs.add((key, other))
    return pairs, time.perf_counter() - t0


def scenario(name, texts, indices, ids, planted, perms, out_rows) -> None:
    owner = {int(i): k for k, ix in enumerate(indices) for i in ix}
    truth_exact = exact_truth(texts, owner)
    key = simulation_key(0)
    for kind in ("word3", "char5"):
        sets = [shingles(normalise(t), kind) for t in texts]
        t0 = time.perf_counter()
        truths = {t: jaccard_truth(sets, owner, t) for t in THRESHOLDS}
        truth_seconds = time.perf_counter() - t0
        for num_perm in perms:
            sign_seconds, signatures = [], []
            for ix in indices:
                t0 = time.perf_counter()
                signatures.append(client_signatures([texts[i] for i in ix], key, num_perm, kind))
                sign_seconds.append(time.perf_counter() - t0)
            sent = [int(s.nbytes) for s in signatures]
            for threshold, weight in itertools.product(THRESHOLDS, WEIGHTS):
                t0 = time.perf_counter()
                pairs = find_duplicates(signatures, threshold, num_perm, weight)
                server_seconds = time.perf_counter() - t0
                found = {
                    tuple(
                        sorted(
                            (int(indices[p.client_a][p.row_a]), int(indices[p.client_b][p.row_b]))
                        )
                    )
                    for p in pairs
                }
                row = {
                    "scenario": name,
                    "shingles": kind,
                    "num_perm": num_perm,
                    "threshold": threshold,
                    "recall_weight": weight,
                    "bands": list(bands(threshold, num_perm, weight)),
                    "detected_pairs": len(found),
                    "vs_exact_text": score(found, truth_exact),
                    "vs_true_jaccard": score(found, set(truths[threshold])),
                    "client_sign_seconds_mean": round(float(np.mean(sign_seconds)), 4),
                    "client_sign_seconds_max": round(float(np.max(sign_seconds)), 4),
                    "server_seconds": round(server_seconds, 4),
                    "truth_seconds": round(truth_seconds, 2),
                    "bytes_per_client_mean": round(float(np.mean(sent)), 1),
                    "bytes_per_client_max": max(sent),
                    "bytes_total": sum(sent),
                }
                true_j = [len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for a, b in sorted(found)]
                row["detected_true_jaccard_min"] = round(min(true_j), 4) if true_j else None
                row["detected_below_threshold_minus_0.1"] = sum(j < threshold - 0.1 for j in true_j)
                if planted:
                    for exact in (True, False):
                        want = {
                            tuple(sorted((p["source"], p["copy"])))
                            for p in planted
                            if p["exact"] == exact
                        }
                        label = "planted_exact" if exact else "planted_one_word_edit"
                        row[f"recall_{label}"] = round(len(found & want) / len(want), 4)
                    near = [
                        len(sets[p["source"]] & sets[p["copy"]])
                        / len(sets[p["source"]] | sets[p["copy"]])
                        for p in planted
                        if not p["exact"]
                    ]
                    row["planted_edit_true_jaccard_median"] = round(float(np.median(near)), 4)
                    row["planted_edit_true_jaccard_at_least_threshold"] = round(
                        float(np.mean(np.array(near) >= threshold)), 4
                    )
                if name == "natural" and kind == "word3" and num_perm == 128 and weight == 0.5:
                    ds_pairs, ds_seconds = lsh_datasketch(signatures, threshold, num_perm)
                    ours = {((p.client_a, p.row_a), (p.client_b, p.row_b)) for p in pairs}
                    row["datasketch_lsh_seconds"] = round(ds_seconds, 4)
                    row["datasketch_lsh_same_pairs"] = ds_pairs == ours
                out_rows.append(row)
                print(json.dumps(row), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plant", type=int, default=200)
    parser.add_argument("--perms", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dedup"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    texts, indices, ids = clients(0)
    rows: list[dict] = []
    scenario("natural", texts, indices, ids, None, args.perms, rows)
    ptexts, pindices, planted = plant(texts, indices, args.plant, 0)
    scenario("planted", ptexts, pindices, ids, planted, args.perms, rows)
    result = {
        "hardware": hardware(),
        "data": "debian/train.tsv, clients of configs/debian_maintainers.toml",
        "clients": len(ids),
        "rows": len(texts),
        "rows_per_client": {"min": min(map(len, indices)), "max": max(map(len, indices))},
        "planted": args.plant,
        "key": "simulation_key(seed 0): BLAKE2b-keyed 32-bit shingle hash",
        "bytes_per_client": "rows × num_perm × 4 (uint32 signatures, as sent)",
        "seconds": round(time.perf_counter() - t0, 1),
        "rows_table": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dedup.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
