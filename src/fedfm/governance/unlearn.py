"""Unlearning a client: a new run directory whose model never learnt from it.

``retrain`` (the gold standard) reruns the federation without the client from the checkpoint
written just before it first took part (``[governance] keep_updates`` keeps every round's; else
from round 1): the other clients keep their rounds, seeds and data, so the new run is the one
that would have happened had the client never been selected.

``replay`` (FedEraser, Liu et al. 2021) rebuilds the model from the kept updates without the
client: from the state before its first round, each later round asks the remaining clients of
that round for calibration steps (``calibration`` × the run's local steps; default 1: the
paper's 0.5 lost 1.4–7.4 accuracy points against retraining on the AG News benchmark, 1 none)
from the rebuilt state, and keeps the direction of their calibration update at the length of
the update they sent in the original run (tensor by tensor); the round's aggregate is the
example-weighted mean. It costs the calibration steps and one evaluation: no per-round
evaluation, no codecs, no checkpoints.

Both write ``--out`` (which must not exist) as a run directory: ``config.toml``, the model in
``adapter/`` (or ``model/``), ``summary.json`` and ``unlearning.json`` (what was removed, how,
from which round, the seconds it took).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedfm import assemble
from fedfm.config import ExperimentConfig, config_to_toml
from fedfm.errors import ConfigError, DataError
from fedfm.experiment import in_process_federation
from fedfm.governance.kept import UPDATES, load_round, require_kept
from fedfm.prepared import Prepared
from fedfm.rundir import drive, read_rows, run_config, summary_base, write_json
from fedfm.runtimes import RUNTIMES
from fedfm.server.checkpoint import Checkpoint, checkpoint_of_round, save_checkpoint
from fedfm.state import State

log = logging.getLogger(__name__)

UNLEARNING = "unlearning.json"
METHODS = ("retrain", "replay")


def _first_round(run_dir: Path, config: ExperimentConfig, client: str) -> int:
    """The first round ``client`` took part in (a DataError for an unknown or idle client)."""
    partition = json.loads((run_dir / "partition.json").read_text())
    known = [c["client"] for c in partition.get("clients", [])]
    if known and client not in known:
        shown = ", ".join(repr(c) for c in known[:8]) + (" …" if len(known) > 8 else "")
        raise DataError(f"--client {client!r} is not a client of {str(run_dir)!r}: {shown}")
    rows = read_rows(run_dir / "metrics.jsonl", config.federation.rounds)
    for row in rows:
        if client in row.get("clients", []):
            return int(row["round"])
    raise DataError(
        f"--client {client!r} took part in no round of {str(run_dir)!r}: nothing to unlearn"
    )


def _check(run_dir: Path, config: ExperimentConfig, out: Path) -> None:
    if not (run_dir / "summary.json").is_file():
        raise DataError(f"{str(run_dir)!r} has not finished (no summary.json): finish it first")
    if out.exists():
        raise ConfigError(
            f"--out {str(out)!r} exists; allowed: a new folder (nothing is overwritten)"
        )
    if not RUNTIMES.get(config.runtime.type).in_process or config.federation.mode != "federated":
        raise ConfigError(
            f"unlearning needs the clients' rows in this process: runtime.type = "
            f"{config.runtime.type!r}, federation.mode = {config.federation.mode!r} (allowed: "
            "an in-process runtime and mode 'federated')"
        )


def _open(out: Path, run_dir: Path, config: ExperimentConfig, start: int) -> list[dict[str, Any]]:
    """The new run directory with the rounds before ``start`` (identical: the client had not
    taken part) copied from the original; returns their rows."""
    out.mkdir(parents=True)
    (out / "config.toml").write_text(config_to_toml(config))
    shutil.copy2(run_dir / "partition.json", out / "partition.json")
    rows = read_rows(run_dir / "metrics.jsonl", start - 1)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if (run_dir / UPDATES).is_dir():
        (out / UPDATES).mkdir()
        for r in range(1, start):
            name = f"round_{r:05d}.safetensors"
            if (run_dir / UPDATES / name).is_file():
                shutil.copy2(run_dir / UPDATES / name, out / UPDATES / name)
    return rows


def retrain(run_dir: Path, client: str, out: Path, sinks=()) -> dict[str, Any]:
    """Rerun ``run_dir`` without ``client`` into ``out``; returns the new summary."""
    config = run_config(run_dir)
    _check(run_dir, config, out)
    first = _first_round(run_dir, config, client)
    ckpt = checkpoint_of_round(run_dir, first - 1) if first > 1 else None
    start = first if ckpt is not None else 1
    if first > 1 and ckpt is None:
        log.warning(
            "%s keeps no checkpoint of round %d ([governance] keep_updates keeps every "
            "round's): retraining from round 1",
            run_dir,
            first - 1,
        )
    t0 = time.perf_counter()
    p = assemble.prepare(config)
    rows = _open(out, run_dir, config, start)
    fed = in_process_federation(p, list(sinks), out)
    fed.excluded = frozenset({client})
    result = drive(p, fed, out, list(sinks), ckpt, start, rows)
    record = {
        "client": client,
        "method": "retrain",
        "source": str(run_dir),
        "first_round": first,
        "restarted_at_round": start,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return _finish(out, result.summary, record)


def _calibrated(original: State, calibration: State) -> State:
    """FedEraser's update: the calibration update's direction at the original update's length,
    tensor by tensor (a zero calibration tensor keeps the original)."""
    out: State = OrderedDict()
    for name, old in original.items():
        new = calibration[name]
        norm = float(new.norm())
        out[name] = old if norm == 0 else new * (float(old.norm()) / norm)
    return out


def rebuild(
    p: Prepared, run_dir: Path, rounds: list[int], client: str, steps: int
) -> tuple[State | None, int]:
    """FedEraser over the kept ``rounds`` (from the start of the first) without ``client``:
    the rebuilt state (None: no round) and the calibration steps the clients spent."""
    app, _ = assemble.client_app(p, p.partition.client_ids)
    strategy = assemble.build_strategy(p, len(p.partition.client_ids))
    state: State | None = None
    spent = 0
    for rnd in rounds:
        kept = load_round(run_dir, rnd)
        if state is None:
            state = kept.before
        remaining = [c for c in kept.clients if c != client]
        if not remaining:
            continue
        total = float(sum(kept.examples[c] for c in remaining))
        step = OrderedDict((n, torch.zeros_like(t, dtype=torch.float32)) for n, t in state.items())
        for c in remaining:
            instructions = replace(strategy.configure_fit(rnd, c), local_steps=steps)
            update = app.trainer.fit(c, app.index[c], state, app.data[c], instructions)
            spent += steps
            delta = OrderedDict((n, update.state[n].float() - state[n].float()) for n in state)
            for n, d in _calibrated(kept.delta(c), delta).items():
                step[n].add_(d, alpha=kept.examples[c] / total)
        state = OrderedDict((n, (state[n].float() + step[n]).to(state[n].dtype)) for n in state)
        log.info("replay: round %d rebuilt without %s (%d clients)", rnd, client, len(remaining))
    return state, spent


def replay(run_dir: Path, client: str, out: Path, calibration: float = 1.0) -> dict[str, Any]:
    """FedEraser from the kept updates of ``run_dir`` without ``client`` into ``out``."""
    if not 0 < calibration <= 1:
        raise ConfigError(f"--calibration = {calibration!r} is not allowed; allowed: 0 < c ≤ 1")
    config = run_config(run_dir)
    _check(run_dir, config, out)
    kept = require_kept(run_dir)
    first = _first_round(run_dir, config, client)
    t0 = time.perf_counter()
    steps = max(1, math.ceil(calibration * config.federation.local_steps))
    p = assemble.prepare(config)
    rows = _open(out, run_dir, config, first)
    state, calibration_steps = rebuild(p, run_dir, [r for r in kept if r >= first], client, steps)
    if state is None:
        raise DataError(f"{str(run_dir)!r} kept no round from round {first} on")
    return _export(
        p,
        out,
        state,
        rows,
        {
            "client": client,
            "method": "replay",
            "source": str(run_dir),
            "first_round": first,
            "calibration": calibration,
            "calibration_steps": calibration_steps,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )


def _export(p: Prepared, out: Path, state: State, rows, record: dict[str, Any]) -> dict[str, Any]:
    """Score, export and summarise a rebuilt state (``replay``)."""
    c = p.config
    evaluate = assemble.evaluator(p, p.eval_rows)
    metrics = evaluate(state)
    p.task.set_state(state)
    export_dir = out / ("adapter" if p.task.method.is_peft else "model")
    p.task.export(export_dir, p.train.label_names)
    summary = {
        **summary_base(p, out),
        "final_accuracy": metrics.get("accuracy"),
        "final_loss": metrics.get("loss"),
        **p.task.test_counts(p.test),
        "rounds": c.federation.rounds,
        **(
            {"final_attack_success_rate": metrics["attack_success_rate"]}
            if "attack_success_rate" in metrics
            else {}
        ),
        "export_dir": str(export_dir),
    }
    write_json(out / "summary.json", summary)
    # The rebuilt global state, as a run's last checkpoint holds it (for tools that read one).
    save_checkpoint(out, Checkpoint(c.federation.rounds, state, {}, {}, {}))
    return _finish(out, summary, record)


def _finish(out: Path, summary: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    write_json(out / UNLEARNING, record)
    summary = {**summary, "unlearned": record}
    write_json(out / "summary.json", summary)
    return summary


def unlearn(
    run_dir: str | Path, client: str, out: str | Path, method: str = "retrain", **options: Any
) -> dict[str, Any]:
    """Remove ``client`` from the model of ``run_dir`` by ``method`` into the new run
    directory ``out``; returns its summary (``unlearned`` says what was removed and how)."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not allowed; allowed: {', '.join(METHODS)}")
    run_dir, out = Path(run_dir), Path(out)
    if method == "retrain":
        return retrain(run_dir, client, out, **options)
    return replay(run_dir, client, out, **options)


__all__ = ["METHODS", "UNLEARNING", "unlearn"]
