"""Secure aggregation carried by the gRPC runtime, without a model: real TLS server, real
``NetworkClient`` parties with fixed vectors, and hand-made calls that misbehave on purpose."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedfm.client.app import ClientTask
from fedfm.config import load_config
from fedfm.errors import ProtocolError
from fedfm.privacy.secagg import KEYS, SecAggServer, encode_message
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.signing import raw_public
from fedfm.state import FitInstructions
from tests.runtimes.conftest import Server, _poll

pytestmark = pytest.mark.network

DIMENSION = 50  # 48 "parameters" + w·loss + w


class VectorApp:
    """Stands in for ClientApp: its secure input is a fixed vector."""

    def __init__(self, vector: np.ndarray) -> None:
        self.template = {"w": torch.zeros(len(vector) - 2)}
        self.vector = vector
        self.rounds = 0

    def secure_input(self, task: ClientTask, uniform_weights: bool) -> np.ndarray:
        self.rounds += 1
        return self.vector


def _vectors(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"c{i}": rng.normal(size=DIMENSION) for i in range(n)}


class SecureRound:
    """One secure round on a test server: ``secure_dispatch`` in a thread, its outcome or error."""

    def __init__(
        self, server: Server, sharers, trainers, threshold: int, protocol=SecAggServer
    ) -> None:
        self.server = server
        self.protocol = protocol(DIMENSION, threshold, session="secagg/round-1/0123456789abcdef")
        instructions = FitInstructions(round=1, local_steps=1, lr=0.1, batch_size=4)
        tasks = [ClientTask(c, b"global-state", instructions) for c in trainers]
        server.runtime.prepare_round(1, None)
        self.outcome, self.error = None, None

        def drive():
            try:
                self.outcome = server.runtime.secure_dispatch(1, tasks, sharers, self.protocol)
            except Exception as e:  # noqa: BLE001  (the test inspects it)
                self.error = e

        self.thread = threading.Thread(target=drive, daemon=True)
        self.thread.start()

    def wait(self, timeout: float = 30.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the secure round did not finish"
        return self.outcome


def _party(server: Server, cid: str, vector: np.ndarray, **kw):
    """A real NetworkClient serving until the run is over, in a thread."""
    client = server.client(cid, **kw)
    client.join()
    client.config = load_config(None, ["secagg.enabled=true"])
    app = VectorApp(vector)
    thread = threading.Thread(target=client._serve, args=(app, None), daemon=True)
    thread.start()
    return client, app, thread


def _finish(server: Server, threads) -> None:
    with server.runtime.board.lock:
        server.runtime.board.finished = True  # clients hear DONE (the fixture stops the server)
    for t in threads:
        t.join(10)
        assert not t.is_alive()


def test_three_parties_over_tls_give_the_sum_and_a_dropped_sharer_is_left_out(server):
    vectors = _vectors(3)
    # c2 shares its keys, then the server's fault simulation drops it before training
    secure = SecureRound(server, ["c0", "c1", "c2"], ["c0", "c1"], threshold=2)
    parties = {cid: _party(server, cid, v) for cid, v in vectors.items()}
    outcome = secure.wait()
    _finish(server, [p[2] for p in parties.values()])
    assert secure.error is None
    assert outcome.survivors == ["c0", "c1"] and outcome.failures == []
    expected = vectors["c0"] + vectors["c1"]
    assert np.abs(outcome.sum - expected).max() <= 2 * 2.0**-17
    assert parties["c2"][1].rounds == 0  # never asked to train
    # what travelled up: keys, shares, masked inputs, unmask answers; never a plain vector
    assert server.store._exec("SELECT COUNT(*) FROM updates") == [(0,)]
    assert outcome.bytes_up > 2 * DIMENSION * 4


def test_a_message_naming_another_client_is_refused_and_its_sender_dropped(server):
    vectors = _vectors(2)
    secure = SecureRound(server, ["c0", "c1", "c2"], ["c0", "c1", "c2"], threshold=2)
    parties = [_party(server, cid, v) for cid, v in vectors.items()]
    forger = server.client("c2")
    forger.join()
    reply = _poll(forger)
    assert reply.kind == pb.PollReply.SECAGG and reply.stage == "keys"
    claim = {"type": KEYS, "session": reply.secagg_session, "client": "c1"}
    claim.update(c_pk=bytes(32), s_pk=bytes(32))
    assert forger.upload(1, encode_message(claim), 1024, stage="keys") == (True, "")
    outcome = secure.wait()
    _finish(server, [p[2] for p in parties])
    assert outcome.survivors == ["c0", "c1"]
    [(cid, error)] = outcome.failures
    assert cid == "c2" and "naming client 'c1' came from 'c2'" in str(error)
    assert np.abs(outcome.sum - vectors["c0"] - vectors["c1"]).max() <= 2 * 2.0**-17


def test_an_upload_for_another_stage_is_refused(server):
    secure = SecureRound(server, ["c0", "c1"], ["c0", "c1"], threshold=2)
    client = server.client("c0")
    client.join()
    deadline = time.monotonic() + 10
    while _poll(client).kind != pb.PollReply.SECAGG:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    accepted, reason = client.upload(1, b"not yet", 1024, stage="masked")
    assert not accepted and "stage 'masked', the server waits for 'keys'" in reason
    accepted, reason = client.upload(1, b"an update", 1024)  # a plain update, in a secure round
    assert not accepted and "stage 'fit', the server waits for 'keys'" in reason
    with server.runtime.board.lock:  # the round ends at its deadline; do not wait for it
        server.runtime.board.assignments.clear()
    secure.thread.join(0)


def test_a_party_that_missed_key_sharing_leaves_at_once_and_below_the_threshold_it_fails(
    tmp_path, certs
):
    server = Server(tmp_path, certs, round_timeout=60.0, client_timeout=60.0)
    try:
        vectors = _vectors(3)
        secure = SecureRound(server, ["c0", "c1", "c2"], ["c0", "c1", "c2"], threshold=3)
        parties = [_party(server, cid, v) for cid, v in list(vectors.items())[:2]]
        late = server.client("c2")
        late.join()
        while (reply := _poll(late)).kind != pb.PollReply.SECAGG:
            time.sleep(0.05)
        late.upload(  # answers the keys stage by hand, then "restarts": its keys are gone
            1, encode_message(_keys(reply.secagg_session, late)), 1024, stage="keys"
        )
        late.config = load_config(None, ["secagg.enabled=true"])
        started = time.monotonic()
        thread = threading.Thread(
            target=late._serve, args=(VectorApp(vectors["c2"]), None), daemon=True
        )
        thread.start()
        secure.wait()
        assert time.monotonic() - started < 20  # it said so; nobody waited for a deadline
        assert isinstance(secure.error, ProtocolError)
        assert "only 2 of 3 clients shared their keys, the threshold is 3" in str(secure.error)
        _finish(server, [thread, *[p[2] for p in parties]])
        assert server.store.events("straggler") == []
    finally:
        server.close()


def _keys(session: str, client) -> dict:
    from fedfm.privacy.secagg import SecAggClient

    party = SecAggClient(
        client.client_id, DIMENSION, session=session, signing_key=client.signing_key
    )
    return party.advertise_keys()


class SubstitutingServer(SecAggServer):
    """An active server: the roster carries its own X25519 key in place of c1's."""

    def roster(self):
        roster = super().roster()
        c_pk = roster["c_pk"].copy()
        c_pk[1] = np.frombuffer(X25519PrivateKey.generate().public_key().public_bytes_raw(), "u1")
        return {**roster, "c_pk": c_pk}


