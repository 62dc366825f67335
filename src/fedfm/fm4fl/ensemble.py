"""Server-side ensemble distillation during federation (FedDF, Lin et al. 2020).

After the configured strategy aggregates a round, the server loads each client model of the
round in turn, scores the unlabelled transfer table (``warmup.data``) with it, averages the
clients' tempered probabilities into one ensemble prediction, and trains the aggregate on those
soft targets for ``warmup.ensemble_steps`` steps (loss ``T² · CE(p_ensemble, softmax(z/T))``,
``T = teacher.temperature``). The ensemble of client models is a better teacher than their
averaged weights when the clients' data differ (non-IID), which is where averaging loses most.

The server must see each client's model, so this cannot run under secure aggregation or
client-level DP (the config refuses both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedfm.client.app import ClientData
from fedfm.data.tokens import tokenize
from fedfm.fm4fl.warmup import transfer_texts
from fedfm.state import FitInstructions, State, Update
from fedfm.strategies.base import Strategy, WrappedStrategy
from fedfm.tasks.models import tokenizer_key

if TYPE_CHECKING:
    from fedfm.client.trainer import Trainer


class EnsembleDistillation(WrappedStrategy):
    """Wraps a strategy: its aggregate, then distillation of the round's client ensemble."""

    needs_individual_updates = True  # the ensemble is the clients' own models

    def __init__(self, inner: Strategy, trainer: Trainer, tokens, config) -> None:
        super().__init__(inner)
        self.trainer = trainer
        self.tokens = tokens  # the transfer table, tokenised
        self.steps = config.warmup.ensemble_steps
        self.lr = config.warmup.lr or config.federation.lr
        self.batch_size = config.warmup.batch_size
        self.temperature = config.teacher.temperature

    def ensemble(self, updates: list[Update]) -> np.ndarray:
        """The mean of the clients' tempered probabilities on the transfer table."""
        task, rows = self.trainer.task, np.arange(len(self.tokens))
        total = None
        for u in updates:
            task.set_state(u.state)
            probs = task.probabilities(self.tokens, rows, self.temperature)
            total = probs if total is None else total + probs
        return total / len(updates)

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:

        aggregate = self.inner.aggregate(round, global_state, updates)
        targets = self.ensemble(updates)
        task = self.trainer.task
        data = ClientData(self.tokens, targets, np.arange(len(self.tokens)))
        instructions = FitInstructions(
            round=round, local_steps=self.steps, lr=self.lr, batch_size=self.batch_size
        )
        task.temperature = self.temperature
        try:
            fitted = self.trainer.fit("server", 0, aggregate, data, instructions)
        finally:
            task.temperature = 1.0
        self._metrics = {"ensemble_distillation_loss": fitted.metrics["loss"]}
        return fitted.state


def wrap(strategy: Strategy, trainer: Trainer, config) -> EnsembleDistillation:
    """``strategy`` with FedDF after every aggregation, on ``warmup.data``'s transfer table."""

    tokenizer = trainer.task.tokenizer
    key = tokenizer_key(config.model.name, tokenizer)
    tokens = tokenize(transfer_texts(config), tokenizer, key, config.data.max_length)
    return EnsembleDistillation(strategy, trainer, tokens, config)
