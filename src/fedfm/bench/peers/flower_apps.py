"""The Flower peer's apps: the :class:`~flwr.clientapp.ClientApp` (train on this node's
partition) and the :class:`~flwr.serverapp.ServerApp` (Flower's FedAvg with central evaluation),
plus the thin FedAvg subclass that records round start times and bytes. Flower is imported inside
the functions, so this module imports without it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from fedfm.bench.peers.flower_task import (
    Setup,
    get_model,
    load_partition,
    set_trainable_state,
    test_fn,
    tokenized_dataset,
    train_fn,
    trainable_state,
)
from fedfm.data.table import load_labelled_text

log = logging.getLogger(__name__)

# The reply record that carries per-client timings for the bench (not part of the user's app)
TIMING = "bench-timing"


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


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
        from transformers import DataCollatorWithPadding

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
