"""The simulation driver: :func:`secure_sum` runs the whole protocol among in-process parties,
every message crossing the wire format, and reports the sum and its costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fedfm.privacy.secagg.client import SecAggClient
from fedfm.privacy.secagg.messages import decode_message, encode_message
from fedfm.privacy.secagg.server import SecAggServer, resolve_threshold

SERVER = "server"  # the server's name in a transcript


class WireMessage(NamedTuple):
    """One message of a simulated run as it travelled.

    ``round`` names the round whose messages it carries (client → server) or closes (server →
    client): ``advertise_keys``, ``share_keys``, ``masked_input`` or ``unmask``.
    """

    round: str
    sender: str
    recipient: str
    payload: bytes


@dataclass(frozen=True)
class SecAggResult:
    """The outcome of :func:`secure_sum`: the decoded sum over ``survivors`` and its costs."""

    sum: np.ndarray  # float64 (d,)
    survivors: list[str]  # the clients whose vectors are in the sum
    bytes_up: int  # client → server wire bytes, all rounds
    bytes_down: int  # server → client wire bytes (a broadcast counts once per recipient)
    seconds: float  # wall time of the whole protocol, all parties on this machine


def secure_sum(
    vectors: Mapping[str, np.ndarray],
    threshold: int,
    fraction_bits: int = 16,
    modulus_bits: int = 32,
    drop_after_sharing: set[str] | frozenset[str] = frozenset(),
    seed: int = 0,
    *,
    drop_after_masking: set[str] | frozenset[str] = frozenset(),
    transcript: list[WireMessage] | None = None,
    session: str | None = None,
) -> SecAggResult:
    """Run the protocol among in-process clients and a server; every message crosses the wire format.

    ``vectors`` maps client ids to float vectors of one length; ``threshold`` 0 means a majority.
    Clients in ``drop_after_sharing`` vanish after round 1 (their vectors are not in the sum);
    those in ``drop_after_masking`` after round 2 (theirs are, but they do not help unmask). A
    client that dropped receives nothing more. ``seed`` shuffles the order in which the server
    receives each round's messages. Pass a list as ``transcript`` to get every payload.
    ``session`` names the protocol instance (default ``secure_sum/<seed>``).
    """
    ids = sorted(vectors)
    if not ids:
        raise ValueError("secure_sum needs at least one client")
    dimension = int(np.asarray(vectors[ids[0]]).size)
    if any(np.asarray(vectors[c]).shape != (dimension,) for c in ids):
        raise ValueError("secure_sum needs 1-D vectors of one length")
    unknown = (set(drop_after_sharing) | set(drop_after_masking)) - set(ids)
    if unknown:
        raise ValueError(f"dropped clients {sorted(unknown)} are not among the vectors' ids")
    session = f"secure_sum/{seed}" if session is None else session
    server = SecAggServer(
        dimension,
        resolve_threshold(threshold, len(ids)),
        fraction_bits=fraction_bits,
        modulus_bits=modulus_bits,
        session=session,
    )
    alive = [c for c in ids if c not in drop_after_sharing]
    return run_parties(
        server,
        ids,
        lambda c: np.asarray(vectors[c]) if c in alive else None,
        seed=seed,
        drop_after_masking=drop_after_masking,
        transcript=transcript,
    )


def run_parties(
    server: SecAggServer,
    sharers: Sequence[str],
    input_of: Callable[[str], np.ndarray | None],
    *,
    seed: int = 0,
    drop_after_masking: set[str] | frozenset[str] = frozenset(),
    transcript: list[WireMessage] | None = None,
) -> SecAggResult:
    """The protocol between ``server`` and in-process client parties: the driver of every
    in-process runtime. Every message crosses the wire format; ``server`` sees only messages.

    ``sharers`` take part in key sharing. At the masking stage each asks ``input_of(id)`` for
    its vector, computed on the client's side then; None means the client vanishes there
    (dropped or failed: it is not in the sum). ``seed`` shuffles arrival order.
    """
    start = time.perf_counter()
    ids = sorted(sharers)
    rng = np.random.default_rng(seed)
    options = {
        "fraction_bits": server.fraction_bits,
        "modulus_bits": server.modulus_bits,
        "session": server.session,
    }
    clients = {c: SecAggClient(c, server.dimension, **options) for c in ids}
    sent = {"up": 0, "down": 0}

    def carry(round_: str, client: str, message: dict[str, Any], up: bool) -> dict[str, Any]:
        payload = encode_message(message)
        sent["up" if up else "down"] += len(payload)
        if transcript is not None:
            sender, recipient = (client, SERVER) if up else (SERVER, client)
            transcript.append(WireMessage(round_, sender, recipient, payload))
        return decode_message(payload)

    def shuffled(group: list[str]) -> list[str]:
        return [group[i] for i in rng.permutation(len(group))]

    for c in shuffled(ids):
        server.receive_keys(carry("advertise_keys", c, clients[c].advertise_keys(), up=True))
    roster = server.roster()
    for c in shuffled(ids):
        shares = clients[c].share_keys(carry("advertise_keys", c, roster, up=False))
        server.receive_shares(carry("share_keys", c, shares, up=True))
    forwarded = server.forward_shares()
    masked_by: list[str] = []
    for c in shuffled(ids):
        vector = input_of(c)
        if vector is None:
            continue
        received = carry("share_keys", c, forwarded[c], up=False)
        masked = clients[c].masked_input(received, np.asarray(vector))
        server.receive_masked(carry("masked_input", c, masked, up=True))
        masked_by.append(c)
    request = server.unmask_request()
    for c in shuffled([c for c in sorted(masked_by) if c not in drop_after_masking]):
        answer = clients[c].unmask(carry("masked_input", c, request, up=False))
        server.receive_unmask(carry("unmask", c, answer, up=True))
    total = server.result()
    return SecAggResult(
        sum=total,
        survivors=server.survivors,
        bytes_up=sent["up"],
        bytes_down=sent["down"],
        seconds=time.perf_counter() - start,
    )
