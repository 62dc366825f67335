"""The client's local loop: load the global state into the shared model, train, return an Update."""

from __future__ import annotations

import contextlib
import math
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np
import torch

from fedfm.errors import TrainingError
from fedfm.seeds import derive_seed
from fedfm.state import FitInstructions, State, Update


class PrivateTraining(Protocol):
    """Example-level private training of a fit (``privacy.dp = "local"``:
    :class:`fedfm.privacy.local.LocalDP`): wraps the model and optimizer for one fit."""

    def training(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        batch_size: int,
        seed: int,
        proximal: tuple | None,
    ) -> AbstractContextManager[torch.optim.Optimizer]: ...


class Trainer:
    """Trains one client at a time on the one shared model of the process.

    A client's private state is only the shared tensors it receives; the frozen base is never
    copied, and the optimizer is created fresh for every fit (so it holds only shared tensors).
    With ``local_dp`` (``privacy.dp = "local"``) every fit is DP-SGD: see
    :meth:`fedfm.privacy.local.LocalDP.training`.
    """

    def __init__(
        self,
        task,
        optimizer: str = "adamw",
        weight_decay: float = 0.0,
        seed: int = 0,
        length_grouping: int = 1,
        local_dp: PrivateTraining | None = None,
    ) -> None:
        self.task = task
        self.local_dp = local_dp
        self.length_grouping = length_grouping
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.seed = seed
        # The rows each client trained on ({client_id: {row index}}), kept only when a privacy
        # audit needs its members (``privacy.audit``); None records nothing.
        self.seen: dict[str, set[int]] | None = None

    def _make_optimizer(self, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=self.weight_decay)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)

    def fit(
        self,
        client_id: str,
        client_index: int,
        state: State,
        data,
        instructions: FitInstructions,
        anchor: State | None = None,
    ) -> Update:
        """Train ``instructions.local_steps`` steps on ``data`` starting from ``state``; the
        proximal term (``proximal_mu``) pulls towards ``anchor`` (default: ``state``). The
        task's personal tensors, if any, train too (they are not in the update)."""
        task = self.task
        task.set_state(state)
        params = list(task.shared.values())
        opt = self._make_optimizer(task.trainable(), instructions.lr)
        seed = derive_seed(self.seed, instructions.round, client_index)
        torch.manual_seed(seed)  # dropout masks
        rng = np.random.default_rng(seed)
        towards = state if anchor is None else anchor
        pull = [towards[n] for n in task.shared] if instructions.proximal_mu > 0 else None
        task.model.train()
        losses = []
        lengths = data.tokens.lengths()
        tokens = 0
        steps = instructions.local_steps
        if instructions.local_epochs > 0:
            steps = data.steps_for_epochs(instructions.local_epochs, instructions.batch_size)
        batches = data.batches(instructions.batch_size, steps, rng, self.length_grouping)
        private = contextlib.nullcontext(opt)
        if self.local_dp is not None:
            private = self.local_dp.training(
                task.model,
                opt,
                batch_size=min(instructions.batch_size, len(data)),  # what data.batches yields
                seed=seed,
                proximal=None if pull is None else (pull, instructions.proximal_mu),
            )
            pull = None  # added after the noise by the DP optimizer, not through the loss
        with private as opt:
            for step, rows in enumerate(batches):
                loss = task.loss(data.tokens, data.labels, rows)
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingError(
                        f"client {client_id} round {instructions.round} step {step + 1}: the loss is {value}; "
                        "lower federation.lr or use precision = 'fp32'"
                    )
                if pull is not None:
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(params, pull, strict=True))
                    loss = loss + 0.5 * instructions.proximal_mu * prox
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(value)
                tokens += int(lengths[rows].sum())
                if self.seen is not None:
                    self.seen.setdefault(client_id, set()).update(int(r) for r in rows)
        return Update(
            client_id=client_id,
            round=instructions.round,
            state=task.get_state(),
            num_examples=len(data),
            metrics={
                "loss": float(np.mean(losses)),
                "steps": float(len(losses)),
                "tokens": float(tokens),  # token positions trained on (padding excluded)
            },
        )
