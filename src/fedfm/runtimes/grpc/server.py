"""The gRPC runtime, server side: the service clients call, and the Runtime the round loop drives.

Clients pull: they ``Poll``; when the round loop has work for them they get FIT with the round's
instructions, download the payload in chunks (resumable from any offset), train, and upload in
chunks (resumable: ``UploadStatus`` tells how much arrived). A client whose downlink reference is
stale (it missed rounds, or the server resumed) first downloads a ``sync`` blob: the state and
decoder memory every up-to-date client holds, so delta-coded downlinks stay exact.

Every call is checked: protocol version, session, rate; every upload: its round (an out-of-round
or replayed update is refused), its size, chunk offsets and count, its SHA-256. Rejects are logged
with the client and reason and stored in ``server.sqlite``; the server keeps serving the others.

Here: :class:`GrpcRuntime` (listening, round dispatch, secure dispatch, asynchronous rounds) and
its TLS credentials (:func:`~fedfm.runtimes.grpc.certs.server_credentials`). The RPCs are in :mod:`~fedfm.runtimes.grpc.servicer`, the upload checks in
:mod:`~fedfm.runtimes.grpc.uploads`, the shared state in :mod:`~fedfm.runtimes.grpc.board`.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc

from fedfm.config import ServerConfig
from fedfm.errors import NetworkError
from fedfm.privacy.secagg import drive
from fedfm.runtimes.base import Runtime, SecureRound
from fedfm.runtimes.grpc import fedfm_pb2_grpc as pb_grpc
from fedfm.runtimes.grpc.auth import ClientRegistry
from fedfm.runtimes.grpc.board import Assignment, Board
from fedfm.runtimes.grpc.certs import server_credentials
from fedfm.runtimes.grpc.protocol import instructions_to_json, sha256
from fedfm.runtimes.grpc.servicer import FedFMService
from fedfm.runtimes.grpc.store import ServerStore

log = logging.getLogger(__name__)

GRPC_OVERHEAD = 64 << 10  # room for the fields around a chunk's bytes
UNARY_WORKERS = 16  # threads no stream can take


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
        upload_limits: dict[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.min_clients = min_clients
        self._started = False
        self.board = Board()
        self.service = FedFMService(
            self.board,
            registry,
            store,
            settings,
            client_config,
            run_name,
            stateful_downlink,
            upload_limits,
        )
        limit = settings.chunk_size + GRPC_OVERHEAD
        # Streams take at most max_streams threads (the service's guard); the others are kept
        # for Join, Poll and heartbeats. Calls beyond the queue are refused, not queued forever.
        workers = settings.max_streams + UNARY_WORKERS
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers),
            maximum_concurrent_rpcs=4 * workers,
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
            live = self._live(client_ids, now)
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

    def _live(self, client_ids, now: float) -> list[str]:
        """The clients with a session that were heard from within ``client_timeout``."""
        with self.board.lock:
            return [
                c
                for c in client_ids
                if now - self.board.heard.get(c, -1e9) < self.settings.client_timeout
                and c in self.board.sessions.values()
            ]

    def live_status(self) -> dict[str, list[str]]:
        """What the server knows now and no file records (the dashboard shows it): the
        connected clients."""
        return {"connected": self._live(list(self.registry.order), time.monotonic())}

    def keep(self, rnd: int, client_id: str, payload: bytes) -> None:
        """An admitted update, stored durably so that a resumed server reuses it (with what
        its client signed)."""
        self.store.save_update(rnd, client_id, payload)
        with self.board.lock:
            signed = self.board.signatures.get((client_id, sha256(payload)))
        if signed:
            self.store.save_signature(rnd, client_id, signed)

    def upload_signatures(self, payloads):
        with self.board.lock:
            found = {
                c: self.board.signatures.pop((c, sha256(p)), None) for c, p in payloads.items()
            }
        return {c: s for c, s in found.items() if s}

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
                signed = self.store.stored_signature(rnd, task.client_id)
                with self.board.lock:
                    self.board.accepted.add((task.client_id, rnd, ""))
                    if signed:
                        self.board.signatures[(task.client_id, sha256(stored))] = signed
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

    def evaluate(self, tasks):
        """Federated evaluation: the stage ``evaluate`` of the round, whose answers are a few
        figures (never stored as updates); the round's downlink bookkeeping is untouched."""
        start = time.monotonic()
        deadline = start + self.settings.round_timeout
        rnd = tasks[0].instructions.round if tasks else 0
        work = [self._fit_assignment(t, deadline, stage="evaluate") for t in tasks]
        self._assign(work)
        pending = {a.client_id for a in work}
        yield from self._collect(rnd, "evaluate", pending, start, deadline)
        self._assign([])

    def _forget_uploads_before(self, rnd: int) -> None:
        with self.board.lock:
            for k in [k for k in self.board.uploads if k[1] < rnd]:
                self.service.uploads.forget(k)
            signatures = self.board.signatures  # of uploads never admitted (or evaluations)
            for k in [k for k, s in signatures.items() if s["round"] < rnd]:
                del signatures[k]

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
        """One round under secure aggregation: the stages of :mod:`fedfm.privacy.secagg` run by
        its one driver (:func:`~fedfm.privacy.secagg.drive`), this runtime carrying each
        stage's messages; the fit happens inside the ``masked`` stage.

        ``sharers`` take part in key sharing (the selected clients, including those that the
        simulated faults drop before training); ``tasks`` are the clients asked to train, whose
        upload is a masked input instead of an update. ``protocol`` is the server's
        :class:`~fedfm.privacy.secagg.SecAggServer`; it learns the signing key each client
        joined with, so round-0 keys signed with another are refused. The server never sees an
        update, only the sum. Clients that fail a stage (lost, late, or a message the protocol
        refuses) drop out; fewer than the threshold raises :class:`~fedfm.errors.ProtocolError`.
        """
        start = time.monotonic()
        deadline = start + self.settings.round_timeout
        self.store.round_started(rnd, [t.client_id for t in tasks])
        self._forget_uploads_before(rnd)
        session = protocol.session
        fits = {t.client_id: t for t in tasks}
        with self.board.lock:
            self.board.secure = True
            protocol.signing_keys = self.board.client_keys  # live: clients may join meanwhile

        def exchange(name: str, payloads: dict[str, bytes]):
            """Send each client its message; yield each answer as it arrives."""
            work = []
            for cid, message in payloads.items():
                secure = {"stage": name, "session": session, "message": message}
                secure["message_sha"] = sha256(message)
                if name == "masked":
                    work.append(self._fit_assignment(fits[cid], deadline, **secure))
                else:
                    work.append(Assignment(cid, rnd, "", b"", "", deadline, **secure))
            self._assign(work)
            yield from self._collect(rnd, name, set(payloads), start, deadline)
            self._assign([])

        try:
            result = drive(
                protocol,
                sharers,
                exchange,
                trainers=fits,
                progress=progress,
                round_label=f"round {rnd}: ",
            )
        finally:
            with self.board.lock:
                self.board.secure = False
        out = SecureRound(
            sum=result.sum,
            survivors=result.survivors,
            bytes_up=result.bytes_up,
            bytes_down=result.bytes_down,
            seconds=time.monotonic() - start,
            failures=result.failures,
        )
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
        self.service.guard.close()
        # bounded: a stuck handler must not keep a finished (or crashed) server alive
        if not self.server.stop(grace=1.0).wait(timeout=10.0):
            log.warning("the gRPC server did not stop within 10 s; leaving it to exit")
        self.store.close()
