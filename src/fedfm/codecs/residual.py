"""Residual coding: send only what the receiver cannot predict (ResFed, Song et al. 2023,
"ResFed: Communication Efficient Federated Learning With Deep Compressed Residuals").

Both ends predict the incoming state as reference + the delta they reconstructed from this peer
last time (the last update looks like the next; on the downlink, the global model keeps moving
as it did). The sender sends state − prediction; put a lossy codec after it (``["residual",
"int8"]``), which codes the small residual finely. Both ends then remember the reconstructed
delta — the sender learns the receiver's reconstruction through ``commit`` — so their
predictions stay bit-identical. A message counter travels with each payload: a lost message
would make the predictions differ, and the receiver refuses the payload instead of decoding
garbage.
"""

from __future__ import annotations

import torch

from fedfm.codecs.base import AUX, CODECS, Codec, CodecContext, is_aux, meta
from fedfm.errors import ProtocolError
from fedfm.state import State

STEP = AUX + "residual.step"  # payload: messages the sender had coded before this one
STEP_KEY = "residual.step"  # memory: messages coded (sender) or decoded (receiver)
DELTA_KEY = "residual.delta/"  # memory: + tensor name → the last reconstructed delta


def _working(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


@CODECS.register("residual")
class Residual(Codec):
    """Send state − (reference + this peer's last reconstructed delta)."""

    first_only = True
    commits = True

    def _predicts(self, name: str, t: torch.Tensor) -> bool:
        return t.is_floating_point() and not is_aux(name)

    def _prediction(self, name: str, like: torch.Tensor, ctx: CodecContext) -> torch.Tensor:
        """reference + last delta, in the working dtype; zeros when neither is known yet."""
        dtype = _working(like)
        prediction = torch.zeros(like.shape, dtype=dtype)
        if ctx.reference is not None and name in ctx.reference:
            prediction = prediction + ctx.reference[name].to(dtype)
        delta = ctx.memory.get(DELTA_KEY + name)
        if delta is not None and delta.shape == like.shape:
            prediction = prediction + delta.to(dtype)
        return prediction

    def _step(self, ctx: CodecContext) -> int:
        step = ctx.memory.get(STEP_KEY, torch.zeros(1, dtype=torch.int64))
        if step.dtype != torch.int64 or step.shape != (1,):  # memory may come from a sync blob
            raise ProtocolError(f"residual: memory {STEP_KEY!r} is not one int64 counter")
        return int(step[0])

    def _remember(self, reconstructed: dict[str, torch.Tensor], ctx: CodecContext) -> None:
        """What both ends do with the receiver's reconstruction: the same code, the same bits."""
        for name, t in reconstructed.items():
            # Without a reference (the first downlink message) there is no delta to remember.
            if self._predicts(name, t) and ctx.reference is not None and name in ctx.reference:
                dtype = _working(t)
                ctx.memory[DELTA_KEY + name] = t.to(dtype) - ctx.reference[name].to(dtype)
        ctx.memory[STEP_KEY] = torch.tensor([self._step(ctx) + 1], dtype=torch.int64)

    def layout(self, inputs: State) -> State:
        return State([*inputs.items(), (STEP, meta((1,), torch.int64))])

    def encode(self, tensors, ctx):
        out = {
            n: (t.to(_working(t)) - self._prediction(n, t, ctx)).to(t.dtype)
            if self._predicts(n, t)
            else t
            for n, t in tensors.items()
        }
        out[STEP] = torch.tensor([self._step(ctx)], dtype=torch.int64)
        return out

    def commit(self, sent, received, ctx):
        self._remember(received, ctx)

    def decode(self, tensors, ctx):
        sender, receiver = int(tensors[STEP].item()), self._step(ctx)
        if sender != receiver:
            raise ProtocolError(
                f"residual coding is out of step: the sender had coded {sender} messages, "
                f"this end decoded {receiver}; a message was lost, so the two ends' predictions "
                "differ (both ends' codec memory must be reset)"
            )
        out = {}
        for name, spec in ctx.template.items():
            t = tensors[name]
            if self._predicts(name, spec):
                t = (t.to(_working(spec)) + self._prediction(name, spec, ctx)).to(spec.dtype)
            out[name] = t
        self._remember(out, ctx)
        return out
