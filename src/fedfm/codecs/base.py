"""The Codec interface and the Pipeline that chains codecs and ends in the wire format."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from fedfm.codecs.wire import check_layout, pack, unpack, validate_state
from fedfm.errors import ConfigError, ProtocolError, StaleReference
from fedfm.registry import Registry
from fedfm.state import State

AUX = "#"
"""Marks a tensor a codec adds for its own decoder (``w#scale``, ``w#idx``, ``#residual.step``).

Other codecs pass such tensors through untouched; model tensor names never contain ``#``.
"""


def is_aux(name: str) -> bool:
    """Whether ``name`` is a codec's side tensor rather than one of the model's tensors."""
    return AUX in name


def meta(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A tensor that has only a shape and a dtype: an entry of a layout."""
    return torch.empty(shape, dtype=dtype, device="meta")


def peer_seed(run_seed: int, peer: str) -> int:
    """The codec seed of one sender: the run seed and the sender's id (a client id, or "server")."""
    key = repr((run_seed, peer)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def codec_generator(ctx: CodecContext, *labels: str) -> torch.Generator:
    """A torch.Generator both ends derive alike from ``ctx.seed``, ``ctx.round`` and ``labels``.

    ``labels`` are e.g. the codec's and the tensor's names, so every tensor draws its own stream.
    blake2b, not ``hash()``: Python salts string hashes per process.
    """
    key = repr((ctx.seed, ctx.round, *labels)).encode()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))
    return generator


@dataclass
class CodecContext:
    """What both ends know when coding one message.

    ``reference`` is the state the receiver already holds (for an update: the global state the
    client started from; for the global state: what clients decoded last round, None at first).
    ``memory`` is this end's own persistent store for this peer (error-feedback residuals,
    predictions), kept across rounds by the caller and saved with checkpoints: only tensors,
    under keys prefixed by the codec's name. ``seed`` and ``round`` are known to both ends.
    """

    round: int
    reference: State | None = None
    memory: dict[str, torch.Tensor] = field(default_factory=dict)
    seed: int = 0
    # Names, shapes and dtypes of the tensors the codec's encode received, known to both ends:
    # the model's shared tensors for the first codec, meta tensors for later ones. Pipeline sets
    # it for each codec on both ends; after Pipeline.decode it holds the model's template.
    template: State | None = None
    # This codec's entry of the payload header (JSON values): encode may record in it what the
    # receiver needs to derive the layout (e.g. a kept rank per tensor); decode reads it back.
    header: dict[str, Any] = field(default_factory=dict)
    # The round whose state ``reference`` and ``memory`` hold (0: none yet); None: not tracked.
    # A stateful pipeline writes the sender's in the header; a receiver that holds another
    # round's state refuses the payload (StaleReference) instead of decoding garbage.
    reference_round: int | None = None
    # Sender side: how many of this end's messages the receiver says it has decoded (the
    # server's ``FitInstructions.uplink_decoded``); None: not told. A codec that predicts from
    # past messages re-bases when its own count differs (a message was lost or refused).
    peer_decoded: int | None = None


