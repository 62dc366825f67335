"""Lossless delta coding and floating-point casts."""

from __future__ import annotations

import torch

from fedfm.codecs.base import CODECS, Codec, CodecContext, is_aux, meta
from fedfm.state import State


@CODECS.register("delta")
class Delta(Codec):
    """Send w − reference instead of w; the receiver adds its reference back."""

    first_only = True

    def _reference(self, ctx: CodecContext):
        # No reference yet (the first downlink message): the state is sent whole.
        return ctx.reference or {}

    def encode(self, tensors, ctx):
        ref = self._reference(ctx)
        return {n: (t - ref[n]) if n in ref else t for n, t in tensors.items()}

    def decode(self, tensors, ctx):
        ref = self._reference(ctx)
        return {
            n: (t + ref[n].to(t.dtype)).to(ref[n].dtype) if n in ref else t
            for n, t in tensors.items()
        }


class _Cast(Codec):
    lossless = False
    dtype: torch.dtype

    def _casts(self, name: str, t: torch.Tensor) -> bool:
        return t.is_floating_point() and not is_aux(name)

    def layout(self, inputs: State) -> State:
        return State(
            (n, meta(t.shape, self.dtype) if self._casts(n, t) else t) for n, t in inputs.items()
        )

    def encode(self, tensors, ctx):
        return {n: t.to(self.dtype) if self._casts(n, t) else t for n, t in tensors.items()}

    def decode(self, tensors, ctx):
        # Back to the dtype this codec's input had (the model's, for a cast right after delta).
        return {n: t.to(ctx.template[n].dtype) for n, t in tensors.items()}


@CODECS.register("fp16")
class Float16(_Cast):
    """Cast floating tensors to float16 (half the bytes of float32)."""

    dtype = torch.float16


@CODECS.register("bf16")
class BFloat16(_Cast):
    """Cast floating tensors to bfloat16 (float32's range, 8 bits of mantissa)."""

    dtype = torch.bfloat16
