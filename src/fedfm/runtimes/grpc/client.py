"""The gRPC runtime, client side: ``fedfm join`` connects, pulls work, trains, pushes updates.

Reliability: every call retries with exponential back-off while the server is unreachable (up
to ``retry_seconds`` in a row); a server restart (unknown session) triggers a re-join; downloads
and uploads resume from the last byte the other end acknowledged. A heartbeat keeps the client
alive in the server's eyes while it trains. Every upload is signed with the client's Ed25519
key (``--signing-key``), which the server pins at the first join and records in its provenance
log.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedfm.assemble import node_app
from fedfm.client.app import ClientTask
from fedfm.codecs.wire import unpack_groups
from fedfm.config import parse_config_text
from fedfm.errors import NetworkError, ProtocolError, StaleReference
from fedfm.privacy.mechanisms import mechanism
from fedfm.privacy.policy import ClientLedger, PrivacyPolicy
from fedfm.privacy.secagg import SecAggClient, encode_message
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.runtimes.grpc import fedfm_pb2_grpc as pb_grpc
from fedfm.runtimes.grpc.protocol import VERSION, chunks, instructions_from_json, sha256
from fedfm.runtimes.grpc.secure_client import SecureStages
from fedfm.signing import (
    TrustedKeys,
    client_key,
    load_trusted_keys,
    raw_public,
    upload_message,
)

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
MESSAGE_LIMIT = 80 << 20  # the server's chunks are at most 64 MiB plus framing


class _Rejoin(Exception):
    """The server no longer knows our session (it restarted): join again."""


class _BudgetSpent(Exception):
    """No further round fits this client's --max-epsilon."""


@dataclass
class JoinResult:
    rounds: list[int]
    uploads_accepted: int
    uploads_refused: int
    stopped: str = ""  # why this client left before the server's end ('' if it did not)


