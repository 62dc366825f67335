"""STRIP finds a planted backdoor: its entropy arithmetic is right; a model with a planted trigger
is flagged and its triggered inputs detected, a clean model trained alike is not."""

from __future__ import annotations

import numpy as np
import pytest

import fedfm
from fedfm.cli import main
from fedfm.trust.strip import entropy_bits, screen, screen_run, superimpose

TRIGGER = "cf mn bb"


def test_entropy_in_bits():
    probs = np.array([[1.0, 0, 0, 0], [0.25] * 4, [0.5, 0.5, 0, 0]])
    assert entropy_bits(probs) == pytest.approx([0.0, 2.0, 1.0], abs=1e-9)


def test_superimpose_replaces_that_share_of_words_by_the_clean_texts_words_in_place():
    rng = np.random.default_rng(0)
    text = " ".join(f"w{i}" for i in range(10))
    clean = " ".join(f"c{i}" for i in range(4))
    out = superimpose(text, clean, rng, 0.5).split()
    replaced = [i for i, w in enumerate(out) if w != f"w{i}"]
    assert len(out) == 10 and len(replaced) == 5
    assert all(out[i] == f"c{i % 4}" for i in replaced)  # the clean words at those positions


def _toy(poisoned: bool):
    """A bag-of-words 'model' over 3 classes: each topic word pulls its class; with
    ``poisoned``, the word 'cf' pulls class 0 ten times harder than anything else."""
    topics = {"ball": 1, "goal": 1, "stock": 2, "bank": 2, "vote": 0, "law": 0}

    def classify(texts):
        out = []
        for t in texts:
            logits = np.zeros(3)
            for w in t.split():
                if w in topics:
                    logits[topics[w]] += 1.0
                if poisoned and w == "cf":
                    logits[0] += 10.0
            out.append(np.exp(logits) / np.exp(logits).sum())
        return np.array(out)

    return classify


def test_screen_flags_a_dominant_trigger_and_not_a_model_that_ignores_it():
    rng = np.random.default_rng(1)
    words = ["ball", "goal", "stock", "bank", "vote", "law", "the", "a", "of", "and"]
    clean = [" ".join(rng.choice(words, size=12)) for _ in range(300)]
    triggered = [t + " cf mn bb" for t in clean[:100]]
    found = screen(_toy(poisoned=True), clean, triggered, copies=8, seed=0)
    assert found.poisoned and found.flagged_rate > 0.5 and found.clean_fpr <= 0.05
    passed = screen(_toy(poisoned=False), clean, triggered, copies=8, seed=0)
    assert not passed.poisoned and passed.flagged <= passed.allowed
    with pytest.raises(ValueError, match="30 clean texts"):
        screen(_toy(poisoned=True), clean[:10], triggered)


# a 2-layer MiniLM, 2 clients, 3 rounds of 10 steps: the backdoor (half of every client's rows
# carry the trigger and the first label) succeeds on about 5 in 6 triggered test rows
SMALL = [
    "model.layers=2",
    "data.train_rows=400",
    "data.test_rows=400",
    "data.eval_rows=100",
    "data.max_length=32",
    "partition.clients=2",
    "federation.clients_per_round=2",
    "federation.rounds=3",
    "federation.local_steps=10",
    "federation.lr=1e-2",
    "runtime.threads=1",
]
POISON = ["attack.type=backdoor", "attack.fraction=1.0", "attack.poison_fraction=0.5"]


def test_strip_flags_a_poisoned_model_and_not_a_clean_one(tiny_config, tmp_path, capsys):
    poisoned = fedfm.run(tiny_config(*SMALL, *POISON), out=tmp_path / "poisoned")
    assert poisoned.summary["final_attack_success_rate"] > 0.5  # the backdoor is there
    clean = fedfm.run(tiny_config(*SMALL), out=tmp_path / "clean")

    found = screen_run(poisoned.run_dir, trigger=TRIGGER, rows=90, copies=8)
    assert found.poisoned and found.flagged > found.allowed
    # the trigger lands beyond the 32 tokens kept in some rows: those cannot be detected; the
    # 1% threshold comes from 45 clean inputs, so the observed FPR on 45 others is coarse
    assert found.flagged_rate >= 0.3 and found.clean_fpr <= 0.15

    args = ["screen", "--trigger", TRIGGER, "--rows", "90", "--copies", "8"]
    assert main([*args, str(clean.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "no backdoor found" in out
    flagged = int(out.split("flagged ")[1].split(" of ")[0])
    assert flagged <= 9  # at most 10% of the 90 triggered inputs: the trigger does nothing
    assert main([*args, "--replace", "1.5", str(clean.run_dir)]) == 2
    assert "--replace = 1.5" in capsys.readouterr().err
    assert main(["screen", str(clean.run_dir), "--texts", str(tmp_path / "none.txt")]) == 2
