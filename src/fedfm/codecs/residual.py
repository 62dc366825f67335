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

Resynchronising: the receiver tells the sender how many messages it decoded (the server puts
:meth:`Residual.acknowledged` in the next ``FitInstructions.uplink_decoded``; the client's
codec sees it as ``ctx.peer_decoded``). When that differs from the sender's own count, the
sender re-bases: it predicts from the reference alone (as in round 1) and says so in its
codec header (``{"rebase": count}``); the receiver, whatever its count, decodes it the same way,
and both ends take up the count and the new delta. One message costs as much as a ``delta``
message; every later one is residual again.
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

    def _prediction(
        self, name: str, like: torch.Tensor, ctx: CodecContext, rebase: bool = False
    ) -> torch.Tensor:
        """reference + last delta (not when re-basing), in the working dtype; zeros when neither
        is known yet."""
        dtype = _working(like)
        prediction = torch.zeros(like.shape, dtype=dtype)
        if ctx.reference is not None and name in ctx.reference:
            prediction = prediction + ctx.reference[name].to(dtype)
        delta = None if rebase else ctx.memory.get(DELTA_KEY + name)
        if delta is not None and delta.shape == like.shape:
            prediction = prediction + delta.to(dtype)
        return prediction

    def _step(self, ctx: CodecContext) -> int:
        step = ctx.memory.get(STEP_KEY, torch.zeros(1, dtype=torch.int64))
        if step.dtype != torch.int64 or step.shape != (1,):  # memory may come from a sync blob
            raise ProtocolError(f"residual: memory {STEP_KEY!r} is not one int64 counter")
        return int(step[0])

    def _rebase(self, ctx: CodecContext) -> int | None:
        """The count a re-based message starts from (its header's ``rebase``), else None."""
        count = ctx.header.get("rebase")
        if count is None:
            return None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ProtocolError(f"residual: header 'rebase' = {str(count)[:40]} is not a count ≥ 0")
        return count

    def acknowledged(self, memory):
        return self._step(CodecContext(0, memory=memory))

    def _remember(self, reconstructed: dict[str, torch.Tensor], ctx: CodecContext) -> None:
        """What both ends do with the receiver's reconstruction: the same code, the same bits."""
        base = self._rebase(ctx)
        step = self._step(ctx) if base is None else base
        for name, t in reconstructed.items():
            # Without a reference (the first downlink message) there is no delta to remember.
            if self._predicts(name, t) and ctx.reference is not None and name in ctx.reference:
                dtype = _working(t)
                ctx.memory[DELTA_KEY + name] = t.to(dtype) - ctx.reference[name].to(dtype)
        ctx.memory[STEP_KEY] = torch.tensor([step + 1], dtype=torch.int64)

    def layout(self, inputs: State) -> State:
        return State([*inputs.items(), (STEP, meta((1,), torch.int64))])

    def encode(self, tensors, ctx):
        step = self._step(ctx)
        rebase = ctx.peer_decoded is not None and ctx.peer_decoded != step
        if rebase:  # the receiver missed (or refused) a message: start again from the reference
            step = ctx.header["rebase"] = ctx.peer_decoded
        out = {
            n: (t.to(_working(t)) - self._prediction(n, t, ctx, rebase)).to(t.dtype)
            if self._predicts(n, t)
            else t
            for n, t in tensors.items()
        }
        out[STEP] = torch.tensor([step], dtype=torch.int64)
        return out

    def commit(self, sent, received, ctx):
        self._remember(received, ctx)

    def decode(self, tensors, ctx):
        sender, receiver, base = int(tensors[STEP].item()), self._step(ctx), self._rebase(ctx)
        if base is not None and base != sender:
            raise ProtocolError(f"residual: a re-based message counts {sender}, its header {base}")
        if base is None and sender != receiver:
            raise ProtocolError(
                f"residual coding is out of step: the sender had coded {sender} messages, "
                f"this end decoded {receiver}; a message was lost, so the two ends' predictions "
                "differ (the sender re-bases once told how many messages this end decoded)"
            )
        out = {}
        for name, spec in ctx.template.items():
            t = tensors[name]
            if self._predicts(name, spec):
                prediction = self._prediction(name, spec, ctx, rebase=base is not None)
                t = (t.to(_working(spec)) + prediction).to(spec.dtype)
            out[name] = t
        self._remember(out, ctx)
        return out
