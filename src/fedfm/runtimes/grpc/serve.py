"""``fedfm serve``: the same Federation, with clients that are other processes on other machines.

The server holds the test data (for evaluation) and the model; clients hold their training data
and join with ``fedfm join``. Any registered task runs this way. The server writes the same run
directory as a simulated run, plus ``server.sqlite`` (clients, rounds, received updates, events)
and ``updates/``. ``--resume`` continues after a crash from the last round checkpoint.

``[runtime] type = "grpc"`` names this runtime: ``fedfm run`` with it serves the experiment.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from fedfm import assemble
from fedfm.codecs import evaluation
from fedfm.compat import check_network
from fedfm.config import (
    ExperimentConfig,
    LoggingConfig,
    PluginsConfig,
    ServerConfig,
    config_to_toml,
)
from fedfm.metrics.sinks import ConsoleSink, Sink
from fedfm.privacy.mechanisms import mechanism
from fedfm.privacy.secagg import STAGES, max_message_bytes, secagg_ring
from fedfm.rundir import (
    RunResult,
    drive,
    finished_run,
    names_run_dir,
    open_run,
    resolve_config,
)
from fedfm.runtimes.base import RUNTIMES
from fedfm.runtimes.grpc.auth import ClientRegistry
from fedfm.runtimes.grpc.server import GrpcRuntime
from fedfm.runtimes.grpc.store import ServerStore
from fedfm.server.observers import check_observers
from fedfm.tasks import TASKS

log = logging.getLogger(__name__)


@RUNTIMES.register("grpc")
class ServedRuntime(GrpcRuntime):
    """The gRPC server runtime as ``[runtime] type = "grpc"``: clients join over the network."""

    in_process = False

    @classmethod
    def launch(cls, config, **options) -> RunResult:
        return serve(config, **options)


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
    on_start=None,
) -> RunResult:
    """Serve an experiment to network clients until its last round; returns the final figures.

    ``ready(port)`` is called once the server listens (tests use it with port 0);
    ``on_start(run_dir, live_status)`` then, with the run directory and a callable returning
    what only the server knows now (the connected clients; the dashboard shows it).
    """
    config, ckpt = resolve_config(config, resume, overrides)
    done = finished_run(resume, config)
    if done is not None:
        return done
    start_round = ckpt.round + 1 if ckpt is not None else 1
    if address is not None:
        config = replace(config, server=replace(config.server, address=address))
    config = replace(config, runtime=replace(config.runtime, type="grpc"))
    check_network(config)  # before anything is loaded or written
    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)

    base = Path.cwd()
    clients = ClientRegistry(resolve_token_path(config.server.tokens_file, base))
    p = assemble.prepare_server(config, list(clients.order))
    if TASKS.get(config.task.type).shares_label_set:
        # Clients learn the label set from the config the server sends them.
        labels = tuple(p.test.label_names)
        config = replace(config, data=replace(config.data, labels=labels))
        p.config = config
    check_observers(config)  # a missing signing key stops us before anything is written
    run_dir, rows = open_run(p, out, resume, start_round)

    c = config
    strategy = assemble.build_strategy(p, len(clients.order))
    client_privacy = c.privacy
    if mechanism(c).client_noise:  # clients add noise for σ as the server resolved it
        sigma = strategy.noise_multiplier
        client_privacy = replace(c.privacy, noise_multiplier=sigma, target_epsilon=0.0)
    down, up = assemble.pipelines(c)
    # What a joining client receives: the experiment without the server's own settings (its
    # [server] section, its aggregation rule and its plug-in modules, which clients never run).
    client_config = config_to_toml(
        replace(
            c,
            server=ServerConfig(),
            privacy=client_privacy,
            strategy=ExperimentConfig().strategy,
            plugins=PluginsConfig(),
            logging=LoggingConfig(),  # sinks are the server's (a custom one is in its plug-ins)
        )
    )
    min_clients = c.server.min_clients or c.federation.clients_per_round
    runtime = ServedRuntime(
        c.server,
        clients,
        ServerStore(run_dir),
        client_config,
        c.name,
        down.stateful,
        min_clients,
        base,
        upload_limits(c, up, p.task.get_state(), len(clients.order)),
    )
    if ready is not None:
        ready(runtime.port)
    if on_start is not None:
        on_start(run_dir, runtime.live_status)
    all_sinks: list[Sink] = [ConsoleSink(enabled=progress), *sinks]
    fed = assemble.federation(
        p, runtime, list(clients.order), strategy=strategy, sinks=list(all_sinks), run_dir=run_dir
    )
    with names_run_dir(run_dir):
        try:
            return drive(p, fed, run_dir, all_sinks, ckpt, start_round, rows)
        finally:
            for sink in all_sinks:
                sink.close()


def upload_limits(config, up, template, clients: int) -> dict[str, int]:
    """The largest upload of each stage, from the model's layout and the codec chain (an update),
    the protocol's message sizes (secure aggregation) and the evaluation answer's bound."""
    limits = {"": up.max_payload_bytes(template), "evaluate": evaluation.MAX_RESULT_BYTES}
    if config.secagg.enabled:
        dimension = sum(t.numel() for t in template.values()) + 2  # + w·loss, w
        modulus_bits = secagg_ring(config, dimension - 2)[0]
        for stage in STAGES:
            limits[stage] = max_message_bytes(stage, dimension, clients, modulus_bits)
    return limits


def resolve_token_path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
