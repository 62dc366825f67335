"""The Codec interface and the Pipeline that chains codecs and ends in the wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedfm.codecs.wire import pack, unpack, validate_state
from fedfm.errors import ConfigError, ProtocolError
from fedfm.registry import Registry
from fedfm.state import State


@dataclass
class CodecContext:
    """What both ends know when coding one message.

    ``reference`` is the state the receiver already holds (for an update: the global state the
    client started from). ``memory`` is the sender's own persistent store for this peer (e.g.
    error-feedback residuals), kept across rounds by the caller and saved with checkpoints.
    """

    round: int
    reference: State | None = None
    memory: dict[str, torch.Tensor] = field(default_factory=dict)
    seed: int = 0
    # The model's shared tensors (names, shapes, dtypes), known to both ends; set on decode.
    template: State | None = None


class Codec:
    """A transform of a ``{name: tensor}`` dict; ``decode(encode(x))`` ≈ x.

    Subclasses set ``name`` via registration and may accept one ``name:argument`` parameter.
    """

    lossless: ClassVar[bool] = True

    def __init__(self, argument: str | None, field: str) -> None:
        self.argument = argument
        if argument is not None:
            raise ConfigError(f"{field} item {self.spec()!r}: this codec takes no argument")

    def spec(self) -> str:
        name = CODECS.name_of_class(type(self))
        return name if self.argument is None else f"{name}:{self.argument}"

    def encode(
        self, tensors: dict[str, torch.Tensor], ctx: CodecContext
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(
        self, tensors: dict[str, torch.Tensor], ctx: CodecContext
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class _CodecRegistry(Registry[type[Codec]]):
    def name_of_class(self, cls: type) -> str:
        for name, item in self._items.items():
            if item is cls:
                return name
        raise KeyError(cls.__name__)


CODECS = _CodecRegistry("codec", "codec")


def parse_codec(item: str, field: str) -> Codec:
    """Build a codec from ``name`` or ``name:argument``; bad names and arguments are ConfigErrors."""
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f"{field} item {item!r} is not a codec name")
    name, _, argument = item.strip().partition(":")
    if name not in CODECS:
        raise ConfigError(
            f"{field} item {item!r} is not a known codec; allowed: {', '.join(CODECS.names())}"
        )
    return CODECS.get(name)(argument if _ else None, field)


class Pipeline:
    """Codecs applied in order on encode and in reverse on decode, then the wire format.

    The header records the codec chain; a receiver whose pipeline differs rejects the payload.
    """

    def __init__(self, items: tuple[str, ...] | list[str], field: str = "codec") -> None:
        self.codecs = [parse_codec(item, field) for item in items]
        self.specs = [c.spec() for c in self.codecs]

    def encode(self, state: State, ctx: CodecContext, header: dict[str, Any]) -> bytes:
        tensors: dict[str, torch.Tensor] = dict(state)
        for codec in self.codecs:
            tensors = codec.encode(tensors, ctx)
        return pack(tensors, {**header, "codecs": self.specs, "round": ctx.round})

    def decode(
        self, payload: bytes, ctx: CodecContext, template: State
    ) -> tuple[State, dict[str, Any]]:
        """Bytes → a validated state in the template's names, shapes and dtypes, plus the header."""
        tensors, header = unpack(payload)
        ctx.template = template
        if header.get("codecs") != self.specs:
            raise ProtocolError(
                f"payload was coded with {header.get('codecs')!r}, expected {self.specs!r}"
            )
        if header.get("round") != ctx.round:
            raise ProtocolError(
                f"payload is for round {header.get('round')!r}, expected round {ctx.round}"
            )
        for codec in reversed(self.codecs):
            tensors = codec.decode(tensors, ctx)
        return validate_state(tensors, template), header
