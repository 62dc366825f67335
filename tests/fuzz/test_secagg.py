"""Fuzz secure aggregation: every message a party decodes and the step that consumes it.

The server's path is ``decode_message`` then ``receive_*`` (and, after the unmask round,
``result``); a client's is ``decode_message`` then ``share_keys``, ``masked_input``,
``consistency`` or ``unmask``. Each case runs a real 3-party protocol to the stage under test, then hands the
receiving party one hostile message in place of an honest one.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedfm.privacy.secagg import SecAggClient, SecAggServer, decode_message, encode_message
from tests.fuzz.payloads import hostile, hostile_payload

IDS = ["a", "b", "c"]
DIMENSION = 6
SESSION = "s1"


def run_to(stage: str):
    """(server, clients, the honest message of ``stage``'s receiver under test)."""
    server = SecAggServer(DIMENSION, 2, session=SESSION)
    clients = {c: SecAggClient(c, DIMENSION, session=SESSION) for c in IDS}
    keys = {c: p.advertise_keys() for c, p in clients.items()}
    if stage == "keys":
        server.receive_keys(keys["b"])
        return server, clients, keys["a"]
    for message in keys.values():
        server.receive_keys(message)
    roster = server.roster()
    if stage == "roster":
        return server, clients, roster
    shares = {c: p.share_keys(roster) for c, p in clients.items()}
    if stage == "shares":
        for c in ("b", "c"):
            server.receive_shares(shares[c])
        return server, clients, shares["a"]
    for message in shares.values():
        server.receive_shares(message)
    forwarded = server.forward_shares()
    if stage == "forwarded":
        return server, clients, forwarded["a"]
    masked = {c: p.masked_input(forwarded[c], np.ones(DIMENSION)) for c, p in clients.items()}
    if stage == "masked":
        for c in ("b", "c"):
            server.receive_masked(masked[c])
        return server, clients, masked["a"]
    for message in masked.values():
        server.receive_masked(message)
    announced = server.announce_survivors()
    if stage == "survivors":
        return server, clients, announced
    consents = {c: p.consistency(announced) for c, p in clients.items()}
    if stage == "consistency":
        server.receive_consistency(consents["b"])
        return server, clients, consents["a"]  # 1 of 3 signed, the threshold is 2
    for message in consents.values():
        server.receive_consistency(message)
    request = server.unmask_request()
    if stage == "request":
        return server, clients, request
    answers = {c: p.unmask(request) for c, p in clients.items()}
    server.receive_unmask(answers["b"])
    return server, clients, answers["a"]  # stage "unmask": 1 of 3 answered, the threshold is 2


def consume(stage: str, server, clients, payload: bytes) -> None:
    message = decode_message(payload)
    if stage == "keys":
        server.receive_keys(message)
        server.roster()
    elif stage == "roster":
        clients["a"].share_keys(message)
    elif stage == "shares":
        server.receive_shares(message)
        server.forward_shares()
    elif stage == "forwarded":
        clients["a"].masked_input(message, np.ones(DIMENSION))
    elif stage == "masked":
        server.receive_masked(message)
        server.announce_survivors()
    elif stage == "survivors":
        clients["a"].consistency(message)
    elif stage == "consistency":
        server.receive_consistency(message)
        server.unmask_request()
    elif stage == "request":
        clients["a"].unmask(message)
    else:
        server.receive_unmask(message)
        server.result()


STAGES = [
    "keys",
    "roster",
    "shares",
    "forwarded",
    "masked",
    "survivors",
    "consistency",
    "request",
    "unmask",
]


@pytest.mark.parametrize("stage", STAGES)
@given(data=st.data())
def test_a_hostile_message(stage, data):
    server, clients, honest = run_to(stage)
    payload = data.draw(hostile_payload(encode_message(honest)))
    hostile(f"secagg.{stage}", consume, stage, server, clients, payload)


@pytest.mark.parametrize("stage", STAGES)
def test_the_honest_message_is_accepted(stage):
    server, clients, honest = run_to(stage)
    consume(stage, server, clients, encode_message(honest))
