"""Fuzz every codec's decoder through Pipeline.decode, the path every received update takes."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedfm.codecs import CODECS, CodecContext, Pipeline
from tests.fuzz.payloads import hostile, hostile_payload

torch.manual_seed(0)
TEMPLATE = OrderedDict(
    [
        ("layer.lora_A.weight", torch.randn(4, 8)),
        ("layer.lora_B.weight", torch.randn(6, 4)),
        ("head.weight", torch.randn(3, 6)),
    ]
)
NEW = OrderedDict((k, v + 0.01 * torch.randn_like(v)) for k, v in TEMPLATE.items())
NEW["layer.lora_A.weight"][3] = 0  # a trimmable rank
NEW["layer.lora_B.weight"][:, 3] = 0
ARGUMENT = {"topk": "topk:0.25", "randk": "randk:0.5"}
CHAINS = [(ARGUMENT.get(name, name),) for name in CODECS.names()] + [
    ("delta", "topk:0.25", "int8", "zlib"),
    ("residual", "int4"),
    ("lora_trim", "randk:0.5", "fp16"),
]


def _valid(chain):
    pipe = Pipeline(chain)
    header = {"client": "c1", "num_examples": 3, "metrics": {"loss": 0.5}}
    ctx = CodecContext(2, TEMPLATE, {}, seed=7, reference_round=1)
    return pipe, pipe.encode(NEW, ctx, header)


@pytest.mark.parametrize("chain", CHAINS, ids=["+".join(c) for c in CHAINS])
@given(data=st.data())
def test_pipeline_decode(chain, data):
    pipe, valid = _valid(chain)
    payload = data.draw(hostile_payload(valid))
    ctx = CodecContext(2, TEMPLATE, {}, seed=7, reference_round=1)
    hostile(f"codec.{'+'.join(chain)}", pipe.decode, payload, ctx, TEMPLATE)


@pytest.mark.parametrize("chain", [(), ("delta", "int8", "zlib")], ids=["plain", "int8+zlib"])
@given(data=st.data())
def test_server_admission(chain, data):
    """The whole server path of an upload: decode, then the header's and values' limits."""
    from fedfm.runtimes.base import Runtime
    from fedfm.server.federation import Federation

    pipe, valid = _valid(chain)
    fed = Federation(
        strategy=None,
        runtime=Runtime(),
        client_ids=["c1"],
        clients_per_round=1,
        rounds=1,
        evaluate=None,
        up=pipe,
    )
    fed.client_view = TEMPLATE
    payload = data.draw(hostile_payload(valid))
    ctx_round = 2
    hostile(
        f"server.admit.{'+'.join(chain) or 'plain'}",
        fed._decode,
        ctx_round,
        "c1",
        payload,
        TEMPLATE,
    )
