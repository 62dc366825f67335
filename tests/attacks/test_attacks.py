"""Attacks: what a malicious client sends or trains on, and who is malicious."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

import fedfm
from fedfm.attacks import ATTACKS, malicious_clients
from fedfm.config import AttackConfig
from fedfm.errors import ConfigError

LABELS = ("a", "b", "c", "d")
REF = OrderedDict(w=torch.tensor([1.0, 1.0]))
TRAINED = OrderedDict(w=torch.tensor([2.0, 0.0]))  # honest delta [1, -1]


@pytest.mark.parametrize(
    ("kind", "scale", "expected"),
    [
        ("sign_flip", 1.0, [0.0, 2.0]),
        ("sign_flip", 3.0, [-2.0, 4.0]),
        ("scale", 10.0, [11.0, -9.0]),
    ],
)
def test_update_attacks(kind, scale, expected):
    attack = ATTACKS.get(kind)(AttackConfig(type=kind, scale=scale), LABELS)
    out = attack.poison_update(TRAINED, REF, torch.Generator().manual_seed(0))
    assert out["w"].tolist() == expected


def test_noise_attack_ignores_training():
    attack = ATTACKS.get("noise")(AttackConfig(type="noise", noise_std=2.0), LABELS)
    big = OrderedDict(w=torch.zeros(100_000))
    out = attack.poison_update(big, big, torch.Generator().manual_seed(0))
    assert out["w"].std().item() == pytest.approx(2.0, rel=0.02)


def test_data_attacks():
    labels = np.array([0, 1, 2, 3, 0])
    flip = ATTACKS.get("label_flip")(AttackConfig(type="label_flip"), LABELS)
    assert flip.poison_data(["x"] * 5, labels, np.random.default_rng(0))[1].tolist() == [
        3,
        2,
        1,
        0,
        3,
    ]
    backdoor = ATTACKS.get("backdoor")(
        AttackConfig(type="backdoor", target_label="c", poison_fraction=0.4, trigger="zz"), LABELS
    )
    texts, poisoned = backdoor.poison_data(
        [f"text {i}" for i in range(5)], labels, np.random.default_rng(0)
    )
    changed = [i for i, t in enumerate(texts) if "zz" in t.split()]
    assert len(changed) == 2 and all(poisoned[i] == 2 for i in changed)
    test_texts, test_labels = backdoor.triggered_test(["x y"] * 5, labels, seed=0)
    assert len(test_texts) == 4 and 2 not in test_labels and all("zz" in t for t in test_texts)
    with pytest.raises(ConfigError, match="attack.target_label = 'z' is not a label"):
        ATTACKS.get("backdoor")(AttackConfig(type="backdoor", target_label="z"), LABELS)


def test_malicious_set_is_fixed_by_the_seed_and_rounded():
    ids = [f"c{i}" for i in range(10)]
    assert malicious_clients(ids, 0.2, 0) == malicious_clients(ids, 0.2, 0)
    assert len(malicious_clients(ids, 0.2, 0)) == 2 and len(malicious_clients(ids, 0.25, 0)) == 2
    assert malicious_clients(ids, 0.0, 0) == []


def test_a_planted_backdoor_is_found_by_the_success_rate_and_a_clean_run_is_not(
    tiny_config, tmp_path
):
    """Every client poisons most of its rows: the trigger must work on most triggered test rows;
    with no malicious client (the same trigger test) it must not."""
    common = (
        "attack.type=backdoor",
        "attack.poison_fraction=0.8",
        "federation.rounds=3",
        "federation.local_steps=10",
        "federation.clients_per_round=4",
    )
    poisoned = fedfm.run(tiny_config(*common, "attack.fraction=1.0"), out=tmp_path / "p")
    clean = fedfm.run(tiny_config(*common, "attack.fraction=0.0"), out=tmp_path / "c")
    assert len(poisoned.summary["malicious_clients"]) == 4
    assert clean.summary["malicious_clients"] == []
    asr = poisoned.summary["final_attack_success_rate"]
    assert asr == poisoned.metrics[-1]["attack_success_rate"]
    assert asr >= 0.8 and clean.summary["final_attack_success_rate"] <= 0.4, (
        asr,
        clean.summary["final_attack_success_rate"],
    )
