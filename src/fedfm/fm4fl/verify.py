"""Checking synthetic data before it is used, without pooling the clients' data.

Four checks, in this order; a sample flagged by one is dropped and counted under its reason:

``quality``
    Too few or too many words (``synthetic.min_words`` … ``max_words``), mostly non-letters, or an
    echo of its own prompt.
``duplicate``
    A near-copy of an earlier synthetic sample (a generator that repeats itself adds no data).
``memorised``
    A near-copy of some client's row: the server sends the MinHash signatures of the synthetic
    samples (never the clients' rows, nor even the synthetic text); each client indexes the
    3-word shingles of its own rows in a MinHash LSH table, compares locally and reports only one
    count per synthetic sample. A sample whose estimated Jaccard similarity with any client row
    reaches ``synthetic.near_duplicate`` is dropped: the generator may have memorised it, and
    training on it would leak it back. The counts are not nothing: a count tied to a sample the
    server knows tells it whether that client holds a near-copy of that sample (a membership
    oracle for texts the server chooses, e.g. through ``synthetic.file``); here the server sums
    them in the clear. Deployments that distrust the server should sum them under secure
    aggregation and limit the number of samples a client answers for.
``balance``
    Clients report only their label histograms; surplus samples of over-represented labels are
    dropped until the synthetic label distribution matches the clients' (``synthetic.balance``).

The report holds the counts per reason, the clients' per-sample match counts summed, and the
total-variation distance between the synthetic and the clients' label distributions before and
after balancing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

NUM_PERM = 128  # MinHash permutations: the Jaccard estimate's standard error is ≈ 1/sqrt(128)
SHINGLE = 3  # words per shingle
SEED = 1  # the MinHash permutations: server and clients must use the same


def shingles(text: str) -> list[bytes]:
    """The set of ``SHINGLE``-word shingles of ``text`` (lowercase words, punctuation dropped);
    a text shorter than a shingle is one shingle of its words."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < SHINGLE:
        return [" ".join(words).encode()] if words else [b""]
    return sorted({" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - 2)})


def signatures(texts: Sequence[str]) -> list:
    """MinHash signatures (datasketch ``LeanMinHash``) of ``texts``."""
    from datasketch import LeanMinHash, MinHash

    bulk = MinHash.bulk([shingles(t) for t in texts], num_perm=NUM_PERM, seed=SEED)
    return [LeanMinHash(m) for m in bulk]


def client_match_counts(client_texts: Sequence[str], synthetic: Sequence, threshold: float):
    """Run by a client on its own rows: per synthetic signature, how many of the client's rows
    have an estimated Jaccard similarity ≥ ``threshold`` with it. Only these counts leave."""
    from datasketch import MinHashLSH

    own = signatures(client_texts)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    for i, sig in enumerate(own):
        lsh.insert(str(i), sig, check_duplication=False)
    counts = np.zeros(len(synthetic), dtype=np.int64)
    for j, sig in enumerate(synthetic):
        # LSH gives candidates; the client confirms each with the signature's Jaccard estimate
        counts[j] = sum(own[int(k)].jaccard(sig) >= threshold for k in lsh.query(sig))
    return counts


def quality_reason(text: str, prompt: str, min_words: int, max_words: int) -> str | None:
    """Why ``text`` fails the quality filters, or None."""
    words = text.split()
    if len(words) < min_words:
        return "too_short"
    if len(words) > max_words:
        return "too_long"
    letters = sum(ch.isalpha() for ch in text)
    if letters < 0.6 * len(text.replace(" ", "")):
        return "not_text"
    if prompt and prompt.lower().rstrip(".") in text.lower():
        return "prompt_echo"
    return None


@dataclass
class Verified:
    keep: np.ndarray  # indices of the kept samples, in order
    report: dict = field(default_factory=dict)
    # per generated sample: None (kept) or why it was dropped ("quality:too_short",
    # "duplicate", "memorised", "balance")
    reasons: list[str | None] = field(default_factory=list)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    p = p / max(p.sum(), 1)
    q = q / max(q.sum(), 1)
    return float(0.5 * np.abs(p - q).sum())


def balanced(labels: np.ndarray, keep: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The largest subset of ``keep`` (first samples first) whose label counts are proportional
    to ``target`` over the labels that have samples (a label the set lacks cannot be balanced
    in, and must not empty the set; the report names such labels)."""
    have = np.bincount(labels[keep], minlength=len(target))
    share = np.where(have > 0, target, 0.0)
    if share.sum() <= 0:
        return np.asarray(keep, dtype=np.int64)
    share = share / share.sum()
    wanted = share > 0
    n = int(np.floor(np.min(have[wanted] / share[wanted]))) if wanted.any() else 0
    quota = np.floor(share * n + 1e-9).astype(int)
    out, taken = [], np.zeros(len(target), dtype=int)
    for i in keep:
        if taken[labels[i]] < quota[labels[i]]:
            out.append(i)
            taken[labels[i]] += 1
    return np.array(out, dtype=np.int64)


def verify(
    texts: Sequence[str],
    labels: Sequence[int],
    label_prompts: Sequence[str],
    clients: dict[str, Sequence[str]],
    client_histograms: dict[str, np.ndarray],
    *,
    near_duplicate: float,
    min_words: int,
    max_words: int,
    balance: bool,
) -> Verified:
    """Run the four checks (module docstring); ``clients`` maps a client to its own texts, used
    only inside :func:`client_match_counts`, as a client would run it."""
    from datasketch import MinHashLSH

    labels = np.asarray(labels, dtype=np.int64)
    n_labels = len(label_prompts)
    dropped = {"quality": 0, "duplicate": 0, "memorised": 0, "balance": 0}
    reasons: dict[str, int] = {}
    why: list[str | None] = [None] * len(texts)
    keep: list[int] = []
    for i, text in enumerate(texts):
        reason = quality_reason(text, label_prompts[labels[i]], min_words, max_words)
        if reason is None:
            keep.append(i)
        else:
            dropped["quality"] += 1
            reasons[reason] = reasons.get(reason, 0) + 1
            why[i] = f"quality:{reason}"

    sigs = signatures([texts[i] for i in keep])
    seen = MinHashLSH(threshold=near_duplicate, num_perm=NUM_PERM)
    seen_sigs: dict[str, object] = {}
    unique: list[int] = []
    unique_sigs: list = []
    for i, sig in zip(keep, sigs, strict=True):
        if any(seen_sigs[k].jaccard(sig) >= near_duplicate for k in seen.query(sig)):
            dropped["duplicate"] += 1
            why[i] = "duplicate"
            continue
        seen.insert(str(i), sig, check_duplication=False)
        seen_sigs[str(i)] = sig
        unique.append(i)
        unique_sigs.append(sig)

    matches = np.zeros(len(unique), dtype=np.int64)
    for cid in sorted(clients):
        matches += client_match_counts(clients[cid], unique_sigs, near_duplicate)
    memorised = matches > 0
    dropped["memorised"] = int(memorised.sum())
    for i, m in zip(unique, memorised, strict=True):
        if m:
            why[i] = "memorised"
    kept = np.array([i for i, m in zip(unique, memorised, strict=True) if not m], dtype=np.int64)

    target = np.zeros(n_labels, dtype=np.float64)
    for hist in client_histograms.values():
        target += np.asarray(hist, dtype=np.float64)
    before = np.bincount(labels[kept], minlength=n_labels) if len(kept) else np.zeros(n_labels)
    if balance and len(kept):
        balanced_keep = balanced(labels, kept, target)
        dropped["balance"] = len(kept) - len(balanced_keep)
        for i in sorted(set(kept.tolist()) - set(balanced_keep.tolist())):
            why[i] = "balance"
        kept = balanced_keep
    after = np.bincount(labels[kept], minlength=n_labels) if len(kept) else np.zeros(n_labels)
    report = {
        "labels_missing": [int(i) for i in np.flatnonzero((before == 0) & (target > 0))],
        "generated": len(texts),
        "kept": len(kept),
        "dropped": dropped,
        "quality_reasons": reasons,
        "client_matches": int(matches.sum()),
        "near_duplicate_threshold": near_duplicate,
        "label_counts_kept": after.astype(int).tolist(),
        "label_tv_before_balance": total_variation(before.astype(float), target),
        "label_tv_after": total_variation(after.astype(float), target),
    }
    return Verified(kept, report, why)
