"""The in-process transport: :func:`secure_sum` and :func:`run_parties` run the protocol among
in-process parties through the one driver (:func:`~fedfm.privacy.secagg.driver.drive`), every
message crossing the wire format, and report the sum and its costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedfm.errors import ProtocolError
from fedfm.privacy.secagg.client import SecAggClient
from fedfm.privacy.secagg.driver import STAGES, SecAggResult, drive
from fedfm.privacy.secagg.messages import ABORT, decode_message, encode_message
from fedfm.privacy.secagg.server import SecAggServer, resolve_threshold
from fedfm.signing import TrustedKeys, raw_public

SERVER = "server"  # the server's name in a transcript

# (stage, client, the message the server sends it) → the message it receives instead: stands in
# for an active (malicious) server in tests.
Tamper = Callable[[str, str, dict[str, Any]], dict[str, Any]]


class WireMessage(NamedTuple):
    """One message of a simulated run as it travelled.

    ``round`` is the stage it belongs to (:data:`~fedfm.privacy.secagg.driver.STAGES`): the
    server's request (server → client) or the client's answer (client → server).
    """

    round: str
    sender: str
    recipient: str
    payload: bytes


def secure_sum(
    vectors: Mapping[str, np.ndarray],
    threshold: int,
    fraction_bits: int = 16,
    modulus_bits: int = 32,
    drop_after_sharing: set[str] | frozenset[str] = frozenset(),
    seed: int = 0,
    *,
    drop_after_masking: set[str] | frozenset[str] = frozenset(),
    vanish: Mapping[str, str] | None = None,
    transcript: list[WireMessage] | None = None,
    session: str | None = None,
    server: SecAggServer | None = None,
    tamper: Tamper | None = None,
) -> SecAggResult:
    """Run the protocol among in-process clients and a server; every message crosses the wire format.

    ``vectors`` maps client ids to float vectors of one length; ``threshold`` 0 means a majority.
    Clients in ``drop_after_sharing`` vanish after round 1 (their vectors are not in the sum);
    those in ``drop_after_masking`` after round 2 (theirs are, but they do not help unmask).
    ``vanish`` maps a client to the first stage it does not answer (any of
    :data:`~fedfm.privacy.secagg.driver.STAGES`). A client that dropped receives nothing more.
    ``seed`` shuffles the order in which the server receives each round's messages. Pass a list
    as ``transcript`` to get every payload. ``session`` names the protocol instance (default
    ``secure_sum/<seed>``); ``server`` replaces the honest server, ``tamper`` rewrites what it
    sends (both: an active server, for tests).
    """
    ids = sorted(vectors)
    if not ids:
        raise ValueError("secure_sum needs at least one client")
    dimension = int(np.asarray(vectors[ids[0]]).size)
    if any(np.asarray(vectors[c]).shape != (dimension,) for c in ids):
        raise ValueError("secure_sum needs 1-D vectors of one length")
    gone = {c: "masked" for c in drop_after_sharing} | {
        c: "consistency" for c in drop_after_masking
    }
    gone |= dict(vanish or {})
    unknown = set(gone) - set(ids)
    if unknown:
        raise ValueError(f"dropped clients {sorted(unknown)} are not among the vectors' ids")
    bad = sorted(set(gone.values()) - set(STAGES))
    if bad:
        raise ValueError(f"vanish stage {bad[0]!r} is not allowed; allowed: {', '.join(STAGES)}")
    session = f"secure_sum/{seed}" if session is None else session
    if server is None:
        server = SecAggServer(
            dimension,
            resolve_threshold(threshold, len(ids)),
            fraction_bits=fraction_bits,
            modulus_bits=modulus_bits,
            session=session,
        )
    return run_parties(
        server,
        ids,
        lambda c: np.asarray(vectors[c]),
        seed=seed,
        vanish=gone,
        transcript=transcript,
        tamper=tamper,
    )


def run_parties(
    server: SecAggServer,
    sharers: Sequence[str],
    input_of: Callable[[str], np.ndarray | None],
    *,
    seed: int = 0,
    trainers: Sequence[str] | None = None,
    vanish: Mapping[str, str] | None = None,
    transcript: list[WireMessage] | None = None,
    tamper: Tamper | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SecAggResult:
    """The protocol between ``server`` and in-process client parties: the transport of every
    in-process runtime, under the one driver. ``server`` sees only messages.

    ``sharers`` take part in key sharing; ``trainers`` (all sharers if None) are asked for a
    masked input. Each asks ``input_of(id)`` for its vector, computed on the client's side then;
    None means the client vanishes there (dropped or failed: it is not in the sum). ``vanish``
    maps a client to the first stage it does not answer. ``seed`` shuffles arrival order. The
    in-process clients hold fresh Ed25519 keys and pin each other's (this process is their PKI).
    """
    rng = np.random.default_rng(seed)
    vanish = dict(vanish or {})
    options = {
        "fraction_bits": server.fraction_bits,
        "modulus_bits": server.modulus_bits,
        "session": server.session,
    }
    signing = {c: Ed25519PrivateKey.generate() for c in sorted(sharers)}
    pinned = {c: raw_public(k) for c, k in signing.items()}
    clients = {
        c: SecAggClient(c, server.dimension, signing_key=k, trusted=TrustedKeys(pinned), **options)
        for c, k in signing.items()
    }
    gone: set[str] = set()
    rank = {stage: i for i, stage in enumerate(STAGES)}

    def wire(stage: str, sender: str, recipient: str, payload: bytes) -> None:
        if transcript is not None:
            transcript.append(WireMessage(stage, sender, recipient, payload))

    def answer(stage: str, cid: str, payload: bytes) -> dict[str, Any] | None:
        party = clients[cid]
        if stage == "keys":
            return party.advertise_keys()
        message = decode_message(payload)
        if tamper is not None:
            message = tamper(stage, cid, message)
        if stage == "shares":
            return party.share_keys(message)
        if stage == "masked":
            vector = input_of(cid)
            return None if vector is None else party.masked_input(message, np.asarray(vector))
        return party.consistency(message) if stage == "consistency" else party.unmask(message)

    def exchange(stage: str, payloads: dict[str, bytes]) -> Iterator[tuple[str, bytes]]:
        order = sorted(payloads)
        for cid in [order[i] for i in rng.permutation(len(order))]:
            if cid in gone or rank[stage] >= rank.get(vanish.get(cid, ""), len(STAGES)):
                gone.add(cid)
                continue
            if payloads[cid]:
                wire(stage, SERVER, cid, payloads[cid])
            try:
                message = answer(stage, cid, payloads[cid])
            except ProtocolError as e:  # the client refuses: it leaves, and says so
                gone.add(cid)
                reason = str(e)[:500]
                message = {"type": ABORT, "session": server.session, "client": cid}
                message["reason"] = reason
            if message is None:
                gone.add(cid)
                continue
            payload = encode_message(message)
            wire(stage, cid, SERVER, payload)
            yield cid, payload

    return drive(server, sharers, exchange, trainers=trainers, progress=progress)
