"""``lora_trim``: send each LoRA pair at the rank it was trained at, not at the model's rank r.

A client of rank rᵢ < r (``method.client_ranks``, ``methods/lora.py``) trains factors of the
model's shapes whose rows j ≥ rᵢ of A (r × in) and columns j ≥ rᵢ of B (out × r) are exactly
zero. For each pair the codec finds the kept rank k, the last component j with A[j] ≠ 0 or
B[:, j] ≠ 0 plus one, sends A[:k] and B[:, :k], and records k in its entry of the payload header
(``{"ranks": [k, …]}``, one per pair in the model's order). The receiver derives the payload's
shapes from those ranks, so a rank outside 0 … r or a tensor of another shape is a ProtocolError
before anything is decoded; decode pads the zeros back. Lossless; a rank-rᵢ client's LoRA bytes
shrink by rᵢ/r. Tensors that are not LoRA factors pass through.

Ordering: put ``lora_trim`` first; casts, quantisers and sparsifiers may follow and then code
only the kept part: ``["lora_trim", "int8"]``, ``["lora_trim", "topk:0.1", "int8"]``. It trims
full states, not deltas: a rank-rᵢ client's factors minus the rank-r global ones are not low-rank,
so after ``delta`` or ``residual`` (which must come first anyway) it finds no zero component and
sends everything. Any order is still correct, as the codec only drops exact zeros and passes
through what is not shaped as factors (e.g. ``topk``'s flat values); the Pipeline's only ordering
rule, ``first_only``, means "codes against the receiver's state", which this codec does not, so
the useless orders are documented rather than refused. In ``codec.down`` it saves nothing: the
global state has full rank.

The receiver's layout depends on the header, so this codec needs a Pipeline that records codec
header entries (``CodecContext.header``, ``Codec.recorded_layout`` in ``codecs/base.py``);
without them it refuses to be configured.
"""

from __future__ import annotations

from typing import Any

import torch

from fedfm.codecs.base import CODECS, Codec, is_aux, meta
from fedfm.errors import ProtocolError
from fedfm.state import State
from fedfm.strategies.lora_aggregation import lora_pairs


def trimmable_pairs(layout: State | dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """The (A name, B name) of every LoRA pair in ``layout`` shaped as factors (r × in, out × r)."""
    pairs = []
    for a_name, b_name in lora_pairs(n for n in layout if not is_aux(n)):
        a, b = layout[a_name], layout[b_name]
        if a.ndim == 2 and b.ndim == 2 and a.shape[0] == b.shape[1]:
            pairs.append((a_name, b_name))
    return pairs


def kept_rank(a: torch.Tensor, b: torch.Tensor) -> int:
    """1 + the last component j with A[j] ≠ 0 or B[:, j] ≠ 0; 0 when both factors are zero."""
    used = (a != 0).any(dim=1) | (b != 0).any(dim=0)
    nonzero = used.nonzero()
    return int(nonzero[-1]) + 1 if len(nonzero) else 0


def recorded_ranks(layout: State, header: dict[str, Any]) -> list[int] | None:
    """The kept ranks a header entry records for ``layout``'s pairs (None: nothing recorded).

    Raises ProtocolError for an entry no sender writes: other keys, a count that is not one per
    pair, a rank that is not an integer in 0 … r.
    """
    if not header:
        return None
    pairs = trimmable_pairs(layout)
    ranks = header.get("ranks")
    if set(header) != {"ranks"} or not isinstance(ranks, list) or len(ranks) != len(pairs):
        raise ProtocolError(
            f"lora_trim: the payload header records {str(header)[:80]}, expected "
            f"{{'ranks': [...]}} with one rank for each of the {len(pairs)} LoRA pairs"
        )
    for (a_name, _), k in zip(pairs, ranks, strict=True):
        r = layout[a_name].shape[0]
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= r:
            raise ProtocolError(f"lora_trim: payload rank of {a_name!r} is {k!r}, outside 0 … {r}")
    return ranks


@CODECS.register("lora_trim")
class LoraTrim(Codec):
    """Send A[:k] and B[:, :k] of each LoRA pair, k its kept rank; the receiver pads with zeros."""

    def recorded_layout(self, inputs: State, header: dict[str, Any]) -> State:
        ranks = recorded_ranks(inputs, header)
        if ranks is None:
            return inputs
        out = State(inputs)
        for (a_name, b_name), k in zip(trimmable_pairs(inputs), ranks, strict=True):
            a, b = inputs[a_name], inputs[b_name]
            out[a_name] = meta((k, a.shape[1]), a.dtype)
            out[b_name] = meta((b.shape[0], k), b.dtype)
        return out

    def encode(self, tensors, ctx):
        out = dict(tensors)
        pairs = trimmable_pairs(tensors)
        ranks = [kept_rank(tensors[a], tensors[b]) for a, b in pairs]
        for (a_name, b_name), k in zip(pairs, ranks, strict=True):
            out[a_name], out[b_name] = tensors[a_name][:k], tensors[b_name][:, :k]
        if pairs:
            ctx.header["ranks"] = ranks
        return out

    def decode(self, tensors, ctx):
        out = dict(tensors)
        for a_name, b_name in trimmable_pairs(ctx.template):
            a, b = tensors[a_name], tensors[b_name]
            a_spec, b_spec = ctx.template[a_name], ctx.template[b_name]
            k = a.shape[0] if a.ndim == 2 else -1
            if (
                not 0 <= k <= a_spec.shape[0]
                or a.shape != (k, a_spec.shape[1])
                or b.shape != (b_spec.shape[0], k)
            ):
                raise ProtocolError(
                    f"lora_trim: payload factors of {a_name!r} have shapes {tuple(a.shape)} and "
                    f"{tuple(b.shape)}, not rank-k parts of {tuple(a_spec.shape)} and "
                    f"{tuple(b_spec.shape)}"
                )
            out[a_name] = torch.zeros(a_spec.shape, dtype=a.dtype)
            out[a_name][:k] = a
            out[b_name] = torch.zeros(b_spec.shape, dtype=b.dtype)
            out[b_name][:, :k] = b
        return out
