"""Offline LiRA against a finished run (Carlini et al. 2022): ``fedfm audit RUN_DIR --attack lira``.

**What the shadows are.** A shadow is the run's own federation (same config, model, initial
adapter, partition, codecs and DP) trained again with a different seed (so other client
draws, batches and noise) on the clients' rows *minus every audited row*. The audited rows
are the run's audit members (rows some client trained on, drawn as ``privacy.audit`` draws
them) and as many test rows (never trained on by anyone). So every shadow is an OUT model for
every audited row: this is LiRA's *offline* variant, which needs no IN shadows and so costs K
federated runs, whatever the number of rows audited. An attacker who knows the training
procedure and holds the population data can train the same shadows; the test rows stand in
for the population.

Per row, the shadows' logit-scaled confidences on the true label fit a Gaussian (the variance
pooled over rows for K < 64, as the paper advises); the row's score is how far the final
model's confidence sits above it (:func:`fedfm.privacy.audit.lira_offline`). LiRA audits at
most half the trained rows, so that the shadows keep rows to train on; when clients trained on
every row they hold (a small, overfit run), the shadows thus train on fewer rows than the run. The report, also
written to ``RUN_DIR/audit.json``, gives AUC and TPR at 1% and 0.1% FPR for LiRA and for the
loss attack on the same rows.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfm import assemble
from fedfm.client.app import trained_rows
from fedfm.config import ExperimentConfig
from fedfm.data.partition import Partition
from fedfm.errors import ConfigError, DataError
from fedfm.experiment import in_process_federation
from fedfm.prepared import Prepared
from fedfm.privacy.audit import (
    auc,
    audit_rows,
    lira_offline,
    logit_confidence,
    member_losses,
    tpr_at_fpr,
)
from fedfm.rundir import run_config, write_json
from fedfm.runtimes import RUNTIMES
from fedfm.server.checkpoint import latest_checkpoint
from fedfm.state import State, clone_state

log = logging.getLogger(__name__)

AUDIT = "audit.json"
ATTACKS = ("loss", "lira")
FPRS = (0.01, 0.001)  # the low false-positive rates LiRA is judged at


def figures(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, float]:
    """AUC and TPR at each of :data:`FPRS` (keys ``tpr_at_1%_fpr``, ``tpr_at_0.1%_fpr``)."""
    out = {"auc": auc(member_scores, nonmember_scores)}
    for fpr in FPRS:
        out[f"tpr_at_{fpr * 100:g}%_fpr"] = tpr_at_fpr(member_scores, nonmember_scores, fpr)
    return out


def _check(run_dir: Path, config: ExperimentConfig, attack: str, shadows: int) -> None:
    if attack not in ATTACKS:
        raise ConfigError(f"--attack = {attack!r} is not allowed; allowed: {', '.join(ATTACKS)}")
    if attack == "lira" and shadows < 2:
        raise ConfigError(f"--shadows = {shadows!r} is not allowed; allowed: ≥ 2 (a Gaussian)")
    if not (run_dir / "summary.json").is_file():
        raise DataError(f"{str(run_dir)!r} has not finished (no summary.json): finish it first")
    if not config.privacy.audit:
        raise ConfigError(
            f"privacy.audit = false in {str(run_dir)!r}: the rows its clients trained on were not "
            "recorded; rerun it with privacy.audit = true"
        )
    if config.task.type != "classification" or config.attack.type != "none":
        raise ConfigError(
            f"task.type = {config.task.type!r}, attack.type = {config.attack.type!r}: the audit "
            "scores a classification run without [attack] (allowed: 'classification', 'none')"
        )
    in_process = RUNTIMES.get(config.runtime.type).in_process
    if attack == "lira" and (not in_process or config.federation.mode != "federated"):
        raise ConfigError(
            f"LiRA trains shadow federations in this process: runtime.type = "
            f"{config.runtime.type!r}, federation.mode = {config.federation.mode!r} (allowed: an "
            "in-process runtime and mode 'federated')"
        )


def train_shadow(p: Prepared, initial: State, excluded: np.ndarray, index: int) -> State:
    """One OUT shadow: the run's federation from ``initial``, seeded anew, on the partition
    without the ``excluded`` training rows; evaluated only after its last round."""
    c = p.config
    seed = int(np.random.default_rng([c.seed, 0x5AD0, index]).integers(2**31 - 1))
    config = replace(
        c,
        seed=seed,
        federation=replace(c.federation, eval_every=c.federation.rounds),
        governance=replace(c.governance, keep_updates=False, provenance=False, contrib="none"),
    )
    part = p.partition
    rows = [np.setdiff1d(ix, excluded) for ix in part.indices]
    if any(len(r) == 0 for r in rows):
        raise DataError(
            f"a LiRA shadow would leave client {part.client_ids[[len(r) for r in rows].index(0)]!r} "
            f"without rows ({len(excluded)} audited members); audit fewer rows (--rows)"
        )
    partition = Partition(part.client_ids, rows, part.groups, [*part.notes, "LiRA shadow"])
    shadow = replace(p, config=config, partition=partition)
    p.task.set_state(clone_state(initial))
    fed = in_process_federation(shadow, [], None)
    try:
        return fed.run(clone_state(initial))
    finally:
        fed.runtime.close()


def membership_audit(
    run_dir: str | Path, attack: str = "lira", shadows: int = 4, rows: int = 0
) -> dict[str, Any]:
    """Audit a finished run (``privacy.audit = true``) with ``attack`` on up to ``rows``
    members and as many non-members (0: the run's ``audit_rows``); writes ``audit.json``."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    _check(run_dir, config, attack, shadows)
    if rows < 0 or (0 < rows < 10):
        raise ConfigError(f"--rows = {rows!r} is not allowed; allowed: 0 (the run's) or ≥ 10")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or ckpt.round != config.federation.rounds:
        raise DataError(f"{str(run_dir)!r} keeps no checkpoint of its last round")
    trained = trained_rows(ckpt.memory)
    t0 = time.perf_counter()
    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)
    p = assemble.prepare(config)
    initial = clone_state(p.task.get_state())  # the run's initial state (the task is seeded)
    wanted = rows or config.privacy.audit_rows
    if attack == "lira":  # the shadows train on the rest: leave them half the trained rows
        wanted = min(wanted, len(trained) // 2)
    members, nonmembers = audit_rows(p, wanted, config.seed, trained)
    if len(members) == 0:
        raise DataError(f"{str(run_dir)!r}: no client trained on any row; nothing to audit")
    p.task.set_state(ckpt.state)
    member_loss, nonmember_loss = member_losses(p, members, nonmembers)
    report: dict[str, Any] = {
        "attack": attack,
        "rows": len(members),
        "trained_rows": int(len(trained)),
        "loss": figures(-member_loss, -nonmember_loss),
    }
    if attack == "lira":
        target = logit_confidence(np.concatenate([member_loss, nonmember_loss]))
        out = []
        for k in range(shadows):
            state = train_shadow(p, initial, members, k)
            p.task.set_state(state)
            log.info("LiRA: shadow %d of %d trained", k + 1, shadows)
            out.append(logit_confidence(np.concatenate(member_losses(p, members, nonmembers))))
        scores = lira_offline(target, np.stack(out))
        m = len(members)
        report["lira"] = {**figures(scores[:m], scores[m:]), "shadows": shadows}
        report["shadow_description"] = (
            "the run's federation reseeded, on the clients' rows minus the audited members "
            "(offline LiRA: every shadow is OUT for every audited row)"
        )
    report["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(run_dir / AUDIT, report)
    log.info("audit: %s", json.dumps(report))
    return report
