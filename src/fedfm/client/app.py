"""What a client does with one message: decode the global state, train, encode the update.

Every runtime (in-process simulation, Ray, gRPC) calls :meth:`ClientApp.handle` with the same
bytes; runtimes only move bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedfm.codecs import CodecContext, Pipeline
from fedfm.data.tokens import TokenizedText
from fedfm.state import FitInstructions


@dataclass(frozen=True)
class ClientData:
    """One client's training rows (token ids and labels), and how to draw batches from them."""

    tokens: TokenizedText
    labels: np.ndarray
    rows: np.ndarray  # indices into tokens/labels

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, batch_size: int, steps: int, rng: np.random.Generator):
        """``steps`` batches of row indices, epoch by epoch over a fresh permutation each time."""
        size = min(batch_size, len(self.rows))
        order = rng.permutation(self.rows)
        pos = 0
        for _ in range(steps):
            if pos + size > len(order):
                order, pos = rng.permutation(self.rows), 0
            yield order[pos : pos + size]
            pos += size

    def steps_for_epochs(self, epochs: float, batch_size: int) -> int:
        return max(1, math.ceil(epochs * len(self.rows) / min(batch_size, len(self.rows))))


@dataclass(frozen=True)
class ClientTask:
    """One client's work in one round: the downlink payload and the server's instructions."""

    client_id: str
    payload: bytes
    instructions: FitInstructions


class ClientApp:
    """Handles fit messages for the clients whose data this process holds."""

    def __init__(
        self, trainer, data: dict[str, ClientData], down: Pipeline, up: Pipeline, template
    ) -> None:
        self.trainer = trainer
        self.data = data
        self.index = {cid: i for i, cid in enumerate(data)}
        self.down = down
        self.up = up
        self.template = template  # names, shapes and dtypes of the shared state
        self.memory: dict[str, dict] = {}  # per-client codec memory (e.g. error feedback)

    def handle(self, task: ClientTask) -> bytes:
        instr = task.instructions
        ctx = CodecContext(round=instr.round, memory=self.memory.setdefault(task.client_id, {}))
        state, _header = self.down.decode(task.payload, ctx, self.template)
        update = self.trainer.fit(
            task.client_id, self.index[task.client_id], state, self.data[task.client_id], instr
        )
        up_ctx = CodecContext(round=instr.round, reference=state, memory=ctx.memory)
        header = {
            "client": task.client_id,
            "num_examples": update.num_examples,
            "metrics": update.metrics,
        }
        return self.up.encode(update.state, up_ctx, header)
