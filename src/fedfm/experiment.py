"""``fedfm run``: run an experiment from its config and write its run directory.

The parts come from :mod:`fedfm.assemble`, the run directory's contract from
:mod:`fedfm.rundir`. An in-process runtime (``sim``, ``ray``) runs here; a runtime whose clients
are other processes (``grpc``) is launched by its own entry point (``fedfm serve``), with the
same config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfm import assemble
from fedfm.client.personal import PersonalStore
from fedfm.config import ExperimentConfig
from fedfm.errors import ConfigError, ResumeError
from fedfm.metrics.sinks import ConsoleSink, JsonlSink, Sink, report_sinks
from fedfm.prepared import Prepared
from fedfm.rundir import (
    RunResult,
    drive,
    finish,
    finished_run,
    names_run_dir,
    open_run,
    resolve_config,
    summary_base,
)
from fedfm.runtimes import RUNTIMES
from fedfm.server.continual import holding
from fedfm.server.federation import Federation
from fedfm.server.observers import check_observers
from fedfm.state import clone_state

log = logging.getLogger(__name__)

__all__ = ["RunResult", "run"]


def run(
    config: ExperimentConfig | str | Path | None = None,
    *,
    out: str | Path = "runs",
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = False,
    sinks: Sequence[Sink] = (),
) -> RunResult:
    """Run an experiment and write its run directory; returns the final figures.

    ``config`` is an :class:`ExperimentConfig`, a TOML path, or None for the built-in default.
    ``resume`` continues an interrupted run directory from its last checkpoint; ``overrides``
    then change its config (logged, and written to its config.toml). A run directory that already
    finished is returned as it is (``already_finished``), not run again.
    """
    config, ckpt = resolve_config(config, resume, overrides)
    done = finished_run(resume, config)
    if done is not None:  # nothing left to run: the run directory stays as it is
        return done
    runtime = RUNTIMES.get(config.runtime.type)
    if config.continual.on and not runtime.carries_stages:
        raise ConfigError(
            f"runtime.type = {config.runtime.type!r} does not carry [continual] stages yet; "
            f"use one of: {', '.join(RUNTIMES.names(lambda r: r.carries_stages))}"
        )
    if not runtime.in_process:  # its clients are other processes: the runtime's own entry point
        return runtime.launch(config, out=out, resume=resume, progress=progress, sinks=sinks)
    start_round = ckpt.round + 1 if ckpt is not None else 1
    if resume is not None and config.federation.mode == "standalone":
        raise ResumeError("federation.mode = 'standalone' runs cannot be resumed; start them again")

    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)
    p = assemble.prepare(config)  # data and model errors surface before anything is written
    if config.federation.mode != "standalone":  # (standalone runs keep no provenance log)
        check_observers(config)  # so does a missing signing key
    run_dir, rows = open_run(p, out, resume, start_round)
    all_sinks: list[Sink] = [ConsoleSink(enabled=progress), *sinks]
    with names_run_dir(run_dir):
        try:
            if config.federation.mode == "standalone":
                return _run_standalone(p, run_dir, all_sinks)
            fed = in_process_federation(p, all_sinks, run_dir)
            return drive(p, fed, run_dir, all_sinks, ckpt, start_round, rows)
        finally:
            for sink in all_sinks:
                sink.close()


def in_process_federation(
    p: Prepared, sinks, run_dir: Path | None, client_ids: list[str] | None = None
) -> Federation:
    """The Federation of a simulated run. ``centralized``: one pooled client doing every selected
    client's steps (the same budget on pooled data)."""
    c = p.config
    client_ids = client_ids or p.partition.client_ids
    clients_per_round = c.federation.clients_per_round
    local_steps = c.federation.local_steps
    if c.federation.mode == "centralized":
        clients_per_round, local_steps = 1, local_steps * c.federation.clients_per_round
    elif c.federation.mode == "standalone":
        clients_per_round = 1
    fed_cfg = assemble.with_local_steps(c, local_steps)
    app, local_dp = assemble.client_app(p, client_ids, fed_cfg)
    if run_dir is not None:  # what clients keep for themselves, one file each: survives resume
        app.store = PersonalStore(run_dir / "personal")
    strategy = assemble.build_strategy(p, len(client_ids), fed_cfg, local_dp)
    runtime = RUNTIMES.get(c.runtime.type)(app, config=c)
    fed = assemble.federation(
        p,
        runtime,
        client_ids,
        strategy=strategy,
        clients_per_round=clients_per_round,
        sinks=sinks,
        run_dir=run_dir,
    )
    if p.stages is not None:  # a client without rows of a round's stage sits it out
        fed.holding = holding(p.stages, app.data)
    return fed


