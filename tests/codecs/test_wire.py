"""The wire format refuses hostile headers with ProtocolError only (issue #16, finding 1)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from fedfm.codecs.wire import HEADER_KEY, pack, unpack
from fedfm.errors import ProtocolError


def _payload(header_text: str) -> bytes:
    return save({"w": torch.zeros(1024)}, metadata={HEADER_KEY: header_text})


@pytest.mark.parametrize(
    "header",
    [
        '{"wire": "1", "num_examples": ' + "1" * 5000 + "}",  # int() refuses > 4300 digits
        '{"wire": "1", "metrics": {"loss": NaN}}',
        '{"wire": "1", "metrics": {"loss": 1e999}}',
        '{"wire": "1", "x": ' + "[" * 5000 + "]" * 5000 + "}",  # RecursionError
        '{"wire": "1", "x": ' + "[" * 40 + "]" * 40 + "}",
    ],
    ids=["5000-digit int", "NaN", "overflowing float", "deep nesting", "nesting over 16"],
)
def test_hostile_header_values_are_protocol_errors(header):
    payload = _payload(header)
    assert 4000 < len(payload) < 30000  # a small, well-formed safetensors payload
    with pytest.raises(ProtocolError, match="not allowed JSON"):
        unpack(payload)


def test_a_forged_header_length_is_refused_before_parsing():
    payload = bytearray(pack({"w": torch.zeros(4)}, {"client": "c"}))
    payload[:8] = (2**63).to_bytes(8, "little")
    with pytest.raises(ProtocolError, match="header length"):
        unpack(bytes(payload))


def test_honest_headers_still_pass():
    tensors, header = unpack(pack({"w": torch.ones(4)}, {"n": 2**62, "m": {"loss": 0.25}}))
    assert header["n"] == 2**62 and header["m"] == {"loss": 0.25}
    assert torch.equal(tensors["w"], torch.ones(4))