class NetworkClient(SecureStages):
    """One client identity talking to one server."""

    def __init__(
        self,
        address: str,
        client_id: str,
        token: str = "",
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        insecure: bool = False,
        retry_seconds: float = 300.0,
        chunk_size: int | None = None,
        heartbeat_seconds: float = 2.0,
        policy: PrivacyPolicy | None = None,
        signing_key: str | Path | None = None,
        trusted_keys: str | Path | None = None,
    ) -> None:
        self.address = address
        # signs every upload and this client's secure-aggregation keys; the server pins it at
        # the first join (default: made on first use)
        self.signing_key, _ = client_key(signing_key, client_id)
        # the other clients' signing keys this client accepts in a secure round: a pinned
        # roster (--trusted-keys), else the first key seen for each id (trust on first use)
        self.trusted = TrustedKeys(load_trusted_keys(trusted_keys) if trusted_keys else None)
        self.policy = policy or PrivacyPolicy()
        self.ledger: ClientLedger | None = None  # this client's own privacy account
        self.client_id = client_id
        self.token = token
        self.retry_seconds = retry_seconds
        self.chunk_size = chunk_size
        self.heartbeat_seconds = heartbeat_seconds
        options = [
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ]
        if insecure:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
            for flag, p in (("--ca", ca), ("--cert", cert), ("--key", key)):
                if p and not Path(p).is_file():
                    raise NetworkError(f"{flag} {str(p)!r} does not exist")
            creds = grpc.ssl_channel_credentials(
                root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
            )
            self.channel = grpc.secure_channel(address, creds, options=options)
        self.stub = pb_grpc.FedFMStub(self.channel)
        self.session = ""
        self.run_name = ""  # the server's run: part of what each upload's signature covers
        self.client_index = 0
        self.config_toml = ""
        self.config = None  # the server's experiment, once joined
        self._secagg: SecAggClient | None = None  # this round's secure-aggregation party
        self._abandoned = ""  # a session we cannot take part in

    # plumbing --------------------------------------------------------------------------------
    def _call(self, fn: Callable, *args, rejoin: bool = True, **kwargs):
        """Call with back-off while the server is unreachable; re-join after a server restart."""
        delay, give_up = 0.5, time.monotonic() + self.retry_seconds
        while True:
            try:
                return fn(*args, **kwargs)
            except grpc.RpcError as e:
                code = e.code()
                if code in RETRYABLE and time.monotonic() < give_up:
                    log.info("server unreachable (%s); retrying in %.1f s", code.name, delay)
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)  # ≤ 7.5 s with jitter: under the server linger
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED and rejoin and self.session:
                    raise _Rejoin() from None
                if code in RETRYABLE:
                    raise NetworkError(
                        f"server {self.address} unreachable for {self.retry_seconds:g} s: "
                        f"{e.details()}"
                    ) from None
                raise NetworkError(f"server {self.address} refused: {e.details()}") from None

    def join(self) -> pb.JoinReply:
        reply = self._call(
            self.stub.Join,
            pb.JoinRequest(
                version=VERSION,
                client_id=self.client_id,
                token=self.token,
                public_key=raw_public(self.signing_key),
            ),
            rejoin=False,
        )
        if reply.version != VERSION:
            raise ProtocolError(f"server speaks protocol {reply.version}, we speak {VERSION}")
        self.session, self.client_index = reply.session, reply.client_index
        self.run_name = reply.run_name
        self.config_toml = reply.config_toml
        log.info(
            "joined %s as %s (index %d); signing key (for others' --trusted-keys): %s %s",
            self.address,
            self.client_id,
            self.client_index,
            self.client_id,
            raw_public(self.signing_key).hex(),
        )
        return reply

    def download(self, rnd: int, what: str, size: int, digest: str) -> bytes:
        data = bytearray()
        attempts = 0
        while len(data) < size:
            request = pb.DownloadRequest(
                version=VERSION, session=self.session, round=rnd, what=what, offset=len(data)
            )
            try:
                for chunk in self.stub.Download(request):
                    if chunk.offset != len(data) or chunk.total_size != size:
                        raise ProtocolError(f"{what} download: chunk out of place")
                    data.extend(chunk.data)
            except grpc.RpcError as e:
                attempts += 1
                if e.code() not in RETRYABLE or attempts > 20:
                    if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                        raise _Rejoin() from None
                    raise NetworkError(f"{what} download of round {rnd}: {e.details()}") from None
                time.sleep(min(0.5 * attempts, 5.0))  # then resume from len(data)
        payload = bytes(data)
        if len(payload) != size or sha256(payload) != digest:
            raise ProtocolError(f"{what} download of round {rnd} is corrupted (sha256 mismatch)")
        return payload

    def upload(
        self, rnd: int, payload: bytes, chunk_size: int, start: int = 0, stage: str = ""
    ) -> tuple[bool, str]:
        """Send ``payload`` from byte ``start``; resumes after broken streams. (accepted, reason)

        ``stage`` names the secure-aggregation stage the upload answers ("" for an update)."""
        digest, offset, attempts = sha256(payload), start, 0
        signature = self.signing_key.sign(
            upload_message(self.run_name, self.client_id, rnd, stage, digest)
        )
        size = min(chunk_size, self.chunk_size or chunk_size)
        while True:
            stream = (
                pb.Chunk(
                    version=VERSION,
                    session=self.session,
                    round=rnd,
                    offset=o,
                    data=piece,
                    total_size=len(payload),
                    sha256=digest,
                    stage=stage,
                    signature=signature,
                )
                for o, piece in chunks(payload, size, offset)
            )
            try:
                reply = self.stub.Upload(stream)
                if reply.accepted:
                    return True, ""
                if reply.reason:
                    return False, reply.reason
                offset = reply.received  # the stream ended early: go on from there
            except grpc.RpcError as e:
                attempts += 1
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise _Rejoin() from None  # the server restarted: it will ask again
                if e.code() not in RETRYABLE or attempts > 20:
                    raise NetworkError(f"upload of round {rnd}: {e.details()}") from None
                time.sleep(min(0.5 * attempts, 5.0))
                status = self._call(
                    self.stub.UploadStatus,
                    pb.StatusRequest(
                        version=VERSION, session=self.session, round=rnd, sha256=digest, stage=stage
                    ),
                )
                if status.accepted:
                    return True, ""
                offset = status.received
                log.info("resuming the upload of round %d at byte %d", rnd, offset)

    def _heartbeat(self, stop: threading.Event) -> None:
        """Poll in the background for the whole session (the reply is ignored), so that the
        server knows we are alive while we load the model or train."""
        while not stop.wait(self.heartbeat_seconds):
            with contextlib.suppress(grpc.RpcError):  # the main loop notices real trouble
                beat = pb.PollRequest(version=VERSION, session=self.session, heartbeat=True)
                self.stub.Poll(beat, timeout=10)

    # the loop --------------------------------------------------------------------------------
    def run(self, data: str | Path, build_app=None, max_rounds: int | None = None) -> JoinResult:
        """Join, build the client app from the server's config and ``data``, serve until done."""
        build_app = build_app or node_app
        self.join()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        try:
            config = parse_config_text(
                self.config_toml, "the server's experiment config", import_plugins=False
            )
            self.config = config
            self.policy.check_experiment(config)  # before any training
            self.ledger = ClientLedger(self.policy, config)
            app = build_app(
                config,
                data,
                self.client_id,
                self.client_index,
                reproducible_noise=self.policy.reproducible_noise,
            )
            return self._serve(app, max_rounds)
        finally:
            stop.set()
            beat.join()
            self.channel.close()

    def _serve(self, app, max_rounds: int | None) -> JoinResult:
        result = JoinResult([], 0, 0)
        last_round = 0
        while max_rounds is None or len(result.rounds) < max_rounds:
            try:
                reply = self._call(
                    self.stub.Poll,
                    pb.PollRequest(version=VERSION, session=self.session, last_round=last_round),
                )
                if reply.version != VERSION:
                    raise ProtocolError(f"server speaks protocol {reply.version}")
                if reply.kind == pb.PollReply.DONE:
                    log.info("the server says the run is over")
                    break
                if reply.kind == pb.PollReply.WAIT:
                    time.sleep(reply.wait_seconds or 0.5)
                    continue
                if reply.kind == pb.PollReply.SECAGG:
                    self._secagg_step(app, reply)
                    continue
                last_round = self._fit(app, reply, last_round, result)
            except _Rejoin:
                log.info("the server no longer knows this session (restarted?): joining again")
                self.join()
            except _BudgetSpent as e:
                result.stopped = str(e)
                log.warning("leaving: %s", e)
                break
        return result

    def _fit(self, app, reply, last_round: int, result: JoinResult) -> int:
        rnd = reply.round
        protocol = None
        if reply.stage == "masked":  # secure aggregation: the upload is the masked input
            protocol = self._protocol(reply)
            if protocol is None:
                return last_round
        try:
            if reply.sync_size:
                blob = self.download(rnd, "sync", reply.sync_size, reply.sync_sha256)
                app.load_view(unpack_groups(blob))
            payload = self.download(rnd, "global", reply.payload_size, reply.payload_sha256)
        except NetworkError as e:  # the round closed meanwhile: back to polling
            log.warning("round %d: %s", rnd, e)
            return last_round
        instructions = instructions_from_json(reply.instructions_json)
        task = ClientTask(self.client_id, payload, instructions)
        session = reply.secagg_session if protocol is not None else ""
        threshold = protocol.threshold if protocol is not None else 0
        if self.ledger is None:  # a client driven without run() (it set .config itself)
            self.ledger = ClientLedger(self.policy, self.config)
        if not instructions.evaluate:  # the client's own policy: before it computes anything
            if protocol is None:
                self.policy.check_plain_round(rnd)
            refusal = self.ledger.refuse(rnd, session, threshold)
            if refusal:
                if protocol is not None:
                    self._abandon(reply, refusal)
                else:
                    log.warning("round %d: not taking part: %s", rnd, refusal)
                if self.ledger.exhausted():
                    raise _BudgetSpent(
                        f"ε = {self.ledger.epsilon():.3g} spent; no further round fits "
                        f"--max-epsilon {self.policy.max_epsilon:g}"
                    )
                return last_round
        if protocol is not None:
            try:
                forwarded = self._secagg_message(reply)
                vector = self._resynced(app, rnd, lambda: app.secure_input(task, self._uniform()))
                update = encode_message(protocol.masked_input(forwarded, vector))
            except (NetworkError, ProtocolError) as e:
                self._abandon(reply, e)
                return last_round
        else:
            try:
                update = self._resynced(app, rnd, lambda: app.handle(task))
            except NetworkError as e:
                log.warning("round %d: %s", rnd, e)
                return last_round
        if not instructions.evaluate:
            self.ledger.spend(rnd, session, threshold)  # the input leaves this machine next
        chunk_size = reply.chunk_size or (1 << 20)
        accepted, reason = self.upload(rnd, update, chunk_size, stage=reply.stage)
        if accepted:
            result.uploads_accepted += 1
            log.info("round %d: update of %d bytes accepted", rnd, len(update))
        else:
            result.uploads_refused += 1
            log.warning("round %d: the server refused our update: %s", rnd, reason)
        if instructions.evaluate:  # an evaluation decodes no downlink: our view is as it was
            return last_round
        result.rounds.append(rnd)
        return rnd

    def _uniform(self) -> bool:
        return mechanism(self.config).uniform_weights

    def _resynced(self, app, rnd: int, work):
        """``work()``; when the downlink is coded against a state we do not hold (we missed
        rounds the server did not notice), fetch the full state (sync) and do it again."""
        try:
            return work()
        except StaleReference as e:
            log.info("round %d: %s; fetching the sync state", rnd, e)
            fresh = self._call(
                self.stub.Poll, pb.PollRequest(version=VERSION, session=self.session, last_round=0)
            )
            if fresh.round != rnd or not fresh.sync_size:
                raise NetworkError(f"round {rnd}: the server offers no sync state") from None
            blob = self.download(rnd, "sync", fresh.sync_size, fresh.sync_sha256)
            app.load_view(unpack_groups(blob))
            return work()
