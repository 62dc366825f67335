"""Fuzz what a client decodes from the server: fit instructions and the sync blob's state."""

from __future__ import annotations

import json
from collections import OrderedDict

import torch
from hypothesis import given
from hypothesis import strategies as st

from fedfm.client.app import ClientApp
from fedfm.codecs import Pipeline
from fedfm.codecs.wire import pack_groups, unpack_groups
from fedfm.runtimes.grpc.protocol import instructions_from_json
from fedfm.state import FitInstructions
from tests.fuzz.payloads import JSON, hostile, hostile_payload, to_json

TEMPLATE = OrderedDict(w=torch.zeros(3, 4), b=torch.zeros(4))
SYNC = pack_groups(
    {
        "client.view": dict(TEMPLATE),
        "client.view_memory": {"residual.step": torch.tensor([1])},
        "client.meta": {"view_round": torch.tensor([3])},
    }
)
INSTRUCTIONS = {"round": 3, "local_steps": 5, "lr": 0.01, "batch_size": 8, "local_epochs": 0.0}


@given(st.data())
def test_sync_blob_into_the_client(data):
    app = ClientApp(None, {}, Pipeline(()), Pipeline(()), TEMPLATE)
    blob = data.draw(hostile_payload(SYNC))
    hostile("client.load_view", lambda b: app.load_view(unpack_groups(b)), blob)


@given(st.data())
def test_instructions(data):
    fields = dict(INSTRUCTIONS)
    mode = data.draw(st.sampled_from(["fields", "any", "text"]))
    if mode == "fields":
        for key in data.draw(st.lists(st.sampled_from([*fields, "evaluate", "x"]), min_size=1)):
            fields[key] = data.draw(JSON)
        text = to_json(fields)
    elif mode == "any":
        text = to_json(data.draw(JSON))
    else:
        text = data.draw(st.text(max_size=200))
    out = hostile("instructions", instructions_from_json, text)
    if out is not None:  # what is accepted is a sane FitInstructions
        assert isinstance(out, FitInstructions)
        assert isinstance(out.round, int) and out.round >= 0
        assert isinstance(out.lr, float) and out.lr == out.lr


def test_valid_instructions_pass():
    assert instructions_from_json(json.dumps(INSTRUCTIONS)).local_steps == 5
