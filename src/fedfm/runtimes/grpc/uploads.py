"""Chunked uploads: each checked against the client's open work and the limits (round, stage,
declared size, chunk offsets, sizes and count, SHA-256), kept while partial so a client can
resume, and posted to the round loop once complete. Refusals are logged and stored. A client
that joined with a signing key signs every upload (:func:`fedfm.signing.upload_message`);
one whose signature does not verify is refused, and what a client signed is kept for the
round's provenance record.

Memory is bounded: the largest upload of each stage is derived from the model and the codec
chain (``limits``, see :meth:`fedfm.codecs.Pipeline.max_payload_bytes`), the bytes of every
partial upload together are capped (``server.max_partial_mb``), and a partial upload whose
stream ended waits on disk (``<run_dir>/partial/``), not in memory, until its client resumes.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

from fedfm.config import ServerConfig
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.runtimes.grpc.board import Board, PartialUpload
from fedfm.runtimes.grpc.protocol import VERSION, max_chunks, sha256
from fedfm.runtimes.grpc.store import ServerStore
from fedfm.signing import public_from_raw, signature_valid, upload_message

log = logging.getLogger(__name__)


class Uploads:
    """The upload steps of the service: open, append a chunk, reject, complete."""

    def __init__(
        self,
        board: Board,
        store: ServerStore,
        settings: ServerConfig,
        limits: dict[str, int] | None = None,
        run_name: str = "",
    ) -> None:
        self.board = board
        self.run_name = run_name  # part of what a client signs (a signature is for this run)
        self.store = store
        self.settings = settings
        self.max_payload = int(settings.max_payload_mb * (1 << 20))
        self.limits = limits or {}  # stage → largest acceptable upload (bytes)
        self.max_partial = int(settings.max_partial_mb * (1 << 20))
        self.spill_dir = Path(store.run_dir) / "partial"

    def limit(self, stage: str) -> int:
        """The largest upload accepted for ``stage``: the model's bound, within max_payload_mb."""
        return min(self.max_payload, self.limits.get(stage, self.max_payload))

    def _spill_path(self, cid: str, up: PartialUpload) -> Path:
        return self.spill_dir / f"{cid}.{up.round}.{up.sha}.part"

    def partial_bytes(self) -> int:
        """Bytes of every partial upload, in memory or on disk (call under the board's lock)."""
        return sum(u.received for u in self.board.uploads.values())

    def forget(self, key: tuple[str, int, str]) -> None:
        """Drop one partial upload and its file (call under the board's lock)."""
        up = self.board.uploads.pop(key, None)
        if up is not None:
            self._spill_path(key[0], up).unlink(missing_ok=True)

    def open(self, cid: str, chunk) -> tuple[PartialUpload | None, str | None]:
        """Start or resume an upload at its first chunk: ``(upload, None)`` or ``(None, reason)``."""
        board = self.board
        with board.lock:
            if (cid, chunk.round, chunk.stage) in board.accepted:
                return None, f"round {chunk.round}: an update was already accepted (replay)"
            a = board.assignments.get(cid)
            if a is None or a.round != chunk.round or a.status != "open":
                return None, f"round {chunk.round} is not open for this client (out-of-round)"
            if chunk.stage != a.stage:
                return None, (
                    f"round {chunk.round}: an upload for stage {chunk.stage or 'fit'!r}, the "
                    f"server waits for {a.stage or 'fit'!r}"
                )
            limit = self.limit(chunk.stage)
            if chunk.total_size < 1 or chunk.total_size > limit:
                return None, (
                    f"declared size {chunk.total_size} bytes is outside 1 … {limit} (the "
                    f"largest {chunk.stage or 'update'} this model and codec chain produce)"
                )
            if len(chunk.sha256) != 64 or any(c not in "0123456789abcdef" for c in chunk.sha256):
                return None, "the upload's sha256 is missing or malformed"
            if len(chunk.signature) > 64:
                return None, "the upload's signature is longer than an Ed25519 signature"
            if any(u.streaming for k, u in board.uploads.items() if k[0] == cid):
                return None, "another upload stream of this client is under way"
            key = (cid, chunk.round, chunk.sha256)
            up = board.uploads.get(key)
            if up is None or up.total != chunk.total_size:
                # a fresh upload replaces any other partial one of this client and round
                for k in [k for k in board.uploads if k[:2] == (cid, chunk.round)]:
                    self.forget(k)
                up = board.uploads[key] = PartialUpload(
                    chunk.round, chunk.stage, chunk.sha256, chunk.total_size
                )
            up.signature = chunk.signature
            if up.spilled:  # resume: the bytes so far come back from disk
                path = self._spill_path(cid, up)
                try:
                    up.data = bytearray(path.read_bytes()[: up.spilled])
                except OSError:
                    up.data = bytearray()
                path.unlink(missing_ok=True)
                up.spilled = 0
            up.streaming = True
            return up, None

    def append(self, up: PartialUpload, chunk) -> str | None:
        """Add one chunk to the upload; returns why it is refused, or None."""
        declared = (chunk.round, chunk.stage, chunk.sha256, chunk.total_size, chunk.signature)
        if declared != (up.round, up.stage, up.sha, up.total, up.signature):
            return "a chunk disagrees with its upload's round, stage, size, sha256 or signature"
        if chunk.offset != len(up.data):
            return f"chunk at offset {chunk.offset}, expected {len(up.data)}"
        if len(chunk.data) == 0 or len(chunk.data) > self.settings.chunk_size:
            return f"chunk of {len(chunk.data)} bytes; allowed 1 … {self.settings.chunk_size}"
        if len(up.data) + len(chunk.data) > up.total:
            return f"chunks exceed the declared size of {up.total} bytes"
        with self.board.lock:
            if self.partial_bytes() + len(chunk.data) > self.max_partial:
                return (
                    f"the server holds {self.max_partial} bytes of partial uploads "
                    "(server.max_partial_mb); try again later"
                )
        up.chunks += 1
        if up.chunks > max_chunks(up.total, 1024) + 1:
            return "too many chunks"
        up.data.extend(chunk.data)
        return None

    def reject(self, cid: str, up: PartialUpload | None, reason: str) -> None:
        """Log and store a refused upload, and drop what arrived of it."""
        rnd = up.round if up else 0
        log.warning("round %d: refused an upload of client %s: %s", rnd, cid, reason)
        self.store.event("upload_refused", cid, rnd, reason)
        if up is not None:
            with self.board.lock:
                self.forget((cid, up.round, up.sha))

    def complete(self, cid: str, up: PartialUpload):
        """The reply once the stream ends: accepted (posted to the round loop), partial or refused."""
        if len(up.data) < up.total:  # the stream ended early: the client may resume
            return pb.UploadReply(version=VERSION, accepted=False, received=self.suspend(cid, up))
        payload = bytes(up.data)
        if sha256(payload) != up.sha:
            reason = "the payload's sha256 does not match (corrupted in transit)"
            self.reject(cid, up, reason)
            return pb.UploadReply(version=VERSION, accepted=False, reason=reason)
        signed = self._signature(cid, up)
        if signed is None:
            reason = (
                "the upload's signature is missing or does not verify with the key this client "
                "joined with"
            )
            self.reject(cid, up, reason)
            return pb.UploadReply(version=VERSION, accepted=False, reason=reason)
        with self.board.lock:
            a = self.board.assignments.get(cid)
            if a is None or a.round != up.round or a.status != "open" or a.stage != up.stage:
                reason = f"round {up.round} closed before the upload completed (late)"
                self.forget((cid, up.round, up.sha))
                self.store.event("late", cid, up.round, reason)
                return pb.UploadReply(version=VERSION, accepted=False, reason=reason)
            a.status = "received"
            self.board.accepted.add((cid, up.round, up.stage))
            self.forget((cid, up.round, up.sha))
            if signed:
                self.board.signatures[(cid, up.sha)] = signed
        # Stored only once the round loop has decoded and checked it (GrpcRuntime.keep).
        self.board.results.put((cid, up.round, up.stage, payload))
        return pb.UploadReply(version=VERSION, accepted=True, received=len(payload))

    def _signature(self, cid: str, up: PartialUpload) -> dict[str, Any] | None:
        """What the client signed, for the provenance log ({} for a client without a key), or
        None when its signature does not verify."""
        with self.board.lock:
            raw = self.board.client_keys.get(cid)
        if raw is None:
            return {} if not up.signature else None
        message = upload_message(self.run_name, cid, up.round, up.stage, up.sha)
        if not signature_valid(public_from_raw(raw), up.signature, message):
            return None
        return {
            "round": up.round,
            "stage": up.stage,
            "public_key": base64.b64encode(raw).decode(),
            "signature": base64.b64encode(up.signature).decode(),
        }

    def suspend(self, cid: str, up: PartialUpload) -> int:
        """The stream of ``up`` ended before its last byte: move what arrived to disk (memory is
        freed now; the client may resume). Returns the bytes kept."""
        with self.board.lock:
            if self.board.uploads.get((cid, up.round, up.sha)) is not up:
                return 0  # replaced or forgotten meanwhile
            data, up.data = bytes(up.data), bytearray()
            up.streaming = False
            if data:
                try:
                    self.spill_dir.mkdir(parents=True, exist_ok=True)
                    self._spill_path(cid, up).write_bytes(data)
                except OSError as e:
                    log.warning("cannot keep a partial upload of %s on disk: %s", cid, e)
                    data = b""
            up.spilled = len(data)
            return up.spilled
