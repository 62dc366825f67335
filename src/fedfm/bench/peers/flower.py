"""Flower (``flwr[simulation]`` 1.42, Message API) as a benchmarked system.

The scenario is written the way a Flower user writes it, after Flower's own examples
(``examples/quickstart-pytorch``, ``quickstart-huggingface`` and ``flowertune-llm``):

* a :class:`~flwr.clientapp.ClientApp` whose ``@app.train()`` handler builds the model inside
  the call (``AutoModel`` + peft LoRA + a linear head on mean-pooled states), loads the
  received ``ArrayRecord``, runs ``local_steps`` AdamW steps in fp32 over a shuffled
  ``DataLoader`` (dynamic padding with ``DataCollatorWithPadding``) and replies with the
  trainable arrays and ``num-examples``;
* a :class:`~flwr.serverapp.ServerApp` whose ``@app.main()`` builds the initial model, then runs
  Flower's built-in :class:`~flwr.serverapp.strategy.FedAvg` through ``strategy.start`` with
  a centralised ``evaluate_fn`` on the first ``data.eval_rows`` test rows;
* both run by :func:`flwr.simulation.run_simulation` on Flower's Ray backend with Flower's
  default client resources (2 CPUs and no GPU per ``ClientApp``).

fedfm is used only to read the same rows and to compute the same client split (node
``partition-id`` *i* trains on fedfm's client *i*). Only the trainable tensors (LoRA + head)
travel, as on the fedfm side.

Measurement only: a thin :class:`FedAvg` subclass records when each round starts (in
``configure_train``) and the bytes each way, counted as Flower's own ``message_size_mod`` counts
them (``count_bytes()`` of every record of each message: the serialised ``.npy`` bytes of each
array plus its key, and the config/metric entries); the round ends when the central
evaluation of that round is done.

This module is the entry point (:func:`run`); the task code is in :mod:`.flower_task`, the
Flower apps in :mod:`.flower_apps`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from fedfm.bench.peers.flower_apps import client_app, server_app
from fedfm.bench.peers.flower_task import Setup
from fedfm.config import resolve_path
from fedfm.data.table import load_labelled_text
from fedfm.tasks.models import resolve_model

# Set before flwr and ray are imported (both read some of these at import time); Ray's
# processes inherit them. Nothing may reach beyond loopback.
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",  # Flower posts run events to its telemetry server otherwise
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # With Ray "cluster" support on (the Linux default), Ray finds its node address by routing
    # a UDP socket towards 8.8.8.8; off, it uses the loopback address for everything.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # no GPUs; silences Ray's FutureWarning about it
}

# Expected Flower warnings that would only clutter the bench's output (kept in the notes).
_EXPECTED_WARNINGS = (
    "`run_simulation` function is deprecated",
    "fraction_evaluate is set to 0.0",
)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _EXPECTED_WARNINGS)


def run(config, recorder) -> None:
    """Run the scenario of ``config`` through Flower's simulation and fill ``recorder``."""
    os.environ.update(QUIET_ENV)  # before flwr and ray are imported

    import ray
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(_DropExpected())

    f, d = config.federation, config.data
    if f.optimizer != "adamw":
        raise ValueError(f"the Flower peer trains with AdamW, not {f.optimizer!r}")
    train_path = str(resolve_path(d.train))
    labels = load_labelled_text(
        resolve_path(d.train), d.text_column, d.label_column, None, d.train_rows
    ).label_names
    spec = config.method
    setup = Setup(
        model_path=resolve_model(config.model.name),
        train_path=train_path,
        text_column=d.text_column,
        label_column=d.label_column,
        train_rows=d.train_rows,
        max_length=d.max_length,
        partition=config.partition,
        seed=config.seed,
        lora_r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=tuple(spec.target_modules),
        label_names=labels,
    )

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores < 2:  # Flower's pool would hold no actor, and the ServerApp would wait forever
        raise RuntimeError(
            f"Flower's default client resources need 2 CPUs per ClientApp; this machine has {cores}"
        )
    ray_dir = tempfile.mkdtemp(prefix="fedfm-ray-")
    backend_config = {
        # ray.init arguments: a fresh single-node instance on this machine's cores, on loopback
        "init_args": {
            "address": "local",  # never attach to another Ray instance found on the machine
            "num_cpus": cores,
            "num_gpus": 0,
            "include_dashboard": False,
            "_temp_dir": ray_dir,
            "logging_level": "ERROR",
            "log_to_driver": True,  # the actors' errors still reach our stderr
        },
        # "client_resources" unset: Flower's default, 2 CPUs and no GPU per ClientApp
    }
    outcome: dict[str, Any] = {}
    recorder.set(
        "flower",
        {
            "flwr": _version("flwr"),
            "ray": ray.__version__,
            "ray_num_cpus": cores,
            "client_resources": "Flower default: num_cpus=2, num_gpus=0",
            "parallel_clientapps": cores // 2,
        },
    )
    try:
        run_simulation(
            server_app=server_app(config, setup, str(resolve_path(d.test)), recorder, outcome),
            client_app=client_app(setup),
            num_supernodes=config.partition.clients,
            backend_config=backend_config,
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)

    if "accuracy" not in outcome:
        raise RuntimeError("the Flower ServerApp finished without evaluating a round")
    recorder.set("server_done", outcome.get("server_done"))
    recorder.set("flower_train_metrics", outcome.get("train_metrics", {}))
    # per round, each client as it ran: seconds from round start to its handler's start
    # (the first one of round 1 includes Ray's start-up), to build the model, to train
    recorder.set("flower_clients", outcome.get("clients", {}))
    recorder.note(
        "bytes: Flower's message_size_mod count (count_bytes() of every record of each "
        "message: .npy-serialised arrays + keys, config/metric entries); down = all "
        f"messages to the sampled nodes, up = all replies (the ArrayRecord alone is "
        f"{outcome.get('arrays_bytes', 0)} bytes per message)"
    )
    recorder.note(
        "Flower runs run_simulation (deprecated in flwr 1.42 in favour of `flwr run`) on the "
        f"Ray backend: {cores} CPUs, Flower's default client resources (2 CPUs, 0 GPUs per "
        "ClientApp), so at most "
        f"{cores // 2} ClientApp(s) at a time; each train call rebuilds the model"
    )
    recorder.note(
        "seeds: initial model, client batches and dropout from config.seed; node sampling "
        "is random.sample over Flower's node ids, which are random 64-bit ids held in a set, "
        "so which partitions train in a round is not reproducible even with random.seed"
    )
    recorder.note("precision: fp32, no autocast (as Flower's examples train)")
    recorder.finish(outcome["accuracy"])


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
