"""Cross-client deduplication: planted copies are found from keyed signatures alone, the
policies drop exactly what they say, and a run drops the planted rows before training."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedfm
from fedfm.cli import main
from fedfm.compat import check_compatible, check_network
from fedfm.data.partition import Partition
from fedfm.errors import ConfigError, ProtocolError
from fedfm.governance import dedup
from fedfm.governance.dedup import (
    DuplicatePair,
    client_signatures,
    deduplicate,
    find_duplicates,
    jaccard,
    normalise,
    rows_to_drop,
    shingles,
    simulation_key,
)
from tests.conftest import DATA

KEY = simulation_key(0)


def _debian(n: int, seed: int = 0) -> list[str]:
    with open(DATA / "debian" / "train.tsv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f, delimiter="\t")]
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.choice(len(texts), size=n, replace=False)]


def _edit_middle_word(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "zyzzyva"
    return " ".join(words)


@pytest.fixture(scope="module")
def planted():
    """Two clients of real Debian descriptions; client 1 also holds 30 exact copies and 30
    one-word edits of client 0's long rows (≥ 60 words)."""
    texts = _debian(700)
    own0, own1 = texts[:300], texts[300:600]
    long0 = [i for i, t in enumerate(own0) if len(t.split()) >= 60]
    exact, near = long0[:30], long0[30:60]
    client1 = own1 + [own0[i] for i in exact] + [_edit_middle_word(own0[i]) for i in near]
    sigs = [client_signatures(own0, KEY), client_signatures(client1, KEY)]
    found = find_duplicates(sigs, threshold=0.8, num_perm=128)
    truth_exact = {(i, 300 + k) for k, i in enumerate(exact)}
    truth_near = {(i, 330 + k) for k, i in enumerate(near)}
    return own0, client1, found, truth_exact, truth_near


def test_exact_copies_are_all_found_and_near_copies_almost_all(planted):
    *_, found, truth_exact, truth_near = planted
    pairs = {(p.row_a, p.row_b) for p in found}
    assert truth_exact <= pairs  # recall 1.0 on exact copies
    assert len(truth_near & pairs) >= 0.9 * len(truth_near)
    assert all(p.similarity == 1.0 for p in found if (p.row_a, p.row_b) in truth_exact)


def test_unrelated_rows_are_not_paired(planted):
    own0, client1, found, truth_exact, truth_near = planted
    extra = [p for p in found if (p.row_a, p.row_b) not in truth_exact | truth_near]
    for p in extra:  # anything else found is a natural near-duplicate (Debian's templates)
        a, b = (shingles(normalise(t)) for t in (own0[p.row_a], client1[p.row_b]))
        assert jaccard(a, b) >= 0.7
    assert len(extra) < 0.001 * len(own0) * len(client1)  # of ~100,000 cross-client pairs


def test_signatures_match_under_one_key_and_differ_under_another():
    texts = _debian(20, seed=1)
    same = client_signatures(texts, KEY)
    assert same.dtype == np.uint32 and same.shape == (20, 128)
    np.testing.assert_array_equal(same, client_signatures(texts, KEY))
    other = client_signatures(texts, simulation_key(1))
    assert (same == other).mean() < 0.01  # an outsider's key gives unrelated values


def test_the_estimate_follows_the_true_jaccard_similarity():
    a = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    b = a.replace("seven", "sevens")  # 3 of 12 shingles change: J = 9 / 15
    sa, sb = (shingles(normalise(t), "word3") for t in (a, b))
    assert jaccard(sa, sb) == pytest.approx(9 / 15)
    sig = client_signatures([a, b], KEY, num_perm=1024, kind="word3")
    assert (sig[0] == sig[1]).mean() == pytest.approx(9 / 15, abs=0.05)


def test_the_server_step_takes_signature_arrays_only(monkeypatch):
    with pytest.raises(ProtocolError, match="2-D uint32"):
        find_duplicates([np.zeros((3, 128), np.uint32), ["some text"]])
    with pytest.raises(ProtocolError, match="dedup_num_perm = 128"):
        find_duplicates([np.zeros((3, 64), np.uint32)] * 2, num_perm=128)
    seen = []
    real = dedup.find_duplicates

    def spy(signatures, *args):
        seen.extend(type(s) for s in signatures)
        return real(signatures, *args)

    monkeypatch.setattr(dedup, "find_duplicates", spy)
    texts = _debian(6, seed=2)
    part = Partition(["c0", "c1"], [np.arange(3), np.arange(3, 6)])
    deduplicate(part, texts + texts, "report", 0.8, 128, seed=0)
    assert seen == [np.ndarray, np.ndarray]


def _pair(a, i, b, j):
    return DuplicatePair(a, i, b, j, 1.0)


def test_the_policies_on_a_chain_over_three_clients():
    # A (client 0, row 0) ~ B (client 2, row 0) ~ C (client 1, row 0); A and C are not a pair.
    chain = [_pair(0, 0, 2, 0), _pair(1, 0, 2, 0)]
    sizes = [2, 2, 2]
    later = rows_to_drop(chain, sizes, "drop_later")
    assert [d.tolist() for d in later] == [[], [], [0]]  # B alone: it has an earlier copy
    one = rows_to_drop(chain, sizes, "keep_one")
    assert [d.tolist() for d in one] == [[], [0], [0]]  # only A, the earliest, stays
    assert [d.tolist() for d in rows_to_drop(chain, sizes, "report")] == [[], [], []]


