"""``fedfm serve``: the same Federation, with clients that are other processes on other machines.

The server holds the test data (for evaluation) and the model; clients hold their training data
and join with ``fedfm join``. It writes the same run directory as a simulated run, plus
``server.sqlite`` (clients, rounds, received updates, events) and ``updates/``. ``--resume``
continues after a crash from the last round checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedfm.config import ExperimentConfig, ServerConfig, config_to_toml, resolve_path
from fedfm.data.partition import Partition
from fedfm.data.table import load_labelled_text
from fedfm.data.tokens import tokenize
from fedfm.errors import ConfigError
from fedfm.experiment import (
    Prepared,
    RunResult,
    _evaluator,
    _read_rows,
    _unique_run_dir,
    _write_json,
    drive,
    resolve_config,
)
from fedfm.methods import METHODS
from fedfm.metrics.sinks import ConsoleSink, Sink
from fedfm.registry import spec_name
from fedfm.server.asynchronous import AsyncFederation
from fedfm.server.federation import Federation
from fedfm.server.store import ServerStore
from fedfm.strategies import STRATEGIES
from fedfm.tasks.classification import ClassificationTask
from fedfm.tasks.models import load_encoder, tokenizer_key

log = logging.getLogger(__name__)


def check_servable(config: ExperimentConfig) -> None:
    """Refuse what the network runtime cannot honour yet, before anything is loaded."""
    from fedfm.privacy.federated import check_compatible

    check_compatible(config)
    s = config.server
    if not s.tokens_file:
        raise ConfigError(
            "server.tokens_file is empty: the server needs the list of allowed clients "
            "(one 'client_id token' per line)"
        )
    if config.federation.mode != "federated":
        raise ConfigError(
            f"federation.mode = {config.federation.mode!r}: only 'federated' runs over the network"
        )
    refusals = [
        (config.privacy.dp == "local", "privacy.dp = 'local'", "example-level DP-SGD"),
        (config.task.type != "classification", f"task.type = {config.task.type!r}", "this task"),
        (config.attack.type != "none", f"attack.type = {config.attack.type!r}", "attacks"),
        (config.privacy.audit, "privacy.audit = true", "the membership audit"),
        (spec_name(config.strategy) == "fltrust", "strategy fltrust", "FLTrust"),
        (config.warmup.source != "none", f"warmup.source = {config.warmup.source!r}", "warm-up"),
        (config.warmup.ensemble_steps > 0, "warmup.ensemble_steps > 0", "FedDF distillation"),
        (config.teacher.type != "none", f"teacher.type = {config.teacher.type!r}", "a teacher"),
        (config.data.labelled_fraction < 1, "data.labelled_fraction < 1", "scarce labels"),
    ]
    for bad, key, what in refusals:
        if bad:
            raise ConfigError(
                f"{key}: {what} is simulation-only for now; the network runtime does not "
                "run it yet (use fedfm run)"
            )


def _server_prepared(config: ExperimentConfig, client_ids: list[str]) -> Prepared:
    """The server's side of ``prepare``: test data, model, task; clients hold the training rows."""
    t0 = time.perf_counter()
    d = config.data
    test = load_labelled_text(
        resolve_path(d.test),
        d.text_column,
        d.label_column,
        d.labels or None,
        d.test_rows,
        "data.test",
    )
    m = config.model
    tokenizer, encoder = load_encoder(m.name, m.init, m.layers, config.seed)
    loaded = time.time()
    key = tokenizer_key(config.model.name, tokenizer)
    test_tokens = tokenize(test.texts, tokenizer, key, d.max_length)
    method = METHODS.of(config.method)(config.method)
    task = ClassificationTask(
        tokenizer, encoder, method, len(test.label_names), config.seed, config.federation.precision
    )
    n_eval = len(test) if d.eval_rows == 0 else min(d.eval_rows, len(test))
    empty = [np.zeros(0, dtype=np.int64) for _ in client_ids]
    part = Partition(list(client_ids), empty, notes=["network: every client holds its own data"])
    # The server holds no training rows: ``train`` is the test table (only its label names and
    # the empty partition are read on the server).
    return Prepared(
        config,
        test,
        test,
        test_tokens,
        test_tokens,
        part,
        task,
        np.arange(n_eval),
        time.perf_counter() - t0,
        model_loaded_at=loaded,
    )


