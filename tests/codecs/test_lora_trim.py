"""lora_trim: exact round trips, LoRA bytes shrinking with the rank, tampered headers refused."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.lora_trim import (
    LoraTrim,
    kept_rank,
    recorded_ranks,
    trimmable_pairs,
)
from fedfm.codecs.wire import pack, unpack
from fedfm.errors import ConfigError, ProtocolError

R, IN, OUT = 8, 256, 192
MODULES = [f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]


def lora_state(ranks, seed=0):
    """Peft-named factors of rank ``ranks[i]`` zero-padded to R, a head and an integer tensor."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for module, rank in zip(MODULES, ranks, strict=True):
        a, b = torch.zeros(R, IN), torch.zeros(OUT, R)
        a[:rank] = torch.randn(rank, IN, generator=g)
        b[:, :rank] = torch.randn(OUT, rank, generator=g)
        state[f"{module}.lora_A.default.weight"] = a
        state[f"{module}.lora_B.default.weight"] = b
    state["head.weight"] = torch.randn(4, IN, generator=g)
    state["head.bias"] = torch.zeros(4)
    state["steps"] = torch.arange(3)
    return state


def lora_bytes(state):
    return sum(t.numel() * t.element_size() for n, t in state.items() if ".lora_" in n)


def roundtrip(items, state, reference=None):
    pipe = Pipeline(items, "codec.up")
    payload = pipe.encode(state, CodecContext(round=3, reference=reference), {"client": "c1"})
    out, header = pipe.decode(payload, CodecContext(round=3, reference=reference), state)
    return payload, out, header


def test_kept_rank_counts_up_to_the_last_used_component():
    a, b = torch.zeros(R, IN), torch.zeros(OUT, R)
    assert kept_rank(a, b) == 0
    a[2, 5] = 1.0
    assert kept_rank(a, b) == 3
    b[0, 6] = -0.5  # a B column alone keeps its component (A[6] = 0 there)
    assert kept_rank(a, b) == 7
    state = lora_state([8, 4, 2, 0])
    assert len(trimmable_pairs(state)) == 4
    assert [kept_rank(state[a], state[b]) for a, b in trimmable_pairs(state)] == [8, 4, 2, 0]