def test_a_run_of_deduplicate_drops_exact_copies_per_policy():
    texts = _debian(9, seed=3)
    texts[4] = texts[0]  # client 1 holds a copy of client 0's row 0
    texts[8] = texts[0]  # and so does client 2
    part = Partition(["c0", "c1", "c2"], [np.arange(0, 3), np.arange(3, 6), np.arange(6, 9)])
    for policy, dropped in (("drop_later", [4, 8]), ("keep_one", [4, 8]), ("report", [])):
        result = deduplicate(part, texts, policy, 0.8, 128, seed=0)
        kept = np.concatenate(result.partition.indices)
        assert sorted(set(range(9)) - set(kept.tolist())) == dropped
        assert result.report["pairs"] == 3  # (0,4), (0,8), (4,8)
        assert [c["bytes_sent"] for c in result.report["clients"]] == [3 * 128 * 4] * 3


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 3), st.integers(0, 4)),
        max_size=25,
    )
)
def test_after_either_policy_no_duplicate_pair_survives(raw):
    pairs = [_pair(a, i, b, j) for a, i, b, j in raw if a < b]
    sizes = [5, 5, 5, 5]
    later = rows_to_drop(pairs, sizes, "drop_later")
    one = rows_to_drop(pairs, sizes, "keep_one")
    for drops in (later, one):
        gone = {(k, int(r)) for k, d in enumerate(drops) for r in d}
        assert all((p.client_a, p.row_a) in gone or (p.client_b, p.row_b) in gone for p in pairs)
    assert not later[0].size  # nothing has an earlier copy than the first client
    for a, b in zip(later, one, strict=True):
        assert set(a.tolist()) <= set(b.tolist())  # keep_one drops every row drop_later does


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, tiny_config_module):
    """A tiny run over four clients (column 'owner'); client c2 holds 10 exact copies of c0's
    rows, c3 holds 5 copies of c0's rows with the last word changed."""
    with open(DATA / "agnews" / "train.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:400]
    source = [r for r in rows[:100] if len(r["text"].split()) >= 25][:15]
    for k, r in enumerate(source[:10]):
        rows[200 + k] = dict(r)
    for k, r in enumerate(source[10:]):
        rows[300 + k] = {**r, "text": r["text"].rsplit(" ", 1)[0] + " yesterday"}
    path = tmp_path_factory.mktemp("data") / "train.tsv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["text", "label", "owner"])
        for i, r in enumerate(rows):
            writer.writerow([r["text"], r["label"], "ABCD"[i // 100]])
    config = tiny_config_module(
        f"data.train={path}",
        "data.train_rows=400",
        "partition.scheme='column'",
        "partition.column='owner'",
        "partition.min_size=1",
        "federation.rounds=1",
        "governance.dedup='drop_later'",
    )
    return fedfm.run(config, out=tmp_path_factory.mktemp("runs"))


def test_a_run_drops_the_planted_rows_and_writes_dedup_json(planted_run):
    report = json.loads((planted_run.run_dir / "dedup.json").read_text())
    clients = {c["client"]: c for c in report["clients"]}
    assert clients["c2"]["dropped"] == list(range(200, 210))
    assert clients["c3"]["dropped"] == list(range(300, 305))
    assert clients["c0"]["dropped"] == clients["c1"]["dropped"] == []
    assert all(c["bytes_sent"] == 100 * 128 * 4 for c in report["clients"])
    assert report["policy"] == "drop_later" and report["threshold"] == 0.8
    partition = json.loads((planted_run.run_dir / "partition.json").read_text())
    assert [c["rows"] for c in partition["clients"]] == [100, 100, 90, 95]
    assert planted_run.summary["dedup_dropped_rows"] == 15
    assert planted_run.summary["dedup_pairs"] == report["pairs"] >= 15


def test_dedup_refuses_packed_lm_rows_and_the_network_in_one_line(tiny_config):
    with pytest.raises(ConfigError, match="governance.dedup = 'report' compares documents"):
        check_compatible(tiny_config("task.type='lm'", "governance.dedup='report'"))
    served = tiny_config("governance.dedup='keep_one'", "server.tokens_file='tokens.txt'")
    with pytest.raises(ConfigError, match="governance.dedup = 'keep_one'.*simulation-only"):
        check_network(served)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("governance.dedup=maybe", "governance.dedup = 'maybe'"),
        ("governance.dedup_threshold=1.5", "governance.dedup_threshold = 1.5"),
        ("governance.dedup_num_perm=8", "governance.dedup_num_perm = 8"),
    ],
)
def test_bad_dedup_settings_are_one_line_and_exit_2(capsys, tmp_path, setting, message):
    assert main(["run", "--quiet", "--out", str(tmp_path), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedfm: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_instruction_rows_are_compared_by_their_messages_and_response():
    from fedfm.data.instructions import Instructions
    from fedfm.tasks import TASKS

    table = Instructions(
        [[{"role": "user", "content": "Name the section."}]],
        ["games"],
        np.zeros(1, dtype=np.int64),
        ("all",),
        {},
    )
    assert TASKS.get("causal_lm").row_texts(table) == ["Name the section.\ngames"]
    assert not TASKS.get("lm").has_row_texts