def test_over_tls_a_substituted_key_makes_the_clients_leave_before_sharing(server):
    three = ["c0", "c1", "c2"]
    secure = SecureRound(server, three, three, threshold=2, protocol=SubstitutingServer)
    parties = {cid: _party(server, cid, v) for cid, v in _vectors(3).items()}
    secure.wait()
    _finish(server, [p[2] for p in parties.values()])
    assert isinstance(secure.error, ProtocolError)
    assert "only 0 of 3 clients shared their keys" in str(secure.error)
    # each party's signing key is the one it joined with (the server checked it at round 0)
    assert secure.protocol.signing_keys == {
        cid: raw_public(p[0].signing_key) for cid, p in parties.items()
    }


def test_over_tls_a_client_pinning_a_roster_leaves_a_round_with_a_stranger(server, tmp_path):
    """c0 trusts only c0 and c2 (fedfm join --trusted-keys): it leaves; the others sum."""
    vectors = _vectors(3)
    keys = {c: raw_public(server.client(c).signing_key).hex() for c in ("c0", "c2")}
    roster = tmp_path / "trusted.txt"
    roster.write_text("".join(f"{c} {k}\n" for c, k in keys.items()))
    three = ["c0", "c1", "c2"]
    secure = SecureRound(server, three, three, threshold=2)
    parties = {
        cid: _party(server, cid, v, **({"trusted_keys": roster} if cid == "c0" else {}))
        for cid, v in vectors.items()
    }
    outcome = secure.wait()
    _finish(server, [p[2] for p in parties.values()])
    assert outcome.survivors == ["c1", "c2"]
    [(cid, error)] = outcome.failures
    assert cid == "c0" and "client 'c1' is not in the trusted keys" in str(error)
    assert np.abs(outcome.sum - vectors["c1"] - vectors["c2"]).max() <= 2 * 2.0**-17