def _run_standalone(p: Prepared, run_dir: Path, sinks) -> RunResult:
    """Each client trains alone for the whole budget; rows report the mean and worst client."""
    c = p.config
    initial = p.task.get_state()
    per_client: list[list[dict[str, Any]]] = []
    finals: list[dict[str, Any]] = []
    total_seconds = 0.0
    console = [s for s in sinks if isinstance(s, ConsoleSink)]
    for cid in p.partition.client_ids:
        log.info("standalone: training client %s alone", cid)
        fed = in_process_federation(p, console, None, [cid])
        fed.name = f"{c.name} [{cid}]"
        state = fed.run(clone_state(initial))
        per_client.append(fed.rows)
        total_seconds += fed.totals["seconds"]
        p.task.set_state(state)
        finals.append({"client": cid, **p.task.evaluate(p.test_tokens, p.test.labels)})
        for sink in sinks:
            sink.close()
    rows = []
    jsonl = JsonlSink(run_dir / "metrics.jsonl")
    for r in range(c.federation.rounds):
        client_rows = [rs[r] for rs in per_client]
        accs = [x["accuracy"] for x in client_rows if x["accuracy"] is not None]
        row = {
            "round": r + 1,
            "accuracy": float(np.mean(accs)) if accs else None,
            "accuracy_worst": float(np.min(accs)) if accs else None,
            "loss": float(np.mean([x["loss"] for x in client_rows])),
            "bytes_up": 0,
            "bytes_down": 0,
            "round_seconds": float(sum(x["round_seconds"] for x in client_rows)),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in client_rows),
            "clients": [x["clients"][0] for x in client_rows if x["clients"]],
            "tokens": int(sum(x.get("tokens", 0) for x in client_rows)),
        }
        ppl = [x["perplexity"] for x in client_rows if x.get("perplexity") is not None]
        if ppl:  # task 'lm': the mean and the worst (highest) of the clients' perplexities
            row["perplexity"], row["perplexity_worst"] = float(np.mean(ppl)), float(np.max(ppl))
        rows.append(row)
        jsonl.round(row)
    accs = [f["accuracy"] for f in finals]
    summary = {
        **summary_base(p, run_dir),
        "final_accuracy": float(np.mean(accs)),
        "final_accuracy_worst": float(np.min(accs)),
        "final_accuracy_per_client": {f["client"]: f["accuracy"] for f in finals},
        **p.task.test_counts(p.test),
        "rounds": c.federation.rounds,
        "total_seconds": round(total_seconds, 3),
        "bytes_up_total": 0,
        "bytes_down_total": 0,
        "tokens_total": int(sum(r["tokens"] for r in rows)),
    }
    if "perplexity" in finals[0]:
        ppl = [f["perplexity"] for f in finals]
        summary["final_perplexity"] = float(np.mean(ppl))
        summary["final_perplexity_worst"] = float(np.max(ppl))
        summary["final_perplexity_per_client"] = {f["client"]: f["perplexity"] for f in finals}
    report = report_sinks(c.logging.report_to, run_dir, c)  # [logging] report_to: the rows
    try:
        for sink in report:
            sink.start({"name": c.name, "rounds": c.federation.rounds, "start_round": 1})
            for row in rows:
                sink.round(row)
        return finish(run_dir, rows, summary, [*sinks, *report])
    finally:
        for sink in report:
            sink.close()