def test_recorded_ranks_are_validated():
    layout = lora_state([8, 4, 2, 1])
    assert recorded_ranks(layout, {}) is None  # nothing recorded: full shapes
    assert recorded_ranks(layout, {"ranks": [8, 4, 2, 0]}) == [8, 4, 2, 0]
    for bad, message in [
        ({"ranks": [8, 4, 2, 9]}, r"rank of .*value.* is 9, outside 0 … 8"),
        ({"ranks": [8, 4, -1, 1]}, r"is -1, outside 0 … 8"),
        ({"ranks": [8, 4, 2.0, 1]}, r"is 2.0, outside"),
        ({"ranks": [8, 4, True, 1]}, r"is True, outside"),
        ({"ranks": [8, 4, 2]}, r"one rank for each of the 4 LoRA pairs"),
        ({"ranks": [8, 4, 2, 1], "extra": 1}, r"expected \{'ranks'"),
        ({"ranks": "8"}, r"expected \{'ranks'"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            recorded_ranks(layout, bad)


@pytest.mark.parametrize("ranks", [[8, 8, 8, 8], [8, 4, 2, 1], [2, 2, 2, 2], [0, 3, 8, 5]])
def test_roundtrip_is_exact_and_lora_bytes_shrink_with_the_rank(ranks):
    state = lora_state(ranks)
    plain, _, _ = roundtrip((), state)
    payload, out, header = roundtrip(("lora_trim",), state)
    assert header["codec_headers"] == [{"ranks": ranks}]
    assert list(out) == list(state)
    assert all(torch.equal(out[n], state[n]) and out[n].dtype == state[n].dtype for n in state)
    tensors, _ = unpack(payload)
    a0 = f"{MODULES[1]}.lora_A.default.weight"
    assert tensors[a0].shape == (ranks[1], IN)
    # the LoRA bytes scale with Σ rᵢ / (4·R); everything else is the same, bar ~100 header bytes
    saved = lora_bytes(state) * (1 - sum(ranks) / (len(ranks) * R))
    assert len(plain) - len(payload) == pytest.approx(saved, abs=128)


def test_rank_2_client_sends_about_a_quarter_of_the_lora_bytes():
    state = lora_state([2, 2, 2, 2])
    plain, _, _ = roundtrip((), state)
    payload, _, _ = roundtrip(("lora_trim",), state)
    other = len(plain) - lora_bytes(state)  # head, steps and the header
    assert (len(payload) - other) / lora_bytes(state) == pytest.approx(2 / R, abs=0.01)


@pytest.mark.parametrize(
    "items", [("lora_trim", "int8"), ("lora_trim", "fp16"), ("lora_trim", "topk:0.5", "int8")]
)
def test_chains_code_only_the_kept_part_and_keep_the_zeros(items):
    state = lora_state([8, 4, 2, 1], seed=1)
    untrimmed, _, _ = roundtrip(items[1:], state)
    payload, out, _ = roundtrip(items, state)
    assert len(payload) < 0.7 * len(untrimmed)
    for (a, b), k in zip(trimmable_pairs(state), [8, 4, 2, 1], strict=True):
        assert torch.equal(out[a][k:], torch.zeros(R - k, IN))
        assert torch.equal(out[b][:, k:], torch.zeros(OUT, R - k))
        scale = state[a].abs().max()
        if "topk:0.5" not in items:
            assert (out[a] - state[a]).abs().max() <= 0.01 * scale


def test_states_without_lora_pass_through_and_record_nothing():
    state = OrderedDict(w=torch.randn(8, 4), b=torch.randn(3), n=torch.arange(2))
    plain, _, _ = roundtrip((), state)
    payload, out, header = roundtrip(("lora_trim",), state)
    assert "codec_headers" not in header
    assert len(payload) == pytest.approx(len(plain) + len('"lora_trim"'), abs=8)  # the chain
    assert all(torch.equal(out[n], state[n]) for n in state)


def retamper(payload: bytes, edit) -> bytes:
    """The payload re-packed after ``edit(tensors, header)`` changed it (a malicious client)."""
    tensors, header = unpack(payload)
    edit(tensors, header)
    header.pop("wire")
    return pack(tensors, header)


def test_tampered_payloads_are_refused():
    state = lora_state([8, 4, 2, 1])
    pipe = Pipeline(("lora_trim",), "codec.up")
    payload = pipe.encode(state, CodecContext(round=3), {"client": "c1"})
    a1, b1 = trimmable_pairs(state)[1]

    def decode(p):
        return pipe.decode(p, CodecContext(round=3), state)

    decode(retamper(payload, lambda t, h: None))  # re-packing alone is fine

    def rank(value):
        return lambda t, h: h["codec_headers"][0]["ranks"].__setitem__(1, value)

    with pytest.raises(ProtocolError, match=r"is 9, outside 0 … 8"):
        decode(retamper(payload, rank(9)))
    with pytest.raises(ProtocolError, match=r"has shape \(4, 256\), expected \(3, 256\)"):
        decode(retamper(payload, rank(3)))  # the header disagrees with the tensors
    with pytest.raises(ProtocolError, match=r"has shape"):
        decode(retamper(payload, lambda t, h: t.__setitem__(b1, t[b1][:, :3].clone())))
    with pytest.raises(ProtocolError, match="not one mapping per codec"):
        decode(retamper(payload, lambda t, h: h.__setitem__("codec_headers", [])))
    with pytest.raises(ProtocolError, match="one rank for each"):
        decode(retamper(payload, lambda t, h: h["codec_headers"][0]["ranks"].pop()))
    # without the ranks the receiver expects full factors
    with pytest.raises(ProtocolError, match="has shape"):
        decode(retamper(payload, lambda t, h: h.pop("codec_headers")))


def test_decode_refuses_factors_of_another_rank_even_without_the_pipeline_check():
    state = lora_state([8, 4, 2, 1])
    template = OrderedDict((n, t) for n, t in state.items())
    a1, b1 = trimmable_pairs(state)[1]
    tensors = dict(state)
    tensors[a1], tensors[b1] = state[a1][:3], state[b1][:, :2]
    with pytest.raises(ProtocolError, match="not rank-k parts"):
        LoraTrim(None, "codec.up").decode(tensors, CodecContext(round=1, template=template))


def test_after_delta_nothing_is_trimmed_but_the_round_trip_stays_exact():
    """A rank-2 client's factors minus the rank-8 global ones have no zero component."""
    reference = lora_state([8, 8, 8, 8], seed=2)
    state = lora_state([2, 2, 2, 2], seed=3)
    delta_only, _, _ = roundtrip(("delta",), state, reference)
    payload, out, header = roundtrip(("delta", "lora_trim"), state, reference)
    assert header["codec_headers"] == [{}, {"ranks": [8, 8, 8, 8]}]
    assert len(payload) >= len(delta_only)
    assert all(torch.allclose(out[n].float(), state[n].float(), atol=1e-6) for n in state)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (("lora_trim", "delta"), "'delta' must come first"),
        (("lora_trim", "lora_trim"), "'lora_trim' appears twice"),
        (("lora_trim:2",), "takes no argument"),
    ],
)
def test_bad_chains_are_config_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline(items, "codec.up")
