"""Verifying synthetic data: copies of client rows are found from counts alone, duplicates and
junk are dropped, the label mix follows the clients'."""

from __future__ import annotations

import numpy as np
import pytest

from fedfm.data.table import load_labelled_text
from fedfm.fm4fl import verify as v
from tests.conftest import DATA

PROMPTS = ["Write one short news article about world news.", "Write one about sports."]


@pytest.fixture(scope="module")
def agnews():
    return load_labelled_text(DATA / "agnews" / "train.tsv", "text", "label", None, 300, "t")


def _edit(text: str) -> str:
    """A light edit: one word changed, one dropped — still a copy."""
    words = text.split()
    words[len(words) // 2] = "indeed"
    return " ".join(words[:-1])


def test_copies_of_client_rows_are_found_from_per_sample_counts(agnews):
    clients = {"a": agnews.texts[:150], "b": agnews.texts[150:300]}
    fresh = [
        "The national team won the cup final on Sunday after a late goal in extra time.",
        "Leaders met in Geneva to discuss the ceasefire and the return of refugees home.",
    ]
    synthetic = [agnews.texts[10], _edit(agnews.texts[200]), *fresh]
    sigs = v.signatures(synthetic)
    a = v.client_match_counts(clients["a"], sigs, 0.5)
    b = v.client_match_counts(clients["b"], sigs, 0.5)
    assert a.dtype == np.int64 and a.shape == (4,)  # one count per synthetic sample, nothing else
    assert a.tolist()[:2] == [1, 0] and b.tolist()[:2] == [0, 1]
    assert a[2:].sum() == b[2:].sum() == 0


def test_verify_drops_copies_duplicates_and_junk_and_counts_each(agnews):
    clients = {"a": agnews.texts[:100]}
    good = agnews.texts[200:220]  # real, varied texts that no client holds
    texts = [
        *good,
        good[0],  # duplicate of a synthetic sample
        agnews.texts[5],  # memorised client row
        "Too short.",
        "12345 67890 !!!! #### 2222 3333 4444 5555 6666 7777",  # not text
        PROMPTS[1] + " Here it is, an article about sports and the match today ok.",  # echo
    ]
    labels = [i % 2 for i in range(1, 21)] + [1, 0, 0, 1, 1]
    out = v.verify(
        texts,
        labels,
        PROMPTS,
        clients,
        {"a": np.array([50, 50])},
        near_duplicate=0.5,
        min_words=5,
        max_words=100,
        balance=True,
    )
    r = out.report
    assert r["generated"] == 25
    assert r["dropped"]["quality"] == 3
    assert r["quality_reasons"] == {"too_short": 1, "not_text": 1, "prompt_echo": 1}
    assert r["dropped"]["duplicate"] == 1 and r["dropped"]["memorised"] == 1
    assert r["client_matches"] == 1
    assert 21 not in out.keep.tolist() and 20 not in out.keep.tolist()
    assert r["kept"] == len(out.keep) == 20 and set(out.keep.tolist()) == set(range(20))


def test_balance_follows_the_clients_label_distribution():
    labels = np.array([0] * 40 + [1] * 40)
    keep = np.arange(80)
    kept = v.balanced(labels, keep, np.array([300.0, 100.0]))
    counts = np.bincount(labels[kept], minlength=2)
    assert counts.tolist() == [39, 13]  # 3:1 as the clients hold, as many as possible
    assert v.total_variation(counts.astype(float), np.array([3.0, 1.0])) < 0.01


def test_a_label_without_samples_does_not_empty_the_set():
    labels = np.array([0] * 10 + [1] * 10)
    kept = v.balanced(labels, np.arange(20), np.array([10.0, 10.0, 1.0]))
    assert np.bincount(labels[kept]).tolist() == [10, 10]


def test_shingles_of_short_texts_still_compare():
    assert v.shingles("Hi there") == [b"hi there"]
    a, b = v.signatures(["Hi there", "hi, there!"])
    assert a.jaccard(b) == 1.0
