"""Sparsification with error feedback: ``topk`` (largest magnitudes + indices) and ``randk``
(positions both ends draw from the same generator, so no indices travel).

Each floating tensor of n values keeps k = max(1, round(F·n)) of them. The part not sent —
the input minus what the receiver reconstructs through the whole downstream chain, e.g. the
int8 error in ``["topk:0.05", "int8"]`` — is kept in the sender's ``ctx.memory`` and added to
the next input before sparsifying (error feedback: Stich et al. 2018, "Sparsified SGD with
Memory"; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD"), so nothing is lost, only
delayed: Σ received = Σ inputs − the final residual.

Error feedback is on by default except in ``codec.down``: there ``delta`` is taken against what
clients decoded, so the next delta already re-sends what was left out and a residual on top
would count it twice. ``,feedback`` / ``,no_feedback`` override the default.

``randk`` sends the chosen values unscaled: biased (E[sent] = F·x) but contractive, the
compressor error feedback is proven for; scaling by 1/F would make one message unbiased at
the price of variance (1/F − 1)·‖x‖², and the residual would no longer shrink.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch

from fedfm.codecs.base import AUX, CODECS, Codec, CodecContext, codec_generator, is_aux, meta
from fedfm.errors import ProtocolError
from fedfm.state import State

log = logging.getLogger(__name__)


def kept(n: int, fraction: float) -> int:
    """How many of ``n`` values a sparsifier with ``fraction`` sends."""
    return 0 if n == 0 else min(n, max(1, round(fraction * n)))


def top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted int64 positions of the ``k`` largest magnitudes of flat ``x``."""
    return torch.topk(x.abs(), k, sorted=False).indices.sort().values


def random_indices(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted int64 positions of ``k`` of ``n`` values drawn without replacement."""
    return torch.randperm(n, generator=generator)[:k].sort().values


class _Sparsifier(Codec):
    """Shared by topk and randk: argument parsing, layout, error feedback, decode."""

    lossless = False
    sends_indices: ClassVar[bool]

    def __init__(self, argument: str | None, field: str) -> None:
        self.argument = argument
        text, *options = (argument or "").split(",")
        example = f"{CODECS.name_of_class(type(self))}:0.05"
        try:
            self.fraction = float(text)
        except ValueError:
            raise self.config_error(
                field, f"the fraction must be a number in (0, 1], e.g. {example!r}; got {text!r}"
            ) from None
        if not 0 < self.fraction <= 1:  # also refuses nan
            raise self.config_error(field, "the fraction must be in (0, 1]")
        self.commits = field != "codec.down"  # error feedback: see the module docstring
        if len(options) > 1:
            raise self.config_error(field, "takes one option at most after the fraction")
        for option in options:
            if option.strip() not in ("feedback", "no_feedback"):
                raise self.config_error(
                    field, f"unknown option {option!r}; allowed: feedback, no_feedback"
                )
            self.commits = option.strip() == "feedback"

    def _sparsifies(self, name: str, t: torch.Tensor) -> bool:
        return t.is_floating_point() and not is_aux(name)

    def _key(self, name: str) -> str:
        return f"{CODECS.name_of_class(type(self))}.error/{name}"

    def _indices(
        self, name: str, x: torch.Tensor | None, k: int, ctx: CodecContext
    ) -> torch.Tensor:
        """Sorted int64 positions to send; ``x`` (the flat input) is None on the receiver."""
        raise NotImplementedError

    def layout(self, inputs: State) -> State:
        out = State()
        for name, t in inputs.items():
            if not self._sparsifies(name, t):
                out[name] = t
                continue
            k = kept(t.numel(), self.fraction)
            out[name] = meta((k,), t.dtype)
            if self.sends_indices:
                out[name + AUX + "idx"] = meta((k,), torch.int32)
        return out

    def _with_error(self, name: str, t: torch.Tensor, ctx: CodecContext) -> torch.Tensor:
        """Flat input plus the residual carried from earlier rounds, in at least float32."""
        x = t.flatten().to(torch.promote_types(t.dtype, torch.float32))
        error = ctx.memory.get(self._key(name)) if self.commits else None
        if error is None:
            return x
        if error.shape != t.shape:
            log.warning("%s: dropping a residual of shape %s", self._key(name), tuple(error.shape))
            return x
        return x + error.flatten().to(x.dtype)

    def encode(self, tensors, ctx):
        out = {}
        for name, t in tensors.items():
            if not self._sparsifies(name, t):
                out[name] = t
                continue
            x = self._with_error(name, t, ctx)
            idx = self._indices(name, x, kept(x.numel(), self.fraction), ctx)
            out[name] = x[idx].to(t.dtype)
            if self.sends_indices:
                out[name + AUX + "idx"] = idx.to(torch.int32)
        return out

    def commit(self, sent, received, ctx):
        # residual = (input + old residual) − what the receiver reconstructs
        for name, t in sent.items():
            if self._sparsifies(name, t):
                x = self._with_error(name, t, ctx)
                ctx.memory[self._key(name)] = (x - received[name].flatten().to(x.dtype)).view(
                    t.shape
                )

    def decode(self, tensors, ctx):
        out = {}
        for name, spec in ctx.template.items():
            if not self._sparsifies(name, spec):
                out[name] = tensors[name]
                continue
            n = spec.numel()
            k = kept(n, self.fraction)
            if self.sends_indices:
                idx = tensors[name + AUX + "idx"].long()
                if k and (idx[0] < 0 or idx[-1] >= n):
                    raise ProtocolError(
                        f"payload indices of {name!r} run from {idx[0].item()} to "
                        f"{idx[-1].item()}, outside [0, {n})"
                    )
                if not bool((idx[1:] > idx[:-1]).all()):
                    raise ProtocolError(f"payload indices of {name!r} are not sorted and distinct")
            else:
                idx = self._indices(name, None, k, ctx)
            dense = torch.zeros(n, dtype=spec.dtype)
            dense[idx] = tensors[name].to(spec.dtype)
            out[name] = dense.view(spec.shape)
        return out


@CODECS.register("topk")
class TopK(_Sparsifier):
    """Send the fraction F of entries with the largest magnitude, with int32 indices."""

    sends_indices = True

    def _indices(self, name, x, k, ctx):
        return top_indices(x, k)


@CODECS.register("randk")
class RandK(_Sparsifier):
    """Send a fraction F of entries at random positions the receiver regenerates: no indices."""

    sends_indices = False

    def _indices(self, name, x, k, ctx):
        n = ctx.template[name].numel()
        return random_indices(n, k, codec_generator(ctx, "randk", name))
