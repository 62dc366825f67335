"""What every task shares: its shared tensors (``self.shared``, the trainable parameters in model
order), their state as a :data:`State`, parameter counts and the precision context."""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch

from fedfm.state import State


class SharedStateTask:
    """Mixin: subclasses set ``self.model``, ``self.shared`` and ``self.precision``."""

    model: torch.nn.Module
    shared: OrderedDict[str, torch.nn.Parameter]
    precision: str

    def get_state(self) -> State:
        return OrderedDict((n, p.detach().clone()) for n, p in self.shared.items())

    @torch.no_grad()
    def set_state(self, state: State) -> None:
        for n, p in self.shared.items():
            p.copy_(state[n])

    def num_params(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        total = sum(p.numel() for p in self.model.parameters())
        return sum(p.numel() for p in self.shared.values()), total

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
