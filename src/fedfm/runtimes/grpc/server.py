"""The gRPC runtime, server side: the service clients call, and the Runtime the round loop drives.

Clients pull: they ``Poll``; when the round loop has work for them they get FIT with the round's
instructions, download the payload in chunks (resumable from any offset), train, and upload in
chunks (resumable: ``UploadStatus`` tells how much arrived). A client whose downlink reference is
stale (it missed rounds, or the server resumed) first downloads a ``sync`` blob: the state and
decoder memory every up-to-date client holds, so delta-coded downlinks stay exact.

Every call is checked: protocol version, session, rate; every upload: its round (an out-of-round
or replayed update is refused), its size, chunk offsets and count, its SHA-256. Rejects are logged
with the client and reason and stored in ``server.sqlite``; the server keeps serving the others.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from fedfm.config import ServerConfig
from fedfm.errors import ConfigError, NetworkError, ProtocolError
from fedfm.runtimes.base import Runtime, SecureRound
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.runtimes.grpc import fedfm_pb2_grpc as pb_grpc
from fedfm.runtimes.grpc.auth import ClientRegistry, RateLimiter
from fedfm.runtimes.grpc.protocol import (
    VERSION,
    chunks,
    instructions_to_json,
    max_chunks,
    sha256,
)
from fedfm.server.store import ServerStore

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how soon an idle client asks again
# ... during a secure round, whose four stages each wait for every client's next poll
SECURE_POLL_SECONDS = 0.1
GRPC_OVERHEAD = 64 << 10  # room for the fields around a chunk's bytes


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
    # Secure aggregation: "" for a plain fit; "keys", "shares", "masked" (the fit, answered by a
    # masked input) or "unmask". ``message`` is the protocol's message to this client.
    stage: str = ""
    session: str = ""
    message: bytes = b""
    message_sha: str = ""

    @property
    def fit(self) -> bool:
        return self.stage in ("", "masked")


@dataclass
class PartialUpload:
    round: int
    stage: str
    sha: str
    total: int
    data: bytearray = field(default_factory=bytearray)
    chunks: int = 0


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
    ) -> None:
        self.board = board
        self.registry = registry
        self.store = store
        self.settings = settings
        self.client_config = client_config
        self.run_name = run_name
        self.stateful_downlink = stateful_downlink
        self.limiter = RateLimiter(settings.max_requests_per_second)
        self.max_payload = int(settings.max_payload_mb * (1 << 20))

    # helpers ---------------------------------------------------------------------------------
    def _refuse(self, context, code, reason: str, client: str = "", rnd: int = 0):
        log.warning("refused %s: %s", client or context.peer(), reason)
        self.store.event("refused", client, rnd, reason)
        context.abort(code, reason)

    def _check_version(self, version: int, context) -> None:
        if version != VERSION:
            self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {version} is not supported; this server speaks {VERSION}",
            )

    def _client(self, session: str, context) -> str:
        """The client behind a session; refuses unknown sessions, revoked clients, floods."""
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

    # RPCs ------------------------------------------------------------------------------------
    def Join(self, request, context):
        self._check_version(request.version, context)
        cid = request.client_id
        if not self.limiter.allow(f"join:{context.peer()}"):
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many join attempts")
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
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, reason, cid)
        session = secrets.token_urlsafe(24)
        with self.board.lock:
            for old in [s for s, c in self.board.sessions.items() if c == cid]:
                del self.board.sessions[old]  # a re-join replaces the old session
            self.board.sessions[session] = cid
            self.board.heard[cid] = time.monotonic()
        self.store.client_joined(cid)
        log.info("client %s joined from %s", cid, context.peer())
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
        if a.fit and self.stateful_downlink and stale:
            blob, digest = board.sync_blob()
            reply.sync_size, reply.sync_sha256 = len(blob), digest
        return reply

    def Download(self, request, context) -> Iterator:
        self._check_version(request.version, context)
        cid = self._client(request.session, context)
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
                    f"download what = {request.what!r} in stage {a.stage or 'fit'!r}; allowed: "
                    "'global' and 'sync' (fit), 'secagg' (secure aggregation)",
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
            yield pb.Chunk(
                version=VERSION,
                round=request.round,
                offset=offset,
                data=piece,
                total_size=len(data),
                sha256=digest,
            )

    def Upload(self, request_iterator, context):
        board = self.board
        cid, upload, reason = None, None, None
        try:
            for chunk in request_iterator:
                if cid is None:
                    self._check_version(chunk.version, context)
                    cid = self._client(chunk.session, context)
                    upload, reason = self._open_upload(cid, chunk)
                    if reason:
                        break
                elif chunk.session and board.sessions.get(chunk.session) != cid:
                    reason = "a chunk of another session inside one upload"
                    break
                reason = self._append(upload, chunk)
                if reason:
                    break
        except grpc.RpcError:  # the client went away mid-stream: keep what arrived
            return pb.UploadReply(version=VERSION, accepted=False)
        if cid is None:
            return pb.UploadReply(version=VERSION, accepted=False, reason="empty upload")
        if reason:
            self._reject_upload(cid, upload, reason)
            return pb.UploadReply(version=VERSION, accepted=False, reason=reason)
        return self._complete(cid, upload)

    def UploadStatus(self, request, context):
        self._check_version(request.version, context)
        cid = self._client(request.session, context)
        with self.board.lock:
            if (cid, request.round, request.stage) in self.board.accepted:
                return pb.UploadReply(version=VERSION, accepted=True)
            up = self.board.uploads.get((cid, request.round, request.sha256))
            received = len(up.data) if up else 0
        return pb.UploadReply(version=VERSION, accepted=False, received=received)

    # upload steps ----------------------------------------------------------------------------
    def _open_upload(self, cid: str, chunk) -> tuple[PartialUpload | None, str | None]:
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

    def _append(self, up: PartialUpload, chunk) -> str | None:
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

    def _reject_upload(self, cid: str, up: PartialUpload | None, reason: str) -> None:
        rnd = up.round if up else 0
        log.warning("round %d: refused an upload of client %s: %s", rnd, cid, reason)
        self.store.event("upload_refused", cid, rnd, reason)
        if up is not None:
            with self.board.lock:
                self.board.uploads.pop((cid, up.round, up.sha), None)

    def _complete(self, cid: str, up: PartialUpload):
        if len(up.data) < up.total:  # the stream ended early: the client may resume
            return pb.UploadReply(version=VERSION, accepted=False, received=len(up.data))
        payload = bytes(up.data)
        if sha256(payload) != up.sha:
            reason = "the payload's sha256 does not match (corrupted in transit)"
            self._reject_upload(cid, up, reason)
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
        if not up.stage:  # a masked input is worthless once its protocol instance is gone
            self.store.save_update(up.round, cid, payload)
        self.board.results.put((cid, up.round, up.stage, payload))
        return pb.UploadReply(version=VERSION, accepted=True, received=len(payload))


def server_credentials(settings: ServerConfig, base: Path) -> grpc.ServerCredentials | None:
    """TLS credentials from ``[server]`` (paths relative to ``base``), or None without TLS."""
    if not settings.tls:
        if settings.mutual_tls:
            raise ConfigError("server.mutual_tls = true needs server.tls = true")
        return None

    def path(value: str, default: str, key: str) -> Path:
        p = Path(value) if value else Path(settings.certs_dir) / default
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise ConfigError(
                f"server.{key} = {str(p)!r} does not exist; create test certificates with "
                f"`fedfm certs {settings.certs_dir}` or point server.{key} at yours"
            )
        return p

    cert = path(settings.certificate, "server.pem", "certificate").read_bytes()
    key = path(settings.private_key, "server.key", "private_key").read_bytes()
    root = None
    if settings.mutual_tls:
        root = path(settings.root_certificate, "ca.pem", "root_certificate").read_bytes()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=root, require_client_auth=settings.mutual_tls
    )


class GrpcRuntime(Runtime):
    """Drives network clients through the :class:`Board`; ``dispatch`` waits for their uploads."""

    def __init__(
        self,
        settings: ServerConfig,
        registry: ClientRegistry,
        store: ServerStore,
        client_config: str,
        run_name: str,
        stateful_downlink: bool,
        min_clients: int,
        base: Path = Path("."),
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.min_clients = min_clients
        self._started = False
        self.board = Board()
        self.service = FedFMService(
            self.board, registry, store, settings, client_config, run_name, stateful_downlink
        )
        limit = settings.chunk_size + GRPC_OVERHEAD
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        pb_grpc.add_FedFMServicer_to_server(self.service, self.server)
        credentials = server_credentials(settings, base)
        address = settings.address
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as e:
            raise NetworkError(f"cannot listen on server.address = {address!r}: {e}") from None
        if not self.port:
            raise NetworkError(f"cannot listen on server.address = {address!r}")
        self.server.start()
        host = address.rpartition(":")[0]
        log.info(
            "serving on %s:%d (%s)",
            host,
            self.port,
            "TLS" if credentials else "no TLS: loopback only",
        )

    # Runtime hooks ---------------------------------------------------------------------------
    def available(self, client_ids):
        """Clients heard from recently. Before this process's first round it waits (up to
        join_timeout) for min_clients of them; later rounds go on with whoever is connected."""
        needed = 1 if self._started else self.min_clients
        self._started = True
        deadline = time.monotonic() + self.settings.join_timeout
        last_report = 0.0
        while True:
            now = time.monotonic()
            with self.board.lock:
                live = [
                    c
                    for c in client_ids
                    if now - self.board.heard.get(c, -1e9) < self.settings.client_timeout
                    and c in self.board.sessions.values()
                ]
            if len(live) >= needed:
                return live
            if now > deadline:
                raise NetworkError(
                    f"only {len(live)} of the required {needed} clients "
                    f"(server.min_clients) connected within {self.settings.join_timeout:g} s"
                )
            if now - last_report > 10:
                log.info("waiting for clients: %d of %d connected", len(live), needed)
                last_report = now
            time.sleep(0.2)

    def take_extra_bytes(self) -> int:
        with self.board.lock:
            n, self.board.sync_bytes = self.board.sync_bytes, 0
        return n

    def prepare_round(self, rnd: int, sync: Callable[[], bytes] | None) -> None:
        with self.board.lock:
            self.board.round = rnd
            self.board.sync = sync

    def _assign(self, assignments: list[Assignment]) -> None:
        """Open this stage's work: every other assignment closes (late uploads are refused)."""
        with self.board.lock:
            self.board.assignments = {a.client_id: a for a in assignments}

    def _collect(
        self, rnd: int, stage: str, pending: set[str], start: float, deadline: float
    ) -> Iterator[tuple[str, bytes | Exception]]:
        """Each pending client's upload of ``stage`` as it arrives; a client past the round
        deadline, or silent for ``client_timeout``, yields a NetworkError instead."""
        board, pending = self.board, set(pending)
        while pending:
            try:
                cid, r, st, payload = board.results.get(timeout=0.2)
            except queue.Empty:
                cid = None
            if cid in pending and (r, st) == (rnd, stage):
                pending.discard(cid)
                yield cid, payload
            now = time.monotonic()
            for c in sorted(pending):
                with board.lock:
                    silent = now - board.heard.get(c, start) > self.settings.client_timeout
                if now > deadline or silent:
                    reason = (
                        f"missed the round deadline of {self.settings.round_timeout:g} s"
                        if now > deadline
                        else f"silent for more than {self.settings.client_timeout:g} s (lost)"
                    )
                    with board.lock:
                        board.assignments.pop(c, None)
                    self.store.event("straggler", c, rnd, reason)
                    pending.discard(c)
                    yield c, NetworkError(f"client {c} {reason}")

    def dispatch(self, tasks):
        start = time.monotonic()
        deadline = start + self.settings.round_timeout
        rnd = tasks[0].instructions.round if tasks else 0
        self.store.round_started(rnd, [t.client_id for t in tasks])
        self._forget_uploads_before(rnd)
        open_work: list[Assignment] = []
        for task in tasks:
            stored = self.store.stored_update(rnd, task.client_id)
            if stored is not None:  # arrived before a server restart: not asked again
                log.info("round %d: reusing the stored update of client %s", rnd, task.client_id)
                with self.board.lock:
                    self.board.accepted.add((task.client_id, rnd, ""))
                yield task.client_id, stored
                continue
            open_work.append(self._fit_assignment(task, deadline))
        self._assign(open_work)
        received: list[str] = []
        pending = {a.client_id for a in open_work}
        for cid, result in self._collect(rnd, "", pending, start, deadline):
            if not isinstance(result, Exception):
                received.append(cid)
            yield cid, result
        self._assign([])
        self.store.round_finished(rnd, received)

    def _forget_uploads_before(self, rnd: int) -> None:
        with self.board.lock:
            for k in [k for k in self.board.uploads if k[1] < rnd]:
                del self.board.uploads[k]

    def _fit_assignment(self, task, deadline: float, **secure) -> Assignment:
        return Assignment(
            task.client_id,
            task.instructions.round,
            instructions_to_json(task.instructions),
            task.payload,
            sha256(task.payload),
            deadline,
            **secure,
        )

    # secure aggregation -----------------------------------------------------------------------
    carries_secure_aggregation = True

    def secure_dispatch(self, rnd: int, tasks, sharers: list[str], protocol, progress=None):
        """One round under secure aggregation: the four protocol rounds of
        :mod:`fedfm.privacy.secagg` carried as stages, the fit inside the third.

        ``sharers`` take part in key sharing (the selected clients, including those that the
        simulated faults drop before training); ``tasks`` are the clients asked to train, whose
        upload is a masked input instead of an update. ``protocol`` is the server's
        :class:`~fedfm.privacy.secagg.SecAggServer`; the server never sees an update, only the
        sum. Clients that fail a stage (lost, late, or a message the protocol refuses) drop out;
        fewer than the threshold raises :class:`~fedfm.errors.ProtocolError`.
        """
        from fedfm.privacy.secagg import ABORT, decode_message, encode_message

        start = time.monotonic()
        deadline = start + self.settings.round_timeout
        self.store.round_started(rnd, [t.client_id for t in tasks])
        self._forget_uploads_before(rnd)
        out = SecureRound()
        session = protocol.session
        with self.board.lock:
            self.board.secure = True

        def stage(name, receive, messages: dict[str, bytes], fits: dict | None = None) -> None:
            """Send each client its message, feed each answer to the protocol as it arrives."""
            work = []
            for cid, message in messages.items():
                secure = {"stage": name, "session": session, "message": message}
                secure["message_sha"] = sha256(message)
                if fits is None:
                    work.append(Assignment(cid, rnd, "", b"", "", deadline, **secure))
                else:
                    work.append(self._fit_assignment(fits[cid], deadline, **secure))
                out.bytes_down += len(message)
            self._assign(work)
            answers = self._collect(rnd, name, set(messages), start, deadline)
            for answered, (cid, result) in enumerate(answers, start=1):
                try:
                    if isinstance(result, Exception):
                        raise result
                    out.bytes_up += len(result)
                    message = decode_message(result)
                    if message.get("client") != cid:
                        raise ProtocolError(
                            f"a message naming client {message.get('client')!r} came from {cid!r}"
                        )
                    if message.get("type") == ABORT:
                        raise ProtocolError(f"the client left: {message.get('reason')}")
                    receive(message)
                except (ProtocolError, NetworkError) as e:
                    log.warning(
                        "round %d: %s drops out of secure aggregation at stage %r: %s",
                        rnd,
                        cid,
                        name,
                        e,
                    )
                    out.failures.append((cid, e))
                if fits is not None and progress is not None:
                    progress(answered, len(messages))
            self._assign([])

        try:
            stage("keys", protocol.receive_keys, dict.fromkeys(sharers, b""))
            roster = protocol.roster()  # raises below the threshold, as every closing step does
            encoded = encode_message(roster)
            stage("shares", protocol.receive_shares, dict.fromkeys(roster["clients"], encoded))
            forwarded = protocol.forward_shares()
            fits = {t.client_id: t for t in tasks if t.client_id in forwarded}
            masked = {cid: encode_message(forwarded[cid]) for cid in fits}
            stage("masked", protocol.receive_masked, masked, fits)
            request = protocol.unmask_request()
            encoded = encode_message(request)
            stage("unmask", protocol.receive_unmask, dict.fromkeys(request["survivors"], encoded))
        finally:
            with self.board.lock:
                self.board.secure = False
        out.sum = protocol.result()
        out.survivors = protocol.survivors
        out.seconds = time.monotonic() - start
        self.store.round_finished(rnd, out.survivors)
        return out

    # asynchronous rounds: real time --------------------------------------------------------
    def submit(self, task, eta: float = 0.0) -> None:
        """Open work for one client; it picks it up at its next poll."""
        rnd = task.instructions.round
        deadline = time.monotonic() + self.settings.round_timeout
        with self.board.lock:
            self.board.round = rnd
            self.board.assignments[task.client_id] = Assignment(
                task.client_id,
                rnd,
                instructions_to_json(task.instructions),
                task.payload,
                sha256(task.payload),
                deadline,
            )
        if not hasattr(self, "_async_start"):
            self._async_start = time.monotonic()
            self._async_pending: dict[str, float] = {}
        self._async_pending[task.client_id] = deadline

    def next_result(self):
        """Wait for the next upload (or a deadline, or a lost client)."""
        board = self.board
        while True:
            try:
                cid, _, _, result = board.results.get(timeout=0.2)
            except queue.Empty:
                cid, result = None, None
            now = time.monotonic()
            if cid is not None and cid in self._async_pending:
                del self._async_pending[cid]
                return cid, result, now - self._async_start
            for c, deadline in sorted(self._async_pending.items()):
                with board.lock:
                    silent = now - board.heard.get(c, now) > self.settings.client_timeout
                if now > deadline or silent:
                    del self._async_pending[c]
                    with board.lock:
                        a = board.assignments.pop(c, None)
                    reason = "missed its deadline" if now > deadline else "went silent (lost)"
                    self.store.event("straggler", c, a.round if a else 0, reason)
                    return c, NetworkError(f"client {c} {reason}"), now - self._async_start

    def close(self) -> None:
        """Tell polling clients the run is over (up to ``linger`` seconds), then stop."""
        with self.board.lock:
            self.board.finished = True
            self.board.assignments.clear()
        deadline = time.monotonic() + self.settings.linger
        while time.monotonic() < deadline:
            with self.board.lock:
                connected = set(self.board.sessions.values())
                live = {
                    c
                    for c in connected
                    if time.monotonic() - self.board.heard.get(c, -1e9)
                    < self.settings.client_timeout
                }
                if live <= self.board.told_done:
                    break
            time.sleep(0.1)
        self.server.stop(grace=1.0).wait()
        self.store.close()
