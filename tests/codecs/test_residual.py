"""residual: both ends' predictions stay bit-identical; it beats delta on correlated updates."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.wire import pack, unpack
from fedfm.errors import ConfigError, ProtocolError


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _uplink(items, rounds=6):
    """A client whose update is much like last round's, against a global model that moves.

    Yields (round, sent state, decoded state, sender memory, receiver memory).
    """
    pipe = Pipeline(items, "codec.up")
    sender: dict[str, torch.Tensor] = {}
    receiver: dict[str, torch.Tensor] = {}
    update = OrderedDict(w=_randn(40, 30, seed=1), b=_randn(30, seed=2))
    for r in range(1, rounds + 1):
        reference = OrderedDict((n, _randn(*t.shape, seed=100 + r)) for n, t in update.items())
        state = OrderedDict(
            (n, reference[n] + update[n] + 0.01 * _randn(*t.shape, seed=200 + r))
            for n, t in update.items()
        )
        payload = pipe.encode(state, CodecContext(round=r, reference=reference, memory=sender), {})
        ctx = CodecContext(round=r, reference=reference, memory=receiver)
        out, _ = pipe.decode(payload, ctx, reference)
        yield r, state, out, sender, receiver


@pytest.mark.parametrize(
    ("items", "tolerance"),
    [
        (("residual",), 1e-5),
        (("residual", "int8"), 4 / 254),  # half an int8 step of |update| < 4 (round 1)
        (("residual", "topk:0.3", "int4:block=32"), None),
    ],
)
def test_both_ends_predict_alike_round_after_round(items, tolerance):
    for _r, state, out, sender, receiver in _uplink(items):
        # the receiver keeps only the prediction; the sender may also hold topk's residual
        assert receiver.keys() == {"residual.step", "residual.delta/w", "residual.delta/b"}
        for key in receiver:
            assert torch.equal(sender[key], receiver[key]), key
        if tolerance is not None:
            assert all((out[n] - state[n]).abs().max() <= tolerance for n in state)
    assert receiver["residual.step"].item() == 6


def test_residual_codes_correlated_updates_finer_than_delta():
    errors = {}
    for first in ("residual", "delta"):
        errors[first] = [
            max((out[n] - state[n]).abs().max().item() for n in state)
            for _r, state, out, _s, _rc in _uplink((first, "int8"))
        ]
    # round 1 has nothing to predict from; afterwards only the 1% noise is left to code
    assert errors["residual"][0] == pytest.approx(errors["delta"][0], rel=1e-3)
    later = zip(errors["residual"][1:], errors["delta"][1:], strict=True)
    assert all(e < 0.05 * d for e, d in later)


def test_downlink_without_a_reference_in_round_one():
    pipe = Pipeline(("residual", "int8"), "codec.down")
    sender: dict[str, torch.Tensor] = {}
    receiver: dict[str, torch.Tensor] = {}
    w, view = OrderedDict(w=_randn(500, seed=0)), None
    for r in range(1, 6):
        w["w"] = w["w"] + 0.1 * _randn(500, seed=r)
        payload = pipe.encode(w, CodecContext(round=r, reference=view, memory=sender), {})
        view, _ = pipe.decode(payload, CodecContext(round=r, reference=view, memory=receiver), w)
        assert (view["w"] - w["w"]).abs().max() <= w["w"].abs().max() / 127
        assert all(torch.equal(sender[k], receiver[k]) for k in receiver)


def test_a_lost_message_is_refused_not_decoded_into_garbage():
    pipe = Pipeline(("residual", "int8"))
    sender: dict[str, torch.Tensor] = {}
    state = OrderedDict(w=_randn(20, seed=0))
    pipe.encode(state, CodecContext(round=1, memory=sender), {})  # never arrives
    payload = pipe.encode(state, CodecContext(round=2, memory=sender), {})
    with pytest.raises(ProtocolError, match="out of step: the sender had coded 1 messages"):
        pipe.decode(payload, CodecContext(round=2, memory={}), state)


@pytest.mark.parametrize("lost", [{2}, {3}, {2, 3}, {1}])
def test_after_a_lost_upload_the_ends_resynchronise(lost):
    """The server tells the client how many of its uploads it decoded (``uplink_decoded``); the
    client re-bases once, and every later round decodes exactly as if nothing was lost."""
    pipe = Pipeline(("residual", "int8"), "codec.up")
    sender: dict[str, torch.Tensor] = {}
    receiver: dict[str, torch.Tensor] = {}
    update = OrderedDict(w=_randn(40, 30, seed=1), b=_randn(30, seed=2))
    errors = []
    for r in range(1, 8):
        reference = OrderedDict((n, _randn(*t.shape, seed=100 + r)) for n, t in update.items())
        state = OrderedDict(
            (n, reference[n] + update[n] + 0.01 * _randn(*t.shape, seed=200 + r))
            for n, t in update.items()
        )
        told = pipe.acknowledged(receiver)  # what the server puts in the round's instructions
        assert told == (0 if not receiver else int(receiver["residual.step"][0]))
        ctx = CodecContext(round=r, reference=reference, memory=sender, peer_decoded=told)
        payload = pipe.encode(state, ctx, {})
        if r in lost:
            continue  # lost on the way, or refused before decoding
        out, _ = pipe.decode(
            payload, CodecContext(round=r, reference=reference, memory=receiver), reference
        )
        for key in receiver:
            assert torch.equal(sender[key], receiver[key]), key
        errors.append(max((out[n] - state[n]).abs().max().item() for n in state))
    assert all(e <= 4 / 254 for e in errors)  # every decoded round within an int8 step
    assert errors[-1] < 0.05 * errors[0]  # and residual coding is back to its fine steps
    # Not told (an old server): the receiver refuses, as before, instead of decoding garbage.
    payload = pipe.encode(state, CodecContext(round=9, reference=reference, memory=sender), {})
    pipe.encode(state, CodecContext(round=10, reference=reference, memory=sender), {})
    late = pipe.encode(state, CodecContext(round=11, reference=reference, memory=sender), {})
    with pytest.raises(ProtocolError, match="out of step"):
        pipe.decode(late, CodecContext(round=11, reference=reference, memory=receiver), reference)


def test_a_forged_rebase_header_is_refused():
    pipe = Pipeline(("residual",), "codec.up")
    state = OrderedDict(w=_randn(20, seed=0))
    payload = pipe.encode(state, CodecContext(round=1, memory={}, peer_decoded=5), {})
    tensors, header = unpack(payload)
    header["codec_headers"] = [{"rebase": "5"}]
    with pytest.raises(ProtocolError, match="'rebase' = 5 is not a count"):
        pipe.decode(pack(tensors, header), CodecContext(round=1, memory={}), state)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (("delta", "residual"), "item 'residual' must come first"),
        (("int8", "residual"), "item 'residual' must come first"),
        (("residual:2",), "this codec takes no argument"),
    ],
)
def test_residual_misplaced_is_a_config_error(items, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline(items, "codec.up")
