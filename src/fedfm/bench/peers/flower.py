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
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

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

# The reply record that carries per-client timings for the bench (not part of the user's app)
TIMING = "bench-timing"

# Expected Flower warnings that would only clutter the bench's output (kept in the notes).
_EXPECTED_WARNINGS = (
    "`run_simulation` function is deprecated",
    "fraction_evaluate is set to 0.0",
)


@dataclass(frozen=True)
class Setup:
    """What the ClientApp needs besides the message: shipped to the Ray actors (picklable)."""

    model_path: str
    train_path: str
    text_column: str
    label_column: str
    train_rows: int
    max_length: int
    partition: Any  # fedfm PartitionConfig
    seed: int
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...]
    label_names: tuple[str, ...]


# ------------------------------------------------------------------------------------------
# The user's task code (model, data, train, test)


class Classifier(nn.Module):
    """encoder → mean over real tokens → linear head (as the fedfm and plain peers)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))


def get_model(setup: Setup, seed: int | None = None):
    """``(tokenizer, Classifier)``: the frozen encoder with LoRA on the target modules + head.

    ``seed`` seeds LoRA's A and the head right after the encoder is loaded (as fedfm does).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()  # as the Hugging Face example: no advisory warnings
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(setup.model_path)
    encoder = AutoModel.from_pretrained(setup.model_path)
    if seed is not None:
        torch.manual_seed(seed)
    lora = LoraConfig(
        r=setup.lora_r,
        lora_alpha=setup.lora_alpha,
        lora_dropout=setup.lora_dropout,
        target_modules=list(setup.target_modules),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = Classifier(
            get_peft_model(encoder, lora), encoder.config.hidden_size, len(setup.label_names)
        )
    return tokenizer, model


def trainable_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The tensors that train and travel: LoRA A/B and the head."""
    return OrderedDict((n, p.detach()) for n, p in model.named_parameters() if p.requires_grad)


def set_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load received arrays into the trainable tensors; every one must be there."""
    result = model.load_state_dict(state, strict=False)
    missing = set(trainable_state(model)) - set(state)
    if result.unexpected_keys or missing:
        raise ValueError(
            f"received arrays do not match the model: unexpected {result.unexpected_keys[:3]}, "
            f"missing {sorted(missing)[:3]}"
        )


def tokenized_dataset(tokenizer, texts: list[str], labels: np.ndarray, max_length: int) -> list:
    """Examples for a DataLoader with ``DataCollatorWithPadding`` (padding per batch)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": int(y)}
        for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)
    ]


_TRAIN_CACHE: dict[Setup, tuple[list[str], np.ndarray, list[np.ndarray]]] = {}


def load_partition(setup: Setup, partition_id: int) -> tuple[list[str], np.ndarray]:
    """This node's training rows; the table and split are cached per process (like ``fds``)."""
    if setup not in _TRAIN_CACHE:
        from pathlib import Path

        from fedfm.data.partition import partition
        from fedfm.data.table import load_labelled_text

        train = load_labelled_text(
            Path(setup.train_path), setup.text_column, setup.label_column, None, setup.train_rows
        )
        clients = partition(train.labels, train.columns, setup.partition, setup.seed).indices
        _TRAIN_CACHE[setup] = (train.texts, train.labels, clients)
    texts, labels, clients = _TRAIN_CACHE[setup]
    rows = clients[partition_id]
    return [texts[i] for i in rows], labels[rows]


def train_fn(model: nn.Module, trainloader, steps: int, lr: float, weight_decay: float) -> float:
    """``steps`` AdamW steps in fp32 over the shuffled loader (restarted if it runs out)."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    model.train()
    losses: list[float] = []
    while len(losses) < steps:
        for batch in trainloader:
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss = F.cross_entropy(logits, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return float(np.mean(losses))


def test_fn(model: nn.Module, testloader) -> tuple[float, float]:
    """``(loss, accuracy)`` over the loader."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    with torch.inference_mode():
        for batch in testloader:
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            n += len(batch["labels"])
    return loss / n, correct / n


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# ------------------------------------------------------------------------------------------
# Flower apps


def client_app(setup: Setup):
    """The ClientApp: one ``train`` handler (evaluation is centralised on the server)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train the received model on this node's partition."""
        from transformers import DataCollatorWithPadding

        started = time.time()
        partition_id = int(context.node_config["partition-id"])
        config = msg.content["config"]
        server_round = int(config["server-round"])
        seed = _seed_for(int(config["seed"]), server_round, partition_id)
        torch.manual_seed(seed)  # LoRA dropout, encoder dropout

        # Load the model and initialise it with the received weights
        tokenizer, model = get_model(setup)
        set_trainable_state(model, msg.content["arrays"].to_torch_state_dict())
        model_ready = time.time()

        # Load the data
        texts, labels = load_partition(setup, partition_id)
        trainloader = torch.utils.data.DataLoader(
            tokenized_dataset(tokenizer, texts, labels, setup.max_length),
            batch_size=int(config["batch-size"]),
            shuffle=True,
            collate_fn=DataCollatorWithPadding(tokenizer),
            generator=torch.Generator().manual_seed(seed),
        )
        steps = int(config["local-steps"])
        if float(config["local-epochs"]) > 0:
            steps = max(1, math.ceil(float(config["local-epochs"]) * len(trainloader)))

        train_loss = train_fn(
            model, trainloader, steps, float(config["lr"]), float(config["weight-decay"])
        )

        # Construct and return the reply Message
        content = RecordDict(
            {
                "arrays": ArrayRecord(trainable_state(model)),
                "metrics": MetricRecord(
                    {"train_loss": train_loss, "num-examples": len(trainloader.dataset)}
                ),
                # bench instrumentation, not counted in the bytes
                TIMING: ConfigRecord(
                    {
                        "partition-id": partition_id,
                        "started": started,
                        "model-seconds": model_ready - started,
                        "train-seconds": time.time() - model_ready,
                    }
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def _message_bytes(msg) -> int:
    """A message's size as Flower's ``message_size_mod`` counts it (less our timing record)."""
    return sum(record.count_bytes() for key, record in msg.content.items() if key != TIMING)


def _recording_fedavg(recorder, **kwargs):
    """Flower's FedAvg, plus the round's start time and bytes; fails loudly on client errors."""
    from flwr.serverapp.strategy import FedAvg

    class RecordingFedAvg(FedAvg):
        def __init__(self) -> None:
            super().__init__(**kwargs)
            self.started: dict[int, float] = {}
            self.bytes: dict[int, dict[str, int]] = {}
            self.arrays_bytes: dict[int, int] = {}
            self.sent: dict[int, int] = {}
            self.clients: dict[int, list[dict[str, float]]] = {}

        def configure_train(self, server_round, arrays, config, grid):
            self.started[server_round] = time.time()
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self.sent[server_round] = len(messages)
            self.arrays_bytes[server_round] = arrays.count_bytes()
            self.bytes[server_round] = {
                "up": 0,
                "down": sum(_message_bytes(m) for m in messages),
            }
            return messages

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            errors = [m.error.reason for m in replies if m.has_error()]
            if errors or len(replies) != self.sent[server_round]:
                raise RuntimeError(
                    f"round {server_round}: {len(replies)} of {self.sent[server_round]} "
                    f"clients replied, {len(errors)} with an error: {errors[:1]}"
                )
            self.bytes[server_round]["up"] = sum(_message_bytes(m) for m in replies)
            self.clients[server_round] = sorted(
                (dict(m.content[TIMING]) for m in replies), key=lambda c: c["started"]
            )
            return super().aggregate_train(server_round, replies)

    return RecordingFedAvg()


def server_app(config, setup: Setup, test_path: str, recorder, outcome: dict):
    """The ServerApp: initial model, FedAvg over ``fraction_train`` of the nodes, central eval."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()
    d, f = config.data, config.federation

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        """Run FedAvg for ``federation.rounds`` rounds."""
        from pathlib import Path

        from transformers import DataCollatorWithPadding

        from fedfm.data.table import load_labelled_text

        random.seed(config.seed)  # FedAvg samples nodes with the `random` module

        # Load the global model
        tokenizer, model = get_model(setup, seed=config.seed)
        recorder.model_loaded()
        initial = ArrayRecord(trainable_state(model))
        recorder.set("trainable_params", sum(t.numel() for t in trainable_state(model).values()))

        # The central test rows (the same rows every system scores)
        test = load_labelled_text(
            Path(test_path),
            d.text_column,
            d.label_column,
            setup.label_names,
            d.test_rows,
            "data.test",
        )
        n_eval = min(d.eval_rows or len(test), len(test))
        testloader = torch.utils.data.DataLoader(
            tokenized_dataset(tokenizer, test.texts[:n_eval], test.labels[:n_eval], d.max_length),
            batch_size=64,
            collate_fn=DataCollatorWithPadding(tokenizer),
        )

        clients = config.partition.clients
        strategy = _recording_fedavg(
            recorder,
            fraction_train=f.clients_per_round / clients,
            fraction_evaluate=0.0,  # no federated evaluation: the global model is scored here
            min_train_nodes=f.clients_per_round,  # with fraction_train: exactly this many
            min_evaluate_nodes=0,
            min_available_nodes=clients,
        )

        def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            """Score the global model on the central test rows; closes the round's timeline."""
            if server_round == 0:  # the initial model is not scored (no system does)
                return None
            set_trainable_state(model, arrays.to_torch_state_dict())
            loss, accuracy = test_fn(model, testloader)
            sent = strategy.bytes[server_round]
            recorder.round_end(
                server_round, accuracy, sent["up"], sent["down"], strategy.started[server_round]
            )
            outcome["accuracy"] = accuracy
            log.info("round %d: accuracy %.4f, loss %.4f", server_round, accuracy, loss)
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=f.rounds,
            train_config=ConfigRecord(
                {
                    "lr": f.lr,
                    "weight-decay": f.weight_decay,
                    "local-steps": f.local_steps,
                    "local-epochs": f.local_epochs,
                    "batch-size": f.batch_size,
                    "seed": config.seed,
                }
            ),
            evaluate_fn=global_evaluate,
        )
        outcome["server_done"] = time.time()
        outcome["arrays_bytes"] = strategy.arrays_bytes.get(1, 0)
        outcome["train_metrics"] = {
            rnd: dict(m) for rnd, m in result.train_metrics_clientapp.items()
        }
        outcome["clients"] = {
            rnd: [
                {
                    "partition": int(c["partition-id"]),
                    "after_round_start": round(c["started"] - strategy.started[rnd], 3),
                    "model_seconds": round(c["model-seconds"], 3),
                    "train_seconds": round(c["train-seconds"], 3),
                }
                for c in clients
            ]
            for rnd, clients in strategy.clients.items()
        }

    return app


# ------------------------------------------------------------------------------------------
# Entry point of the bench child process


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _EXPECTED_WARNINGS)


def run(config, recorder) -> None:
    """Run the scenario of ``config`` through Flower's simulation and fill ``recorder``."""
    os.environ.update(QUIET_ENV)  # before flwr and ray are imported

    import ray
    from flwr.simulation import run_simulation

    from fedfm.config import resolve_path
    from fedfm.data.table import load_labelled_text
    from fedfm.tasks.models import resolve_model

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
