"""A client process that holds its own data: what ``fedfm join`` runs.

It receives the experiment (model, method, columns, label set, hyper-parameters, codecs) from the
server, loads its own data file with those columns, and builds the same :class:`ClientApp` the
simulation uses, so a network client trains exactly like a simulated one with the same index.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedfm.client.app import ClientApp, ClientData
from fedfm.client.trainer import Trainer
from fedfm.codecs import Pipeline
from fedfm.config import ExperimentConfig
from fedfm.data.table import load_labelled_text
from fedfm.data.tokens import tokenize
from fedfm.errors import ConfigError, DataError
from fedfm.methods import METHODS
from fedfm.tasks.classification import ClassificationTask
from fedfm.tasks.models import load_encoder, tokenizer_key

log = logging.getLogger(__name__)


def build_client_app(
    config: ExperimentConfig, train_file: str | Path, client_id: str, client_index: int
) -> ClientApp:
    """Load ``train_file`` with the server's columns and labels, the model, and the client app.

    A file without the configured columns, or with labels outside the server's label set, fails
    here with a :class:`DataError`, before any training.
    """
    d = config.data
    if not d.labels:
        raise ConfigError("the server's experiment names no label set (data.labels is empty)")
    data = load_labelled_text(
        Path(train_file), d.text_column, d.label_column, d.labels, 0, "--data"
    )
    if len(data) < 1:
        raise DataError(f"--data {str(train_file)!r} has no rows")
    m = config.model
    tokenizer, encoder = load_encoder(m.name, m.init, m.layers, config.seed)
    key = tokenizer_key(config.model.name, tokenizer)
    tokens = tokenize(data.texts, tokenizer, key, d.max_length)
    method = METHODS.of(config.method)(config.method)
    task = ClassificationTask(
        tokenizer, encoder, method, len(d.labels), config.seed, config.federation.precision
    )
    f = config.federation
    trainer = Trainer(task, f.optimizer, f.weight_decay, config.seed, f.length_grouping)
    rows = ClientData(tokens, data.labels, np.arange(len(data)))
    app = ClientApp(
        trainer,
        {client_id: rows},
        Pipeline(config.codec.down, "codec.down"),
        Pipeline(config.codec.up, "codec.up"),
        task.get_state(),
    )
    app.index = {client_id: client_index}  # the server's index: same seeds as in simulation
    if config.privacy.dp == "distributed":  # clip, then this client's share of the noise
        from fedfm.privacy.federated import client_transform

        if config.privacy.noise_multiplier <= 0:
            raise ConfigError(
                "privacy.dp = 'distributed': the server's experiment carries no resolved "
                "privacy.noise_multiplier"
            )
        per_round = config.federation.clients_per_round  # σ is given: the rate does not matter
        num_params = task.num_params()[0]
        index = {client_id: client_index}
        app.transforms.append(client_transform(config, index, per_round, num_params))
    if getattr(config.method, "client_ranks", ()):  # a weaker client trains a lower LoRA rank
        from fedfm.methods.lora import client_rank, truncate_state

        rank = client_rank(config.method, client_index)
        if rank < config.method.r:
            app.prepare.append(lambda cid, index, rnd, state: truncate_state(state, rank))
    log.info(
        "client %s: %d rows of %s, %d classes, model %s",
        client_id,
        len(data),
        train_file,
        len(d.labels),
        config.model.name,
    )
    return app
