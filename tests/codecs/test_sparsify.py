"""topk / randk: what they keep, the bytes on the wire, error feedback carries what was left out."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.wire import unpack
from fedfm.errors import ConfigError


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class _Link:
    """One sender and one receiver of a pipeline, each with its own memory, over rounds."""

    def __init__(self, items, field="codec"):
        self.pipe = Pipeline(items, field)
        self.sent_memory: dict[str, torch.Tensor] = {}
        self.received_memory: dict[str, torch.Tensor] = {}

    def send(self, state, round, reference=None):
        ctx = CodecContext(round=round, reference=reference, memory=self.sent_memory)
        payload = self.pipe.encode(state, ctx, {})
        ctx = CodecContext(round=round, reference=reference, memory=self.received_memory)
        out, _ = self.pipe.decode(payload, ctx, state)
        return payload, out


def test_topk_sends_the_largest_values_and_their_indices():
    x = _randn(40, 25)
    payload, out = _Link(("topk:0.1",)).send(OrderedDict(w=x), round=1)
    tensors, _ = unpack(payload)
    assert tensors["w"].shape == (100,) and tensors["w#idx"].dtype == torch.int32
    kept = out["w"].flatten() != 0
    assert kept.sum() == 100
    # every kept magnitude is at least every dropped one, and kept values are exact
    assert x.flatten()[kept].abs().min() >= x.flatten()[~kept].abs().max()
    assert torch.equal(out["w"].flatten()[kept], x.flatten()[kept])


def test_randk_positions_are_regenerated_by_the_receiver():
    x = OrderedDict(w=_randn(1000))
    payload, out = _Link(("randk:0.05",)).send(x, round=1)
    assert set(unpack(payload)[0]) == {"w"}  # values only: no indices travel
    kept = out["w"] != 0
    assert kept.sum() == 50
    assert torch.equal(out["w"][kept], x["w"][kept])  # sent unscaled
    _, other_round = _Link(("randk:0.05",)).send(x, round=2)
    assert not torch.equal(kept, other_round["w"] != 0)


@pytest.mark.parametrize(
    ("item", "per_value"), [("topk:0.05", 8), ("randk:0.05", 4), ("topk:0.05", 5)]
)
def test_payload_is_the_kept_values_plus_indices(item, per_value):
    items = (item, "int8") if per_value == 5 else (item,)  # 5: int8 values + int32 indices
    big = OrderedDict(w=_randn(256, 1024))
    plain, _ = _Link(()).send(big, round=1)
    payload, _ = _Link(items).send(big, round=1)
    k = round(0.05 * big["w"].numel())
    tensors, _ = unpack(payload)
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == k * per_value + (
        4 if per_value == 5 else 0  # the int8 scale
    )
    assert len(payload) / len(plain) == pytest.approx(0.05 * per_value / 4, abs=0.001)


@pytest.mark.parametrize(
    "items",
    [("topk:0.1",), ("randk:0.1",), ("topk:0.1", "int8"), ("randk:0.2", "int4:block=16")],
    ids=lambda items: "+".join(items),
)
def test_error_feedback_loses_nothing(items):
    g = OrderedDict(w=_randn(30, 20), b=_randn(7))
    link = _Link(items)
    rounds = 8
    received = {n: torch.zeros_like(t) for n, t in g.items()}
    for r in range(1, rounds + 1):
        _, out = link.send(g, round=r)
        for n in g:
            received[n] += out[n]
    error = {n: link.sent_memory[f"{items[0].split(':')[0]}.error/{n}"] for n in g}
    for n in g:
        # Σ received = rounds·g − the residual still held back: nothing was lost on the way
        assert torch.allclose(received[n] + error[n], rounds * g[n], atol=1e-4, rtol=0)
    assert link.received_memory == {}  # the receiver needs none of it


def test_error_feedback_includes_the_quantisation_error_downstream():
    g = OrderedDict(w=_randn(400))
    link = _Link(("topk:0.1", "int8"))
    _, out = link.send(g, round=1)
    error = link.sent_memory["topk.error/w"]
    assert torch.equal(error, g["w"] - out["w"])  # what the receiver got, after int8
    sent = out["w"] != 0
    assert (error[sent] != 0).any()  # topk alone would leave no error where it sent


def test_without_feedback_what_was_left_out_is_lost():
    g = OrderedDict(w=_randn(400))
    with_ef, without = _Link(("topk:0.1",)), _Link(("topk:0.1,no_feedback",))
    totals = [torch.zeros(400), torch.zeros(400)]
    rounds = 30
    for r in range(1, rounds + 1):
        totals[0] += with_ef.send(g, round=r)[1]["w"]
        totals[1] += without.send(g, round=r)[1]["w"]
    assert without.sent_memory == {}
    # without: the same 90% is dropped every round, the gap grows with the rounds;
    # with: the gap is the residual held back, which stays bounded
    gap = [(t - rounds * g["w"]).norm() for t in totals]
    assert gap[0] < gap[1] / 3


def test_downlink_default_leaves_the_error_to_delta():
    """On the downlink, delta against what clients hold already re-sends what they lack; error
    feedback on top would count it twice and the clients' model would drift away."""
    w = OrderedDict(w=_randn(1000))
    gaps = {}
    for option in ("", ",feedback"):
        link = _Link(("delta", f"topk:0.1{option}"), "codec.down")
        view = None
        for r in range(1, 21):
            w["w"] = w["w"] + 0.05 * _randn(1000, seed=r)  # the global model keeps moving
            _, view = link.send(w, round=r, reference=view)
        gaps[option] = (w["w"] - view["w"]).norm().item()
    assert gaps[""] < 5 and gaps[",feedback"] > 10 * gaps[""]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("topk:1.5", "the fraction must be in (0, 1]"),
        ("topk:0", "the fraction must be in (0, 1]"),
        ("randk:-0.1", "the fraction must be in (0, 1]"),
        ("topk:nan", "the fraction must be in (0, 1]"),
        ("topk:abc", "the fraction must be a number in (0, 1], e.g. 'topk:0.05'; got 'abc'"),
        ("topk", "the fraction must be a number in (0, 1]"),
        ("randk:", "the fraction must be a number in (0, 1], e.g. 'randk:0.05'"),
        ("topk:0.1,bogus", "unknown option 'bogus'; allowed: feedback, no_feedback"),
        ("topk:0.1,feedback,no_feedback", "one option at most"),
    ],
)
def test_bad_fractions_and_options_are_config_errors(item, message):
    with pytest.raises(ConfigError) as info:
        Pipeline((item,), "codec.up")
    assert str(info.value).startswith(f"codec.up item {item!r}: ")
    assert message in str(info.value)
