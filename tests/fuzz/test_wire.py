"""Fuzz the wire format and the messages built on it: sync blobs and federated evaluation."""

from __future__ import annotations

from collections import OrderedDict

import torch
from hypothesis import given
from hypothesis import strategies as st

from fedfm.codecs import evaluation
from fedfm.codecs.wire import pack, pack_groups, unpack, unpack_groups
from tests.fuzz.payloads import hostile, hostile_payload

TEMPLATE = OrderedDict(w=torch.zeros(3, 4), b=torch.zeros(4))
VALID = pack(dict(TEMPLATE), {"client": "c1", "num_examples": 3, "metrics": {"loss": 0.5}})
SYNC = pack_groups(
    {"client.view": dict(TEMPLATE), "client.meta": {"view_round": torch.tensor([3])}}
)
REQUEST = evaluation.pack_request(TEMPLATE, 2)
RESULT = evaluation.pack_result("c1", 2, 10, {"accuracy": 0.5, "loss": 1.0})


@given(st.data())
def test_unpack(data):
    hostile("wire.unpack", unpack, data.draw(hostile_payload(VALID)))


@given(st.data())
def test_sync_blob(data):
    hostile("wire.unpack_groups", unpack_groups, data.draw(hostile_payload(SYNC)))


@given(st.data())
def test_evaluation_request(data):
    payload = data.draw(hostile_payload(REQUEST))
    hostile("evaluation.unpack_request", evaluation.unpack_request, payload, TEMPLATE, 2)


@given(st.data())
def test_evaluation_result(data):
    payload = data.draw(hostile_payload(RESULT))
    hostile("evaluation.unpack_result", evaluation.unpack_result, payload, "c1", 2)
