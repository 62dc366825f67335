"""The composition root: every part of an experiment, built from its config, in one place.

``fedfm run`` (every in-process runtime), ``fedfm serve``, ``fedfm join``, the Ray workers and
``fedfm bench`` build their parts here and nowhere else::

    prepare(config)          data, partition, the task (model + method), attack and fm4fl set-up
    prepare_server(config)   the same for a network server, which holds no training rows
    client_app(prepared)     the clients' side: rows, trainer (local DP), codecs, client hooks
    node_app(config, file)   one network client's side, from its own data file
    federation(prepared)     the strategy and its wrappers, bound to the server's context, and
                             the round loop that drives them over a given runtime

Which parts apply is read from what the plug-ins declare (``Strategy.needs_root_update``,
``Method.client_preparer``, ``Attack.has_trigger``, ...), never from their names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfm.attacks import ATTACKS, malicious_clients
from fedfm.client.app import ClientApp, ClientData
from fedfm.client.personal import PERSONALIZERS
from fedfm.client.trainer import Trainer, derive_seed
from fedfm.codecs import Pipeline
from fedfm.compat import check_compatible
from fedfm.config import ExperimentConfig
from fedfm.data.partition import PARTITION_FILTERS, Partition, held_out, partition
from fedfm.data.stages import Stages
from fedfm.data.tokens import tokenize
from fedfm.errors import ConfigError, DataError
from fedfm.fm4fl.ensemble import wrap as ensemble_distillation
from fedfm.fm4fl.pseudo import apply_scarce_labels
from fedfm.fm4fl.warmup import warm_up
from fedfm.methods import METHODS, Method
from fedfm.methods.offsite import Offsite, offsite_summary
from fedfm.prepared import Prepared
from fedfm.privacy.federated import ProtectedAggregation, client_transform
from fedfm.privacy.mechanisms import mechanism
from fedfm.scoring import evaluator
from fedfm.server.asynchronous import AsyncFederation
from fedfm.server.federation import Federation
from fedfm.server.observers import observers_for
from fedfm.state import State
from fedfm.strategies import STRATEGIES, Strategy
from fedfm.strategies.base import ServerContext
from fedfm.tasks import TASKS, Task

log = logging.getLogger(__name__)


def build_method(config: ExperimentConfig) -> Method:
    return METHODS.build(config.method)


def build_task(
    config: ExperimentConfig, label_names: tuple[str, ...], emulator: bool = False
) -> Task:
    """The task of ``config`` around its method-adapted base model, with the ``[personalize]``
    rule attached (it decides which trainable tensors stay on clients: not in the state).
    Offsite-tuning: the full model with trainable ends (the server's), or with ``emulator`` the
    clients' emulator."""
    method = build_method(config)
    if config.federation.mode == "offsite":
        o = config.offsite
        method = Offsite(method, o.keep_layers, o.drop_every, emulator, config.model.name)
    task = TASKS.get(config.task.type).from_config(config, method, label_names)
    personalizer = PERSONALIZERS.get(config.personalize.method)(config.personalize)
    with torch.random.fork_rng():  # a private LoRA's init: seeded, the caller's stream untouched
        torch.manual_seed(derive_seed(config.seed, 0xD1))
        personalizer.attach(task)
    task.personalizer = personalizer
    return task


def _add_emulator(p: Prepared) -> None:
    """Offsite-tuning: the clients train the emulator; the server keeps the full model."""
    p.client_task = build_task(p.config, p.test.label_names, emulator=True)
    p.offsite = offsite_summary(p.task.method.report, len(p.partition.client_ids))


def _eval_rows(config: ExperimentConfig, test) -> np.ndarray:
    """The first rows of the test set (``data.eval_rows``; 0 = all): the same for every system."""
    n = len(test) if config.data.eval_rows == 0 else min(config.data.eval_rows, len(test))
    return np.arange(n)


def split(config: ExperimentConfig, train) -> Partition:
    """The clients' rows: ``[partition]``, or one pooled client for centralized training."""
    if config.federation.mode == "centralized":
        return Partition(
            ["pooled"], [np.arange(len(train))], notes=["centralized: all rows pooled"]
        )
    return partition(train.labels, train.columns, config.partition, config.seed)


def prepare(config: ExperimentConfig) -> Prepared:
    """Load data and model, tokenise (cached), partition, and build the task."""
    t0 = time.perf_counter()
    check_compatible(config)
    train, test = TASKS.get(config.task.type).load_splits(config)
    stages = None
    if config.continual.on:  # [continual]: label names → indices; a stage without rows is refused
        test_labels = test.labels[_eval_rows(config, test)]
        stages = Stages.resolve(config, train.label_names, train.labels, test_labels)
    part, reports = _filter_partition(config, train, split(config, train))
    task = build_task(config, train.label_names)
    loaded = time.time()
    prepared = Prepared(
        config,
        train,
        test,
        task.tokenize(train),
        task.tokenize(test),
        part,
        task,
        _eval_rows(config, test),
        time.perf_counter() - t0,
        model_loaded_at=loaded,
        dedup=reports.get("dedup"),
    )
    prepared.stages = stages
    if config.federation.mode == "offsite":
        _add_emulator(prepared)
    if config.data.labelled_fraction < 1:
        prepared.fm4fl["scarce_labels"] = apply_scarce_labels(prepared)
    if config.warmup.source != "none":
        prepared.fm4fl["warmup"] = warm_up(prepared, task.tokenizer, task.tokenizer_key)
    if config.attack.type != "none":
        _prepare_attack(prepared)
    return prepared


def _filter_partition(config: ExperimentConfig, train, part: Partition):
    """The registered partition filters (``[governance] dedup``: rows several clients hold
    leave the partition before anything trains); returns the partition and their reports."""
    reports = {}
    for name in PARTITION_FILTERS.names():
        part, report = PARTITION_FILTERS.get(name)(config, train, part)
        if report is not None:
            reports[name] = report
    return part, reports


def prepare_server(config: ExperimentConfig, client_ids: Sequence[str]) -> Prepared:
    """The server's side of :func:`prepare` over the network: test data, model, task; the
    clients hold the training rows (``train`` is the test table: only its label names and the
    empty partition are read on the server)."""
    t0 = time.perf_counter()
    kind = TASKS.get(config.task.type)
    if config.evaluation.on_server:
        test = kind.load_test(config)
    else:  # the clients evaluate: the server holds no data at all
        if kind.shares_label_set and not config.data.labels:
            raise DataError(
                f"evaluation.where = {config.evaluation.where!r}: the server holds no data, so "
                "data.labels must name the label set the clients share"
            )
        test = kind.empty_table(tuple(config.data.labels))
    task = build_task(config, test.label_names)
    loaded = time.time()
    test_tokens = task.tokenize(test) if len(test) else None
    empty = [np.zeros(0, dtype=np.int64) for _ in client_ids]
    part = Partition(list(client_ids), empty, notes=["network: every client holds its own data"])
    prepared = Prepared(
        config,
        test,
        test,
        test_tokens,
        test_tokens,
        part,
        task,
        _eval_rows(config, test),
        time.perf_counter() - t0,
        model_loaded_at=loaded,
    )
    if config.federation.mode == "offsite":
        _add_emulator(prepared)
    return prepared


def _prepare_attack(p: Prepared) -> None:
    """Choose the malicious clients; poison their data (data attacks); build the trigger test."""
    c, task = p.config, p.task
    p.attack = ATTACKS.get(c.attack.type)(c.attack, p.train.label_names)
    p.malicious = malicious_clients(p.partition.client_ids, c.attack.fraction, c.seed)
    for cid in p.malicious if p.attack.level == "data" else ():
        index = p.partition.client_ids.index(cid)
        rows = p.partition.indices[index]
        rng = np.random.default_rng([c.seed, 0xDA7A, index])
        texts, labels = p.attack.poison_data(
            [p.train.texts[i] for i in rows], p.train.labels[rows], rng
        )
        tokens = tokenize(texts, task.tokenizer, task.tokenizer_key, c.data.max_length)
        p.poisoned[cid] = ClientData(tokens, labels, np.arange(len(texts)))
    if p.attack.has_trigger:
        n_eval = len(p.eval_rows)
        texts, labels = p.attack.triggered_test(
            p.test.texts[:n_eval], p.test.labels[:n_eval], c.seed
        )
        tokens = tokenize(texts, task.tokenizer, task.tokenizer_key, c.data.max_length)
        p.triggered = (tokens, labels)


def pipelines(config: ExperimentConfig) -> tuple[Pipeline, Pipeline]:
    """The (downlink, uplink) codec pipelines."""
    return Pipeline(config.codec.down, "codec.down"), Pipeline(config.codec.up, "codec.up")


def trainer(config: ExperimentConfig, task: Task, local_dp=None) -> Trainer:
    f = config.federation
    return Trainer(task, f.optimizer, f.weight_decay, config.seed, f.length_grouping, local_dp)


def _client_app(
    config: ExperimentConfig,
    task: Task,
    data: dict[str, ClientData],
    positions: dict[str, int],
    local_dp=None,
) -> ClientApp:
    """What a simulated and a network client share: trainer, codecs, the method's preparer and
    distributed-DP noise. ``positions``: each client's index among the federation's clients."""
    down, up = pipelines(config)
    app = ClientApp(
        trainer(config, task, local_dp), data, down, up, task.get_state(), task.personalizer
    )
    app.index = {cid: positions.get(cid, i) for i, cid in enumerate(data)}
    preparer = build_method(config).client_preparer(positions)
    if preparer is not None:
        app.prepare.append(preparer)
    return app


def _add_distributed_noise(
    app: ClientApp, config, num_clients: int, secure_noise: bool = False
) -> None:
    """Distributed DP: each client clips its delta, then adds its share of the noise."""
    if mechanism(config).client_noise:
        num_params = app.trainer.task.num_params()[0]
        app.transforms.append(
            client_transform(config, app.index, num_clients, num_params, secure_noise)
        )


def client_app(p: Prepared, client_ids: Sequence[str], federation=None) -> tuple[ClientApp, Any]:
    """The clients' side of an experiment: their rows, the trainer (with local DP), the codec
    pipelines and the client hooks (the method's preparer, update attacks, distributed DP).

    Returns the app and the local-DP object (None without ``dp = 'local'``). Runtimes that run
    clients elsewhere (Ray actors) call this on their own :func:`prepare` of the same config.
    """
    c = p.config
    part = p.partition
    data = {
        cid: ClientData(p.train_tokens, p.train.labels, part.indices[part.client_ids.index(cid)])
        for cid in client_ids
    }
    data.update({cid: d for cid, d in p.poisoned.items() if cid in data})
    positions = {cid: i for i, cid in enumerate(part.client_ids)}
    data, held_out = _hold_out(c, data, positions)
    local_dp = None
    if mechanism(c).example_level:
        from fedfm.privacy.local import LocalDP  # imports opacus: only dp = 'local' loads it

        local_dp = LocalDP.for_clients(c.privacy, federation or c.federation, data)
    app = _client_app(c, p.client_task or p.task, data, positions, local_dp)
    app.held_out = held_out
    app.stages = p.stages  # [continual]: each round trains its stage's rows (None: all rows)
    if c.privacy.audit:  # the audit's members: the rows clients actually trained on
        app.trainer.seen = {}
    app.index = {cid: i for i, cid in enumerate(client_ids)}  # seeds follow the app's clients
    if p.attack is not None and p.attack.level == "update" and p.malicious:
        app.transforms.append(_update_attack(p, list(client_ids)))
    _add_distributed_noise(app, c, len(client_ids))  # after the attack: a malicious client clips
    return app, local_dp


def node_app(
    config: ExperimentConfig,
    train_file: str | Path,
    client_id: str,
    client_index: int,
    reproducible_noise: bool = False,
) -> ClientApp:
    """One network client (``fedfm join``): its own file read with the server's columns and
    labels, the model, and the same client app a simulated client with that index has.

    Its DP noise comes from a CSPRNG keyed in this process, unless ``reproducible_noise``: then
    from the experiment's seed, as in the simulation (the server can recompute it).

    A file without the configured columns, or with labels outside the server's label set, fails
    here with a :class:`DataError`, before any training.
    """
    kind = TASKS.get(config.task.type)
    table = kind.load_client_rows(config, Path(train_file), "--data")
    if len(table) < 1:
        raise DataError(f"--data {str(train_file)!r} has no rows")
    task = build_task(config, tuple(config.data.labels) or table.label_names, emulator=True)
    rows = ClientData(task.tokenize(table), table.labels, np.arange(len(table)))
    positions = {client_id: client_index}  # the server's index: same seeds as in simulation
    data, held_out = _hold_out(config, {client_id: rows}, positions)
    app = _client_app(config, task, data, positions)
    app.held_out = held_out
    if mechanism(config).client_noise:
        if config.privacy.noise_multiplier <= 0:
            raise ConfigError(
                "privacy.dp = 'distributed': the server's experiment carries no resolved "
                "privacy.noise_multiplier"
            )
        # σ is given: the sampling rate does not matter.
        _add_distributed_noise(
            app, config, config.federation.clients_per_round, not reproducible_noise
        )
    log.info(
        "client %s: %d rows of %s, task %s, model %s",
        client_id,
        len(table),
        train_file,
        config.task.type,
        config.model.name,
    )
    return app


def _hold_out(
    config: ExperimentConfig, data: dict[str, ClientData], positions: dict[str, int]
) -> tuple[dict[str, ClientData], dict[str, ClientData]]:
    """(training rows, held-out rows) per client: ``evaluation.client_split`` of each client's
    rows, drawn with its position, are never trained on (federated evaluation scores them)."""
    share = config.evaluation.client_split
    if share <= 0:
        return data, {}
    train, held = {}, {}
    for cid, d in data.items():
        keep, out = held_out(len(d.rows), share, config.seed, positions.get(cid, 0))
        train[cid] = ClientData(d.tokens, d.labels, d.rows[keep])
        held[cid] = ClientData(d.tokens, d.labels, d.rows[out])
    return train, held


def _update_attack(p: Prepared, client_ids: list[str]):
    """A ClientApp transform: malicious clients replace their trained state (update attacks)."""
    malicious = set(p.malicious)

    def transform(client_id: str, rnd: int, trained: State, received: State) -> State:
        if client_id not in malicious:
            return trained
        generator = torch.Generator().manual_seed(
            derive_seed(p.config.seed, rnd, client_ids.index(client_id), 0xA77)
        )
        return p.attack.poison_update(trained, received, generator)

    return transform


def _root_update(p: Prepared, strategy: Strategy, server: Trainer, num_clients: int):
    """FLTrust's root update: the server trains on a small clean root set of training rows."""
    c = p.config
    rng = np.random.default_rng([c.seed, 0x2007])
    size = min(c.strategy.root_rows, len(p.train))
    root_rows = np.sort(rng.choice(len(p.train), size=size, replace=False))
    root = ClientData(p.train_tokens, p.train.labels, root_rows)

    def root_update(rnd: int, global_state: State) -> State:
        instructions = strategy.configure_fit(rnd, "server")
        return server.fit("server", num_clients, global_state, root, instructions).state

    return root_update


def build_strategy(p: Prepared, num_clients: int, federation=None, local_dp=None) -> Strategy:
    """The configured strategy, behind privacy and FedDF wrappers, bound to its context."""
    c = p.config
    strategy = STRATEGIES.build(c.strategy, federation or c.federation)
    if mechanism(c).protects or c.secagg.enabled:
        strategy = ProtectedAggregation(strategy, c, num_clients, local_dp)
    server = trainer(c, p.task)  # the server's own training (root set, distillation)
    context = ServerContext(seed=c.seed)
    if strategy.needs_root_update:
        context.root_update = _root_update(p, strategy, server, num_clients)
    strategy.bind(context)
    if c.warmup.ensemble_steps:  # FedDF: distil the round's client ensemble into the aggregate
        strategy = ensemble_distillation(strategy, server, c)
    return strategy


def federation(
    p: Prepared,
    runtime,
    client_ids: Sequence[str],
    *,
    strategy: Strategy | None = None,
    clients_per_round: int | None = None,
    sinks=(),
    run_dir: Path | None = None,
) -> Federation:
    """The round loop over ``runtime`` (synchronous, or asynchronous when the strategy says so)."""
    c = p.config
    strategy = strategy or build_strategy(p, len(client_ids))
    down, up = pipelines(c)
    loop = AsyncFederation if strategy.asynchronous else Federation
    return loop(
        strategy=strategy,
        runtime=runtime,
        client_ids=list(client_ids),
        clients_per_round=clients_per_round or c.federation.clients_per_round,
        rounds=c.federation.rounds,
        evaluate=evaluator(p, p.eval_rows) if c.evaluation.on_server else None,
        eval_every=c.federation.eval_every,
        evaluate_on_clients=c.evaluation.on_clients,
        down=down,
        up=up,
        seed=c.seed,
        sinks=sinks,
        run_dir=run_dir,
        name=c.name,
        dropout=c.federation.dropout,
        limits=c.limits,
        observers=observers_for(p, run_dir),  # [governance]: kept updates, provenance, ...
        # unlearning by retraining restarts from the round before a client first took part
        keep_checkpoints=0 if c.governance.keep_updates else 2,
    )


def with_local_steps(config: ExperimentConfig, local_steps: int):
    """The federation section with another local budget (centralized: every client's steps)."""
    return replace(config.federation, local_steps=local_steps)
