"""The gRPC service the clients call: :class:`FedFMService`, one method per RPC.

Every call is checked: the caller's address rate first (before any session, so forged sessions
cost the same), then protocol version, session and the client's rate; refusals are logged with
the client and reason and stored in ``server.sqlite``. What goes back to an unauthenticated peer
never says whether a client id exists. Streams are admitted and watched by
:class:`~fedfm.runtimes.grpc.guard.StreamGuard`; uploads are put together by
:class:`~fedfm.runtimes.grpc.uploads.Uploads`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator

import grpc

from fedfm.config import ServerConfig
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.runtimes.grpc import fedfm_pb2_grpc as pb_grpc
from fedfm.runtimes.grpc.auth import CLIENT_ID, ClientRegistry
from fedfm.runtimes.grpc.board import Board
from fedfm.runtimes.grpc.guard import RateLimiter, StreamGuard, peer_host
from fedfm.runtimes.grpc.protocol import VERSION, chunks
from fedfm.runtimes.grpc.store import ServerStore
from fedfm.runtimes.grpc.uploads import Uploads
from fedfm.signing import public_from_raw

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how soon an idle client asks again
# ... during a secure round, whose five stages each wait for every client's next poll
SECURE_POLL_SECONDS = 0.1
FIRST_MESSAGE_SECONDS = 5.0  # an unauthenticated stream must name its session this soon
JOINS_PER_SECOND = 5.0  # per peer address
MAX_LOGGED = 200  # characters of a peer's text that reach the log and the database


class FedFMService(pb_grpc.FedFMServicer):
    """The RPCs. Never raises into gRPC except through ``context.abort`` with a reason."""

    def __init__(
        self,
        board: Board,
        registry: ClientRegistry,
        store: ServerStore,
        settings: ServerConfig,
        client_config: str,
        run_name: str,
        stateful_downlink: bool,
        upload_limits: dict[str, int] | None = None,
    ) -> None:
        self.board = board
        self.registry = registry
        self.store = store
        self.settings = settings
        self.client_config = client_config
        self.run_name = run_name
        self.stateful_downlink = stateful_downlink
        self.limiter = RateLimiter(settings.max_requests_per_second)
        self.address_limiter = RateLimiter(settings.max_requests_per_address)
        self.join_limiter = RateLimiter(JOINS_PER_SECOND)
        self.uploads = Uploads(board, store, settings, upload_limits, run_name)
        self.guard = StreamGuard(
            settings.max_streams,
            settings.streams_per_address,
            settings.stream_idle_seconds,
            FIRST_MESSAGE_SECONDS,
            settings.stream_max_seconds,
        )

    # helpers ---------------------------------------------------------------------------------
    def _refuse(self, context, code, reason: str, client: str = "", rnd: int = 0, public=None):
        """Log and store ``reason``; the peer gets ``public`` (default: the reason itself)."""
        client, reason = client[:MAX_LOGGED], reason[:MAX_LOGGED]
        log.warning("refused %s: %s", client or context.peer(), reason)
        self.store.event("refused", client, rnd, reason)
        context.abort(code, reason if public is None else public)

    def _check_address(self, context) -> str:
        """The caller's address, refused when it calls too often (before any other check)."""
        host = peer_host(context.peer())
        if not self.address_limiter.allow(host):
            # not stored: a flood must not become a flood of database rows
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {self.settings.max_requests_per_address:g} requests per second "
                "from this address",
            )
        return host

    def _check_version(self, version: int, context) -> None:
        if version != VERSION:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {version} is not supported; this server speaks {VERSION}",
            )

    def _client(self, session: str, context) -> str:
        """The client behind a session; refuses floods, unknown sessions, revoked clients."""
        self._check_address(context)
        with self.board.lock:
            cid = self.board.sessions.get(session)
        if cid is None:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "unknown session; join first")
        if not self.registry.allowed(cid):
            with self.board.lock:
                self.board.sessions.pop(session, None)
            self._refuse(
                context, grpc.StatusCode.UNAUTHENTICATED, f"client {cid!r} has been revoked", cid
            )
        if not self.limiter.allow(cid):
            self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {self.settings.max_requests_per_second:g} requests per second",
                cid,
            )
        with self.board.lock:
            self.board.heard[cid] = time.monotonic()
        return cid

    def _tls_identity(self, context) -> str | None:
        names = context.auth_context().get("x509_common_name")
        return names[0].decode() if names else None

    def _pin_key(self, cid: str, public_key: bytes, context) -> None:
        """The client's upload-signing key: the one it first joined with is pinned (in
        ``server.sqlite``); a later join with another key, or with none, is refused."""
        if public_key:
            try:
                public_from_raw(public_key)
            except ValueError as e:
                self._refuse(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"the join's public key: {e}", cid
                )
        pinned = self.store.pinned_key(cid)
        if pinned is None and public_key:
            pinned = self.store.pin_key(cid, public_key)
        if pinned is not None and public_key != pinned:
            self._refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                f"client {cid!r} joined before with another signing key; join with that key "
                "(fedfm join --signing-key)",
                cid,
            )
        with self.board.lock:
            if public_key:
                self.board.client_keys[cid] = public_key
            else:
                self.board.client_keys.pop(cid, None)

    # RPCs ------------------------------------------------------------------------------------
    def Join(self, request, context):
        host = self._check_address(context)
        self._check_version(request.version, context)
        cid = request.client_id
        if not self.join_limiter.allow(host):
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many join attempts")
        if not CLIENT_ID.match(cid):  # before the id reaches the log or the database
            self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a client id of {len(cid)} characters that is not 1–128 letters, digits, "
                "'_', '.' or '-'",
            )
        denied = "unknown client or wrong token"  # the same for both: ids cannot be probed
        if self.settings.mutual_tls:
            identity = self._tls_identity(context)
            if identity != cid:
                self._refuse(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"client certificate names {identity!r}, the request names {cid!r}",
                    cid,
                )
        reason = self.registry.check(cid, request.token)
        if reason is not None:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, reason, cid, public=denied)
        self._pin_key(cid, request.public_key, context)
        session = secrets.token_urlsafe(24)
        peer = context.peer()
        now = time.monotonic()
        with self.board.lock:
            for old in [s for s, c in self.board.sessions.items() if c == cid]:
                old_peer = self.board.session_peers.pop(old, "")
                live = now - self.board.heard.get(cid, -1e9) < self.settings.client_timeout
                if live:
                    log.warning(
                        "client %s joined from %s while its session from %s was active: two "
                        "processes may hold one token (each join ends the other's session)",
                        cid,
                        peer,
                        old_peer,
                    )
                del self.board.sessions[old]  # a re-join replaces the old session
            self.board.sessions[session] = cid
            self.board.session_peers[session] = peer
            self.board.heard[cid] = now
        self.store.client_joined(cid)
        log.info("client %s joined from %s", cid, peer)
        return pb.JoinReply(
            version=VERSION,
            session=session,
            config_toml=self.client_config,
            client_index=self.registry.index(cid),
            run_name=self.run_name,
        )

    def Poll(self, request, context):
        self._check_version(request.version, context)
        cid = self._client(request.session, context)
        board = self.board
        with board.lock:
            if board.finished:
                if not request.heartbeat:  # the client's main loop has heard it
                    board.told_done.add(cid)
                return pb.PollReply(version=VERSION, kind=pb.PollReply.DONE)
            a = board.assignments.get(cid)
            if a is None or a.status != "open":
                return pb.PollReply(
                    version=VERSION,
                    kind=pb.PollReply.WAIT,
                    wait_seconds=SECURE_POLL_SECONDS if board.secure else POLL_SECONDS,
                )
            reply = pb.PollReply(
                version=VERSION,
                kind=pb.PollReply.FIT if a.fit else pb.PollReply.SECAGG,
                round=a.round,
                instructions_json=a.instructions_json,
                payload_size=len(a.payload),
                payload_sha256=a.payload_sha,
                deadline_seconds=max(0.0, a.deadline - time.monotonic()),
                chunk_size=self.settings.chunk_size,
                stage=a.stage,
                secagg_session=a.session,
                secagg_size=len(a.message),
                secagg_sha256=a.message_sha,
            )
        stale = a.round > 1 and request.last_round != a.round - 1
        if a.decodes_downlink and self.stateful_downlink and stale:
            blob, digest = board.sync_blob()
            reply.sync_size, reply.sync_sha256 = len(blob), digest
        return reply

    def Download(self, request, context) -> Iterator:
        self._check_version(request.version, context)
        cid = self._client(request.session, context)
        with self.guard.stream(context, peer_host(context.peer())) as (touch, busy):
            if busy:
                context.abort(grpc.StatusCode.UNAVAILABLE, busy)
            yield from self._download(cid, request, context, touch)

    def _download(self, cid, request, context, touch) -> Iterator:
        with self.board.lock:
            a = self.board.assignments.get(cid)
            if a is None or a.round != request.round or a.status != "open":
                self._refuse(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"no open work for round {request.round}",
                    cid,
                    request.round,
                )
            if request.what == "global" and a.fit:
                data, digest = a.payload, a.payload_sha
            elif request.what == "sync" and a.fit:
                data, digest = self.board.sync_blob()
                if request.offset == 0:
                    self.board.sync_bytes += len(data)
            elif request.what == "secagg" and a.stage:
                data, digest = a.message, a.message_sha
            else:
                self._refuse(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"download what = {request.what[:40]!r} in stage {a.stage or 'fit'!r}; "
                    "allowed: 'global' and 'sync' (fit), 'secagg' (secure aggregation)",
                    cid,
                )
        if request.offset > len(data):
            self._refuse(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {request.offset} is past the end ({len(data)} bytes)",
                cid,
            )
        for offset, piece in chunks(data, self.settings.chunk_size, request.offset):
            touch()
            yield pb.Chunk(
                version=VERSION,
                round=request.round,
                offset=offset,
                data=piece,
                total_size=len(data),
                sha256=digest,
            )

    def Upload(self, request_iterator, context):
        with self.guard.stream(context, peer_host(context.peer())) as (touch, busy):
            if busy:
                context.abort(grpc.StatusCode.UNAVAILABLE, busy)
            return self._upload(request_iterator, context, touch)

    def _upload(self, request_iterator, context, touch):
        board = self.board
        cid, upload, reason = None, None, None
        try:
            for chunk in request_iterator:
                if cid is None:
                    self._check_version(chunk.version, context)
                    cid = self._client(chunk.session, context)
                    touch(authenticated=True)
                    upload, reason = self.uploads.open(cid, chunk)
                    if reason:
                        break
                elif chunk.session and board.sessions.get(chunk.session) != cid:
                    reason = "a chunk of another session inside one upload"
                    break
                touch()
                reason = self.uploads.append(upload, chunk)
                if reason:
                    break
        except grpc.RpcError:  # the client went away mid-stream, or the guard cancelled it
            if upload is not None:
                self.uploads.suspend(cid, upload)
            return pb.UploadReply(version=VERSION, accepted=False)
        if cid is None:
            return pb.UploadReply(version=VERSION, accepted=False, reason="empty upload")
        if reason:
            self.uploads.reject(cid, upload, reason)
            return pb.UploadReply(version=VERSION, accepted=False, reason=reason)
        return self.uploads.complete(cid, upload)

    def UploadStatus(self, request, context):
        self._check_version(request.version, context)
        cid = self._client(request.session, context)
        with self.board.lock:
            if (cid, request.round, request.stage) in self.board.accepted:
                return pb.UploadReply(version=VERSION, accepted=True)
            up = self.board.uploads.get((cid, request.round, request.sha256))
            received = up.received if up else 0
        return pb.UploadReply(version=VERSION, accepted=False, received=received)
