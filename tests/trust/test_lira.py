"""LiRA measures what it says on real runs: with membership planted (an overfit model) it finds
members, at a low false-positive rate too; under strong DP it does not; and its loss attack is
the run's own audit."""

from __future__ import annotations

import json

import pytest

import fedfm
from fedfm.cli import main
from fedfm.trust.lira import membership_audit

# 96 rows, 2 clients: every row is drawn about 8 times; 48 members and 48 test rows audited
OVERFIT = [
    "data.train_rows=96",
    "data.test_rows=200",
    "data.eval_rows=32",
    "data.max_length=32",
    "partition.clients=2",
    "federation.clients_per_round=2",
    "federation.rounds=2",
    "federation.local_steps=12",
    "federation.batch_size=8",
    "federation.lr=5e-3",
    "privacy.audit=true",
    "privacy.audit_rows=96",
    "runtime.threads=1",
]


def test_lira_finds_planted_membership_and_not_under_strong_dp(tiny_config, tmp_path, capsys):
    plain = fedfm.run(tiny_config(*OVERFIT), out=tmp_path / "plain")
    assert plain.summary["mia_trained_rows"] == 96
    # the loss attack of `fedfm audit` is the run's own audit, on the same rows
    loss = membership_audit(plain.run_dir, "loss")
    assert loss["loss"]["auc"] == pytest.approx(plain.summary["mia_auc"])
    assert "lira" not in loss

    assert main(["audit", str(plain.run_dir), "--attack", "lira", "--shadows", "2"]) == 0
    report = json.loads((plain.run_dir / "audit.json").read_text())
    assert f"lira  AUC {report['lira']['auc']:.4f}" in capsys.readouterr().out
    assert report["rows"] == 48 and report["lira"]["shadows"] == 2  # half the trained rows
    lira = report["lira"]
    # 48 against 48: an AUC's standard error is about 0.06; at 1% FPR no false positive is
    # allowed, so a random score would find about 1 in 49 members
    assert lira["auc"] > 0.65
    assert lira["tpr_at_1%_fpr"] >= 0.1

    dp = ["privacy.dp=central", "privacy.noise_multiplier=3", "privacy.clip_norm=0.1"]
    private = fedfm.run(tiny_config(*OVERFIT, *dp), out=tmp_path / "dp")
    found = membership_audit(private.run_dir, "lira", shadows=2)["lira"]
    assert abs(found["auc"] - 0.5) < 0.15 < lira["auc"] - found["auc"]
    assert found["tpr_at_1%_fpr"] < 0.1


def test_the_audit_refuses_runs_it_cannot_score(tiny_config, tmp_path, capsys):
    short = ["federation.rounds=1", "federation.local_steps=1"]
    unrecorded = fedfm.run(tiny_config(*OVERFIT, *short, "privacy.audit=false"), out=tmp_path)
    assert main(["audit", str(unrecorded.run_dir)]) == 2
    assert "privacy.audit = false" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "nothing"), "--attack", "loss"]) == 2
    assert main(["audit", str(unrecorded.run_dir), "--shadows", "1"]) == 2
    assert "--shadows = 1" in capsys.readouterr().err
