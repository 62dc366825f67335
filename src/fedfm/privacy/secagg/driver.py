"""The one protocol driver: the server's side of a secure round, stage by stage, over any
transport. In-process runtimes (:func:`~fedfm.privacy.secagg.run_parties`) and the gRPC runtime
run the same :func:`drive`; a transport only moves bytes (an :data:`Exchange`).

Stages, in order (the round table of the package docstring): ``keys``, ``shares``, ``masked``,
``consistency``, ``unmask``. In each, the server sends every recipient its message (``keys``
has none: an empty payload), and each answer is decoded, checked (it names its sender; an
``ABORT`` is a client leaving) and fed to the :class:`~fedfm.privacy.secagg.SecAggServer`. A
client whose answer fails drops out; the round goes on while ≥ t remain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedfm.errors import NetworkError, ProtocolError
from fedfm.privacy.secagg.messages import ABORT, decode_message, encode_message
from fedfm.privacy.secagg.server import SecAggServer

log = logging.getLogger(__name__)

STAGES = ("keys", "shares", "masked", "consistency", "unmask")

# (stage, {client: payload}) → (client, its answer or why it has none), as answers arrive.
# A client that never answers may be left out (or reported as a NetworkError).
Exchange = Callable[[str, dict[str, bytes]], Iterable[tuple[str, bytes | Exception]]]


@dataclass
class SecAggResult:
    """The outcome of one protocol run: the decoded sum over ``survivors`` and its costs."""

    sum: np.ndarray  # float64 (d,)
    survivors: list[str]  # the clients whose vectors are in the sum
    bytes_up: int = 0  # client → server wire bytes, all rounds
    bytes_down: int = 0  # server → client wire bytes (a broadcast counts once per recipient)
    seconds: float = 0.0  # wall time of the whole protocol
    failures: list[tuple[str, Exception]] = field(default_factory=list)  # who dropped, and why


def drive(
    protocol: SecAggServer,
    sharers: Collection[str],
    exchange: Exchange,
    *,
    trainers: Collection[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    round_label: str = "",
) -> SecAggResult:
    """Run the protocol's five stages between ``protocol`` and the clients behind ``exchange``.

    ``sharers`` are asked for keys; of the key sharers, only ``trainers`` (all if None) are
    asked for a masked input. ``progress(done, total)`` follows the masked stage (the one that
    trains). Closing a stage below the threshold raises ProtocolError.
    """
    start = time.perf_counter()
    sent = {"up": 0, "down": 0}
    failures: list[tuple[str, Exception]] = []

    def stage(name: str, receive: Callable[[dict], None], messages: dict[str, Any]) -> None:
        encoded: dict[int, bytes] = {}  # a broadcast is encoded once
        payloads = {}
        for cid, message in messages.items():
            if message is None:
                payloads[cid] = b""
                continue
            if id(message) not in encoded:
                encoded[id(message)] = encode_message(message)
            payloads[cid] = encoded[id(message)]
        for done, (cid, answer) in enumerate(exchange(name, payloads), start=1):
            sent["down"] += len(payloads[cid])  # delivered: the client answered or was waited for
            try:
                if isinstance(answer, Exception):
                    raise answer
                sent["up"] += len(answer)
                message = decode_message(answer)
                if message.get("client") != cid:
                    raise ProtocolError(
                        f"a message naming client {message.get('client')!r} came from {cid!r}"
                    )
                if message.get("type") == ABORT:
                    raise ProtocolError(f"the client left: {message.get('reason')}")
                receive(message)
            except Exception as e:  # one client's message never stops the round
                if not isinstance(e, ProtocolError | NetworkError):
                    e = ProtocolError(f"undecodable message ({type(e).__name__}: {e})")
                log.warning(
                    "%sclient %s drops out of secure aggregation at stage %r: %s",
                    round_label,
                    cid,
                    name,
                    e,
                )
                failures.append((cid, e))
            if name == "masked" and progress is not None:
                progress(done, len(payloads))

    stage("keys", protocol.receive_keys, dict.fromkeys(sharers))
    roster = protocol.roster()
    stage("shares", protocol.receive_shares, dict.fromkeys(roster["clients"], roster))
    forwarded = protocol.forward_shares()
    if trainers is not None:
        forwarded = {c: m for c, m in forwarded.items() if c in set(trainers)}
    stage("masked", protocol.receive_masked, forwarded)
    announced = protocol.announce_survivors()
    stage("consistency", protocol.receive_consistency, dict.fromkeys(protocol.survivors, announced))
    request = protocol.unmask_request()
    stage("unmask", protocol.receive_unmask, dict.fromkeys(request["signers"], request))
    total = protocol.result()
    return SecAggResult(
        sum=total,
        survivors=protocol.survivors,
        bytes_up=sent["up"],
        bytes_down=sent["down"],
        seconds=time.perf_counter() - start,
        failures=failures,
    )
