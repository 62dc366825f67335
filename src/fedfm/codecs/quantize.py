"""Symmetric integer quantisation: ``int8`` and ``int4`` (two values per byte).

Each floating tensor is flattened and cut into blocks (one block per tensor by default, or
``block=N`` values each); a block sends integers q ∈ [−qmax, qmax] and one float32 scale
s = max|x| / qmax, and decodes to q·s. Symmetric, not affine: updates and deltas are centred on
zero, zero stays exactly zero (sparse inputs stay sparse), and one scale per block is all the
side data. Rounding to nearest errs by at most s/2 per value; stochastic rounding
(``stochastic``, QSGD-style, Alistarh et al. 2017) errs by less than s but is unbiased:
E[q·s] = x. ``scale=fp16`` or ``scale=bf16`` sends 16-bit scales (half the side data; QLoRA
compresses its scales for the same reason): the values are quantised against the rounded scale,
so only the clamp at ±qmax adds an error (≤ qmax · the scale's rounding, 2⁻¹¹ or 2⁻⁸ relative).
fp16 scales overflow above 65504 (refused) and flush below ~6·10⁻⁸ (those blocks decode to 0).
"""

from __future__ import annotations

import re

import torch

from fedfm.codecs.base import AUX, CODECS, Codec, codec_generator, is_aux, meta
from fedfm.errors import ProtocolError
from fedfm.state import State


def num_blocks(n: int, block: int | None) -> int:
    """Scales sent for ``n`` values: one per tensor, or one per ``block`` values."""
    return 1 if block is None else -(-n // block)


def quantize(
    x: torch.Tensor,
    bits: int,
    block: int | None,
    generator: torch.Generator | None = None,
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat ``x`` → (int8 values in [−qmax, qmax] of shape (n,), scales (blocks,) in ``scale_dtype``).

    With a generator, rounds stochastically (floor(x/s + u), u ~ U[0, 1)); else to nearest.
    A 16-bit scale is rounded first and the values are quantised against the rounded scale, so
    the receiver's q·s is what the sender meant (only the clamp at ±qmax can add an error, of at
    most qmax times the scale's rounding).
    """
    qmax = 2 ** (bits - 1) - 1
    n = x.numel()
    blocks = num_blocks(n, block)
    if n == 0:
        return torch.zeros(0, dtype=torch.int8), torch.zeros(blocks, dtype=scale_dtype)
    size = n if block is None else min(block, n)
    padded = torch.zeros(blocks * size, dtype=torch.float32)
    padded[:n] = x.flatten().float()
    grid = padded.view(blocks, size)  # (blocks, size); the last block is padded with zeros
    scale = (grid.abs().amax(dim=1) / qmax).to(scale_dtype).float()
    if not torch.isfinite(scale).all():  # float16 tops out at 65504
        raise ProtocolError(
            f"a block's int{bits} scale {float(grid.abs().amax() / qmax):.4g} overflows "
            f"{scale_dtype}; use scale=bf16 or scale=fp32"
        )
    y = grid / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    if generator is None:
        q = torch.round(y)
    else:
        q = torch.floor(y + torch.rand(y.shape, generator=generator))
    return q.clamp_(-qmax, qmax).to(torch.int8).flatten()[:n], scale.to(scale_dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, block: int | None) -> torch.Tensor:
    """(int values (n,), scales (blocks,)) → float32 values (n,)."""
    n = q.numel()
    if n == 0:
        return torch.zeros(0)
    size = n if block is None else min(block, n)
    padded = torch.zeros(scale.numel() * size, dtype=torch.float32)
    padded[:n] = q.float()
    return (padded.view(-1, size) * scale.float()[:, None]).flatten()[:n]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [−7, 7] (n,) → uint8 (⌈n/2⌉,): value 2i in the low nibble, 2i+1 in the high."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)  # 1…15; a padding nibble of 8 decodes to 0
    if u.numel() % 2:
        u = torch.cat([u, torch.full((1,), 8, dtype=torch.uint8)])
    return u[0::2] | (u[1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 (⌈n/2⌉,) → int8 values (n,)."""
    u = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:n]
    return (u.to(torch.int16) - 8).to(torch.int8)


class _Quantizer(Codec):
    """Shared by int8 and int4: argument parsing, layout, encode and decode."""

    lossless = False
    bits: int

    SCALES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    def __init__(self, argument: str | None, field: str) -> None:
        self.argument = argument
        self.block: int | None = None
        self.stochastic = False
        self.scale_dtype = torch.float32
        seen: set[str] = set()
        for option in [] if argument is None else argument.split(","):
            key, eq, value = option.strip().partition("=")
            if key in seen:
                raise self.config_error(field, f"option {key!r} is given twice")
            seen.add(key)
            if key == "block" and eq:
                if not re.fullmatch(r"[0-9]+", value.strip()) or int(value) < 1:
                    raise self.config_error(
                        field, f"block must be a positive integer (values per scale), got {value!r}"
                    )
                self.block = int(value)
            elif key == "stochastic" and not eq:
                self.stochastic = True
            elif key == "scale" and eq:
                if value.strip() not in self.SCALES:
                    raise self.config_error(
                        field, f"scale must be one of {', '.join(self.SCALES)}, got {value!r}"
                    )
                self.scale_dtype = self.SCALES[value.strip()]
            else:
                raise self.config_error(
                    field,
                    f"unknown option {option!r}; allowed: block=N (N ≥ 1), stochastic, "
                    "scale=fp32|fp16|bf16",
                )

    def _quantizes(self, name: str, t: torch.Tensor) -> bool:
        return t.is_floating_point() and not is_aux(name)

    def _packed_shape(self, n: int) -> tuple[int]:
        return (n,) if self.bits == 8 else ((n + 1) // 2,)

    def layout(self, inputs: State) -> State:
        out = State()
        wire_dtype = torch.int8 if self.bits == 8 else torch.uint8
        for name, t in inputs.items():
            if not self._quantizes(name, t):
                out[name] = t
                continue
            out[name] = meta(self._packed_shape(t.numel()), wire_dtype)
            out[name + AUX + "scale"] = meta((num_blocks(t.numel(), self.block),), self.scale_dtype)
        return out

    def encode(self, tensors, ctx):
        out = {}
        codec = CODECS.name_of_class(type(self))
        for name, t in tensors.items():
            if not self._quantizes(name, t):
                out[name] = t
                continue
            generator = codec_generator(ctx, codec, name) if self.stochastic else None
            q, scale = quantize(t, self.bits, self.block, generator, self.scale_dtype)
            out[name] = q if self.bits == 8 else pack_int4(q)
            out[name + AUX + "scale"] = scale
        return out

    def decode(self, tensors, ctx):
        out = {}
        for name, spec in ctx.template.items():
            if not self._quantizes(name, spec):
                out[name] = tensors[name]
                continue
            n = spec.numel()
            q = tensors[name] if self.bits == 8 else unpack_int4(tensors[name], n)
            x = dequantize(q, tensors[name + AUX + "scale"], self.block)
            out[name] = x.to(spec.dtype).view(spec.shape)
        return out


@CODECS.register("int8")
class Int8(_Quantizer):
    """8-bit symmetric quantisation: a quarter of float32's bytes, plus the scales."""

    bits = value_bits = 8


@CODECS.register("int4")
class Int4(_Quantizer):
    """4-bit symmetric quantisation (q ∈ [−7, 7]), two values per byte: an eighth of float32's."""

    bits = value_bits = 4
