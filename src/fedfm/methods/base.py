"""The Method interface and its registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

from torch import nn

from fedfm.registry import Registry


class Method:
    """Adapts a frozen encoder: returns the module to run, with only the shared tensors trainable.

    Subclasses set ``Spec`` (a frozen dataclass of their config keys) and override :meth:`wrap`.
    """

    Spec: ClassVar[type]
    #: True when :meth:`wrap` returns a peft model, saved in the HF peft adapter format.
    is_peft: ClassVar[bool] = False
    #: True when every tensor the method trains lies inside the transformer layers (or the
    #: whole model trains): offsite-tuning can then restrict it to the end layers.
    tunes_layers: ClassVar[bool] = False

    def __init__(self, spec) -> None:
        self.spec = spec

    def wrap(self, encoder: nn.Module) -> nn.Module:
        """Return the encoder to train, with ``requires_grad`` set on exactly the shared tensors."""
        raise NotImplementedError

    def client_preparer(self, positions: Mapping[str, int]) -> Callable | None:
        """A ClientApp ``prepare`` hook that turns the received global state into the state a
        client starts from, or None when every client starts from the global state.
        ``positions`` maps each client id to its position among the federation's clients."""
        return None

    def prefix_tokens(self) -> int:
        """How many positions the method prepends to the encoder's output (soft prompts)."""
        return 0

    def save(self, encoder: nn.Module, path: Path) -> None:
        """Save what the method trained in the encoder, in the format users load it from."""
        if self.is_peft:
            encoder.save_pretrained(str(path))


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


METHODS: Registry[type[Method]] = Registry("method", "method.type")
