"""Lossless delta coding and floating-point casts."""

from __future__ import annotations

import torch

from fedfm.codecs.base import CODECS, Codec, CodecContext


@CODECS.register("delta")
class Delta(Codec):
    """Send w − reference instead of w; the receiver adds its reference back."""

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

    def encode(self, tensors, ctx):
        return {n: t.to(self.dtype) if t.is_floating_point() else t for n, t in tensors.items()}

    def decode(self, tensors, ctx):
        # Back to the dtype the receiver's model uses (the reference or float32).
        ref = ctx.reference or {}
        out = {}
        for n, t in tensors.items():
            target = ref[n].dtype if n in ref else torch.float32
            out[n] = t.to(target) if t.is_floating_point() else t
        return out


@CODECS.register("fp16")
class Float16(_Cast):
    """Cast floating tensors to float16 (half the bytes of float32)."""

    dtype = torch.float16


@CODECS.register("bf16")
class BFloat16(_Cast):
    """Cast floating tensors to bfloat16 (float32's range, 8 bits of mantissa)."""

    dtype = torch.bfloat16