class Codec:
    """A transform of a ``{name: tensor}`` dict; ``decode(encode(x))`` ≈ x.

    Subclasses set ``name`` via registration and may accept one ``name:argument`` parameter.
    A codec that changes names, shapes or dtypes says so in :meth:`layout`, so that the receiver
    can check a payload before decoding it. A codec that keeps state about what the receiver
    reconstructs (error feedback, predictions) sets ``commits`` and implements :meth:`commit`.
    """

    lossless: ClassVar[bool] = True
    # Codes the state against ctx.reference (the model's own tensors): must come first.
    first_only: ClassVar[bool] = False
    # Turns the tensors into one opaque blob (entropy coding): must come last.
    last_only: ClassVar[bool] = False
    # Whether Pipeline.encode calls commit() with what the receiver will reconstruct.
    commits: bool = False
    # A quantiser's integer width (sign included): secure aggregation sizes its ring from it.
    value_bits: ClassVar[int | None] = None

    def __init__(self, argument: str | None, field: str) -> None:
        self.argument = argument
        if argument is not None:
            raise self.config_error(field, "this codec takes no argument")

    def spec(self) -> str:
        name = CODECS.name_of_class(type(self))
        return name if self.argument is None else f"{name}:{self.argument}"

    def config_error(self, field: str, message: str) -> ConfigError:
        """A ConfigError naming the config item, e.g. ``codec.up item 'topk:1.5': …``."""
        return ConfigError(f"{field} item {self.spec()!r}: {message}")

    def layout(self, inputs: State) -> State:
        """What encode returns for inputs of this layout (names, shapes, dtypes; meta tensors)."""
        return inputs

    def max_layout(self, inputs: State) -> State:
        """The largest layout encode may return for inputs of this layout (sizes bound uploads).

        Default: :meth:`layout` (a codec whose output shrinks with what it records, such as a
        kept rank, is at most its layout without a record)."""
        return self.layout(inputs)

    def recorded_layout(self, inputs: State, header: dict[str, Any]) -> State:
        """The layout of encode's output given what encode recorded in ``ctx.header``.

        A codec whose shapes depend on the values (e.g. a kept rank) overrides this and raises
        ProtocolError for an entry no sender writes. Default: :meth:`layout`.
        """
        return self.layout(inputs)

    def encode(
        self, tensors: dict[str, torch.Tensor], ctx: CodecContext
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(
        self, tensors: dict[str, torch.Tensor], ctx: CodecContext
    ) -> dict[str, torch.Tensor]:
        """Invert encode. ``tensors`` match :meth:`layout` of ``ctx.template`` (Pipeline checks
        names, shapes and dtypes first), so a decoder checks only values (e.g. index ranges)."""
        raise NotImplementedError

    def commit(
        self,
        sent: dict[str, torch.Tensor],
        received: dict[str, torch.Tensor],
        ctx: CodecContext,
    ) -> None:
        """Sender side, after encoding: ``sent`` is what this codec's encode received and
        ``received`` what the receiver's decode of this codec will return, through the whole
        downstream chain. Update ``ctx.memory`` from them (only with new tensors: never in place).
        """

    def acknowledged(self, memory: dict[str, torch.Tensor]) -> int | None:
        """Receiver side: how many messages this codec has decoded from the peer whose decoder
        memory is ``memory``, for the sender to compare (None: the codec does not count)."""
        return None


class _CodecRegistry(Registry[type[Codec]]):
    def name_of_class(self, cls: type) -> str:
        for name, item in self._items.items():
            if item is cls:
                return name
        raise KeyError(cls.__name__)

    def parse_chain(self, items: tuple[str, ...] | list[str], field: str) -> list[Codec]:
        """Build the codecs of a chain (``name`` or ``name:argument`` each) and check their order:
        each codec once, a ``first_only`` codec first, a ``last_only`` one last."""
        codecs = [parse_codec(item, field) for item in items]
        specs = [c.spec() for c in codecs]
        names = [self.name_of_class(type(c)) for c in codecs]
        for i, codec in enumerate(codecs):
            if names[i] in names[:i]:
                raise ConfigError(
                    f"{field} item {specs[i]!r}: {names[i]!r} appears twice; "
                    "each codec may appear once in a pipeline"
                )
            if codec.last_only and i < len(codecs) - 1:
                raise ConfigError(
                    f"{field} item {specs[i]!r} must come last: it turns the tensors into "
                    f"one compressed blob, so {specs[i + 1]!r} cannot follow it"
                )
            if codec.first_only and i > 0:
                raise ConfigError(
                    f"{field} item {specs[i]!r} must come first: it codes the state against "
                    f"the one the receiver holds, so it cannot follow {specs[i - 1]!r}"
                )
        return codecs

    def check_chain(self, items: tuple[str, ...] | list[str], field: str) -> None:
        """Raise the ConfigError a :class:`Pipeline` of ``items`` would (the config's check)."""
        self.parse_chain(items, field)


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
    Both ends derive from the model's template the layout of every stage, so the receiver checks
    a payload's names, shapes and dtypes before any codec decodes it. After encoding, the sender
    decodes its own payload as the receiver will and hands each committing codec the receiver's
    reconstruction of its input, so error feedback and predictions account for every codec
    downstream (e.g. the int8 error after ``topk``).
    """

    def __init__(self, items: tuple[str, ...] | list[str], field: str = "codec") -> None:
        self.codecs = CODECS.parse_chain(items, field)
        self.specs = [c.spec() for c in self.codecs]

    def acknowledged(self, memory: dict[str, torch.Tensor]) -> int | None:
        """What the receiver tells the sender it decoded (``FitInstructions.uplink_decoded``):
        the first counting codec's count in this peer's decoder ``memory``, None if none counts."""
        for codec in self.codecs:
            count = codec.acknowledged(memory)
            if count is not None:
                return count
        return None

    @property
    def value_bits(self) -> int | None:
        """The narrowest integer width a codec of the chain quantises to, None if none does."""
        widths = [c.value_bits for c in self.codecs if c.value_bits is not None]
        return min(widths) if widths else None

    @property
    def stateful(self) -> bool:
        """Whether decoding needs what the receiver decoded before (a reference or memory)."""
        return any(c.first_only or c.commits for c in self.codecs)

    def layouts(self, template: State, headers: list[dict[str, Any]] | None = None) -> list[State]:
        """The layout entering each codec, then the wire's: ``len(codecs) + 1`` entries.

        ``headers`` are one payload's codec header entries (default: none recorded).
        """
        headers = headers or [{} for _ in self.codecs]
        stages = [State((n, meta(t.shape, t.dtype)) for n, t in template.items())]
        for codec, entry in zip(self.codecs, headers, strict=True):
            stages.append(codec.recorded_layout(stages[-1], entry))
        return stages

    def max_payload_bytes(self, template: State) -> int:
        """The largest payload this pipeline makes for states of ``template``'s layout: the
        tensor bytes of the largest wire layout, plus room for the safetensors entries and the
        JSON header (64 KiB + 256 bytes a tensor). Servers refuse larger uploads unread."""
        layout = State((n, meta(t.shape, t.dtype)) for n, t in template.items())
        for codec in self.codecs:
            layout = codec.max_layout(layout)
        data = sum(t.numel() * t.element_size() for t in layout.values())
        names = sum(len(n.encode()) for n in (*template, *layout))
        return 8 + data + (64 << 10) + 256 * (len(template) + len(layout)) + names

    def encode(self, state: State, ctx: CodecContext, header: dict[str, Any]) -> bytes:
        headers: list[dict[str, Any]] = [{} for _ in self.codecs]
        layouts = [State((n, meta(t.shape, t.dtype)) for n, t in state.items())]
        tensors: dict[str, torch.Tensor] = dict(state)
        inputs = []  # what each codec's encode received, for commit
        for codec, entry in zip(self.codecs, headers, strict=True):
            inputs.append(tensors)
            tensors = codec.encode(tensors, replace(ctx, template=layouts[-1], header=entry))
            layouts.append(codec.recorded_layout(layouts[-1], entry))
        recorded = {"codec_headers": headers} if any(headers) else {}
        if self.stateful and ctx.reference_round is not None:
            recorded["reference_round"] = ctx.reference_round
        payload = pack(tensors, {**header, "codecs": self.specs, "round": ctx.round, **recorded})
        self._commit(tensors, inputs, layouts, headers, ctx)
        return payload

    def _commit(
        self,
        wire: dict[str, torch.Tensor],
        inputs: list[dict[str, torch.Tensor]],
        layouts: list[State],
        headers: list[dict[str, Any]],
        ctx: CodecContext,
    ) -> None:
        """Decode ``wire`` as the receiver will, and commit at each codec that asks for it."""
        committing = [i for i, c in enumerate(self.codecs) if c.commits]
        if not committing:
            return
        # The receiver's decoders keep their own memory; ours must only change through commit.
        # A shallow copy suffices as codecs replace memory tensors, never write into them.
        scratch = dict(ctx.memory)
        received = wire
        for i in range(len(self.codecs) - 1, committing[0] - 1, -1):
            codec = self.codecs[i]
            at = replace(ctx, template=layouts[i], header=headers[i])
            received = codec.decode(received, replace(at, memory=scratch))
            if codec.commits:
                codec.commit(inputs[i], received, at)

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
        coded = header.get("reference_round")
        tracked = self.stateful and None not in (coded, ctx.reference_round)
        if tracked and coded != ctx.reference_round:
            raise StaleReference(
                f"payload of round {ctx.round} is coded against round {coded!r}'s state; "
                f"this receiver holds round {ctx.reference_round}'s: it needs the full "
                "state (sync) first"
            )
        headers = header.get("codec_headers", [{} for _ in self.codecs])
        if (
            not isinstance(headers, list)
            or len(headers) != len(self.codecs)
            or not all(isinstance(h, dict) for h in headers)
        ):
            raise ProtocolError(
                f"payload codec_headers {str(headers)[:80]} are not one mapping per codec"
            )
        layouts = self.layouts(template, headers)
        check_layout(tensors, layouts[-1])
        for i in reversed(range(len(self.codecs))):
            at = replace(ctx, template=layouts[i], header=headers[i])
            tensors = self.codecs[i].decode(tensors, at)
        return validate_state(tensors, template), header
