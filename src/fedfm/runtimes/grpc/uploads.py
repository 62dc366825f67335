"""Chunked uploads: each checked against the client's open work and the limits (round, stage,
declared size, chunk offsets, sizes and count, SHA-256), kept while partial so a client can
resume, and posted to the round loop once complete. Refusals are logged and stored.
"""

from __future__ import annotations

import logging

from fedfm.config import ServerConfig
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.runtimes.grpc.board import Board, PartialUpload
from fedfm.runtimes.grpc.protocol import VERSION, max_chunks, sha256
from fedfm.runtimes.grpc.store import ServerStore

log = logging.getLogger(__name__)


class Uploads:
    """The upload steps of the service: open, append a chunk, reject, complete."""

    def __init__(self, board: Board, store: ServerStore, settings: ServerConfig) -> None:
        self.board = board
        self.store = store
        self.settings = settings
        self.max_payload = int(settings.max_payload_mb * (1 << 20))

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
            if chunk.total_size < 1 or chunk.total_size > self.max_payload:
                return None, (
                    f"declared size {chunk.total_size} bytes is outside 1 … {self.max_payload}"
                )
            if len(chunk.sha256) != 64:
                return None, "the upload's sha256 is missing or malformed"
            key = (cid, chunk.round, chunk.sha256)
            up = board.uploads.get(key)
            if up is None or up.total != chunk.total_size:
                # a fresh upload replaces any other partial one of this client and round
                for k in [k for k in board.uploads if k[:2] == (cid, chunk.round)]:
                    del board.uploads[k]
                up = board.uploads[key] = PartialUpload(
                    chunk.round, chunk.stage, chunk.sha256, chunk.total_size
                )
            return up, None

    def append(self, up: PartialUpload, chunk) -> str | None:
        """Add one chunk to the upload; returns why it is refused, or None."""
        declared = (chunk.round, chunk.stage, chunk.sha256, chunk.total_size)
        if declared != (up.round, up.stage, up.sha, up.total):
            return "a chunk disagrees with its upload's round, stage, size or sha256"
        if chunk.offset != len(up.data):
            return f"chunk at offset {chunk.offset}, expected {len(up.data)}"
        if len(chunk.data) == 0 or len(chunk.data) > self.settings.chunk_size:
            return f"chunk of {len(chunk.data)} bytes; allowed 1 … {self.settings.chunk_size}"
        if len(up.data) + len(chunk.data) > up.total:
            return f"chunks exceed the declared size of {up.total} bytes"
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
                self.board.uploads.pop((cid, up.round, up.sha), None)

    def complete(self, cid: str, up: PartialUpload):
        """The reply once the stream ends: accepted (posted to the round loop), partial or refused."""
        if len(up.data) < up.total:  # the stream ended early: the client may resume
            return pb.UploadReply(version=VERSION, accepted=False, received=len(up.data))
        payload = bytes(up.data)
        if sha256(payload) != up.sha:
            reason = "the payload's sha256 does not match (corrupted in transit)"
            self.reject(cid, up, reason)
            return pb.UploadReply(version=VERSION, accepted=False, reason=reason)
        with self.board.lock:
            a = self.board.assignments.get(cid)
            if a is None or a.round != up.round or a.status != "open" or a.stage != up.stage:
                reason = f"round {up.round} closed before the upload completed (late)"
                self.board.uploads.pop((cid, up.round, up.sha), None)
                self.store.event("late", cid, up.round, reason)
                return pb.UploadReply(version=VERSION, accepted=False, reason=reason)
            a.status = "received"
            self.board.accepted.add((cid, up.round, up.stage))
            self.board.uploads.pop((cid, up.round, up.sha), None)
        # Stored only once the round loop has decoded and checked it (GrpcRuntime.keep).
        self.board.results.put((cid, up.round, up.stage, payload))
        return pb.UploadReply(version=VERSION, accepted=True, received=len(payload))