def serve(
    config: ExperimentConfig | str | Path | None = None,
    *,
    address: str | None = None,
    out: str | Path = "runs",
    resume: str | Path | None = None,
    overrides=(),
    progress: bool = False,
    sinks: list[Sink] | tuple = (),
    ready=None,
) -> RunResult:
    """Serve an experiment to network clients until its last round; returns the final figures.

    ``ready(port)`` is called once the server listens (tests use it with port 0).
    """
    from fedfm.runtimes.grpc.auth import ClientRegistry
    from fedfm.runtimes.grpc.server import GrpcRuntime

    config, ckpt = resolve_config(config, resume, overrides)
    start_round = ckpt.round + 1 if ckpt is not None else 1
    if resume is not None:
        run_dir = Path(resume)
    if address is not None:
        config = replace(config, server=replace(config.server, address=address))
    config = replace(config, runtime=replace(config.runtime, type="grpc"))
    check_servable(config)
    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)

    base = Path.cwd()
    registry = ClientRegistry(resolve_token_path(config.server.tokens_file, base))
    p = _server_prepared(config, list(registry.order))
    # Clients learn the label set from the config the server sends them.
    config = replace(config, data=replace(config.data, labels=tuple(p.test.label_names)))
    p.config = config
    if resume is None:
        run_dir = _unique_run_dir(Path(out), config.name)
        (run_dir / "config.toml").write_text(config_to_toml(config))
    log.info("run directory: %s", run_dir)
    _write_json(run_dir / "partition.json", p.partition.describe(p.test.labels, p.test.label_names))

    c = config
    strategy = STRATEGIES.of(c.strategy)(c.strategy, c.federation)
    client_privacy = c.privacy
    if c.privacy.dp != "none" or c.secagg.enabled:
        from fedfm.privacy.federated import ProtectedAggregation

        strategy = ProtectedAggregation(strategy, c, len(registry.order))
        if c.privacy.dp == "distributed":  # clients add noise for σ as the server resolved it
            sigma = strategy.noise_multiplier
            client_privacy = replace(c.privacy, noise_multiplier=sigma, target_epsilon=0.0)
    from fedfm.codecs import Pipeline

    down, up = Pipeline(c.codec.down, "codec.down"), Pipeline(c.codec.up, "codec.up")
    # What a joining client receives: the experiment without the server's own settings.
    client_config = config_to_toml(replace(c, server=ServerConfig(), privacy=client_privacy))
    min_clients = c.server.min_clients or c.federation.clients_per_round
    runtime = GrpcRuntime(
        c.server,
        registry,
        ServerStore(run_dir),
        client_config,
        c.name,
        down.stateful,
        min_clients,
        base,
    )
    if ready is not None:
        ready(runtime.port)
    federation = AsyncFederation if getattr(strategy, "asynchronous", False) else Federation
    fed = federation(
        strategy=strategy,
        runtime=runtime,
        client_ids=list(registry.order),
        clients_per_round=c.federation.clients_per_round,
        rounds=c.federation.rounds,
        evaluate=_evaluator(p, p.eval_rows),
        eval_every=c.federation.eval_every,
        down=down,
        up=up,
        seed=c.seed,
        run_dir=run_dir,
        name=c.name,
        dropout=c.federation.dropout,
    )
    all_sinks: list[Sink] = [ConsoleSink(enabled=progress), *sinks]
    fed.sinks = list(all_sinks)
    rows = _read_rows(run_dir / "metrics.jsonl", start_round - 1)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        return drive(p, fed, run_dir, all_sinks, ckpt, start_round, rows)
    finally:
        for sink in all_sinks:
            sink.close()


def resolve_token_path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
