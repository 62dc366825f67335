"""Federated evaluation's messages: a client's answer is decoded as hostile bytes."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedfm.codecs import evaluation
from fedfm.codecs.wire import pack
from fedfm.errors import ProtocolError

TEMPLATE = OrderedDict(a=torch.zeros(3, 2), b=torch.zeros(4))


def test_request_and_result_round_trip():
    state = OrderedDict(a=torch.randn(3, 2), b=torch.randn(4))
    got = evaluation.unpack_request(evaluation.pack_request(state, 3), TEMPLATE, 3)
    assert all(torch.equal(got[n], state[n]) for n in state)
    reply = evaluation.pack_result("c1", 3, 25, {"accuracy": 0.8, "loss": 0.5})
    assert evaluation.unpack_result(reply, "c1", 3) == (25, {"accuracy": 0.8, "loss": 0.5})


def _raw(header: dict, tensors=None) -> bytes:
    """A payload with any header a hostile client may send (pack adds the wire version)."""
    return pack(tensors or {}, header)


GOOD = {"kind": "evaluation", "round": 3, "client": "c1", "num_examples": 5}


@pytest.mark.parametrize(
    "header, tensors, message",
    [
        ({**GOOD, "metrics": {"accuracy": 0.5}}, {"x": torch.zeros(2)}, "no tensors"),
        ({**GOOD, "client": "c2", "metrics": {"accuracy": 0.5}}, None, "names client 'c2'"),
        ({**GOOD, "round": 2, "metrics": {"accuracy": 0.5}}, None, "round 3"),
        (
            {**GOOD, "num_examples": 10**400, "metrics": {"accuracy": 0.5}},
            None,
            "integer of 401 digits",
        ),
        ({**GOOD, "num_examples": True, "metrics": {"accuracy": 0.5}}, None, "num_examples"),
        ({**GOOD, "metrics": {"accuracy": 10**400}}, None, "not allowed"),
        ({**GOOD, "metrics": {"accuracy": float("nan")}}, None, "not allowed"),
        ({**GOOD, "metrics": {"accuracy": 1.5}}, None, "between 0 and 1"),
        ({**GOOD, "metrics": {"loss": 0.3}}, None, "needs an accuracy"),
        ({**GOOD, "metrics": {str(i): 0.1 for i in range(40)}}, None, "small mapping"),
        ({**GOOD, "metrics": [0.5]}, None, "small mapping"),
    ],
)
def test_a_malformed_result_is_a_protocol_error(header, tensors, message):
    with pytest.raises(ProtocolError, match=message):
        evaluation.unpack_result(_raw(header, tensors), "c1", 3)


def test_an_oversized_or_foreign_result_is_refused():
    big = _raw({**GOOD, "metrics": {"accuracy": 0.5}, "pad": "x" * 100_000})
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        evaluation.unpack_result(big, "c1", 3)
    with pytest.raises(ProtocolError):
        evaluation.unpack_result(b"\x00" * 40, "c1", 3)
    fit_payload = pack({}, {"kind": "global", "round": 3})
    with pytest.raises(ProtocolError, match="not an evaluation result"):
        evaluation.unpack_result(fit_payload, "c1", 3)
