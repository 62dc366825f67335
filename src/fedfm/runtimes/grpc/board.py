"""The board: what the gRPC service threads and the round loop share, under one lock.

:class:`Assignment` is one client's open work, :class:`PartialUpload` an upload under way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedfm.runtimes.grpc.protocol import sha256


@dataclass
class Assignment:
    """One client's work in the current round, and what became of it."""

    client_id: str
    round: int
    instructions_json: str
    payload: bytes
    payload_sha: str
    deadline: float
    status: str = "open"  # open | received
    # "" for a plain fit; "evaluate" for federated evaluation (the payload is the state to score,
    # the answer a few figures); secure aggregation: "keys", "shares", "masked" (the fit,
    # answered by a masked input), "consistency" or "unmask". ``message`` is the protocol's message.
    stage: str = ""
    session: str = ""
    message: bytes = b""
    message_sha: str = ""

    @property
    def fit(self) -> bool:
        """Work on the round's payload (Poll kind FIT): a fit, masked or not, or evaluation."""
        return self.stage in ("", "masked", "evaluate")

    @property
    def decodes_downlink(self) -> bool:
        """The payload is the round's codec-coded downlink (evaluation's is sent as it is)."""
        return self.stage in ("", "masked")


@dataclass
class PartialUpload:
    """An upload under way: the bytes so far of one client's payload for one round and stage."""

    round: int
    stage: str
    sha: str
    total: int
    data: bytearray = field(default_factory=bytearray)
    chunks: int = 0
    # Between streams the bytes so far wait on disk, not in memory (``spilled`` of them).
    spilled: int = 0
    streaming: bool = False  # a stream is appending to it now (one at a time)
    signature: bytes = b""  # the client's Ed25519 signature of the upload (see Uploads)

    @property
    def received(self) -> int:
        return len(self.data) if self.streaming else self.spilled


class Board:
    """What the service threads and the round loop share, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.assignments: dict[str, Assignment] = {}
        self.uploads: dict[tuple[str, int, str], PartialUpload] = {}
        self.accepted: set[tuple[str, int, str]] = set()  # (client, round, stage)
        # (client, round, stage, payload) of every accepted upload, in arrival order
        self.results: queue.Queue[tuple[str, int, str, bytes]] = queue.Queue()
        self.heard: dict[str, float] = {}
        self.sessions: dict[str, str] = {}  # session → client id
        self.client_keys: dict[str, bytes] = {}  # client → its pinned Ed25519 key (raw)
        # (client, payload sha256) → what it signed: round, stage, key and signature (base64)
        self.signatures: dict[tuple[str, str], dict[str, Any]] = {}
        self.session_peers: dict[str, str] = {}  # session → the peer that joined with it
        self.finished = False
        self.told_done: set[str] = set()
        self.sync_bytes = 0  # sync blobs sent this round
        self.secure = False  # a secure-aggregation round is under way
        self.round = 0
        self.sync: Callable[[], bytes] | None = None
        self._sync_blob: tuple[int, bytes, str] | None = None

    def sync_blob(self) -> tuple[bytes, str]:
        with self.lock:
            if self._sync_blob is None or self._sync_blob[0] != self.round:
                blob = self.sync() if self.sync is not None else b""
                self._sync_blob = (self.round, blob, sha256(blob))
            return self._sync_blob[1], self._sync_blob[2]
