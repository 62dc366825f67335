"""The gRPC runtime's protocol on loopback, without a model: auth, chunking, resume, faults.

A real server (GrpcRuntime, TLS) drives a round of raw byte payloads; clients are NetworkClient
instances or hand-made gRPC calls that misbehave on purpose.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import grpc
import pytest

from fedfm.client.app import ClientTask
from fedfm.config import ServerConfig
from fedfm.errors import ConfigError, NetworkError
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.runtimes.grpc import fedfm_pb2_grpc as pb_grpc
from fedfm.runtimes.grpc.auth import ClientRegistry, read_tokens
from fedfm.runtimes.grpc.client import NetworkClient
from fedfm.runtimes.grpc.guard import RateLimiter
from fedfm.runtimes.grpc.protocol import VERSION
from fedfm.runtimes.grpc.server import GrpcRuntime
from fedfm.runtimes.grpc.store import ServerStore
from fedfm.state import FitInstructions
from tests.runtimes.conftest import TOKENS, Server, _poll

pytestmark = pytest.mark.network


def test_a_client_downloads_and_uploads_in_chunks_over_tls(server):
    payload = bytes(range(256)) * 20  # 5,120 bytes: 5 chunks of 1,024
    server.start_round(1, payload, ["c0"])
    client = server.client()
    client.join()
    reply = _poll(client)
    assert reply.kind == pb.PollReply.FIT and reply.round == 1
    got = client.download(1, "global", reply.payload_size, reply.payload_sha256)
    assert got == payload
    update = b"update-bytes" * 300
    assert client.upload(1, update, reply.chunk_size) == (True, "")
    results = server.wait_round()
    assert results == {"c0": update}
    assert server.store.stored_update(1, "c0") is None  # not before the loop checked it
    server.runtime.keep(1, "c0", update)  # what the loop does once it admitted the update
    assert server.store.stored_update(1, "c0") == update  # durable, for a resume


def test_wrong_token_unknown_client_and_wrong_version_are_refused(server):
    # the same answer for both: a caller cannot tell which client ids exist (#16 finding 7)
    with pytest.raises(NetworkError, match="unknown client or wrong token"):
        server.client("c0", token="not-the-right-token").join()
    with pytest.raises(NetworkError, match="unknown client or wrong token"):
        server.client("mallory").join()
    channel = grpc.secure_channel(
        server.address,
        grpc.ssl_channel_credentials(Path(server.settings.certs_dir, "ca.pem").read_bytes()),
    )
    stub = pb_grpc.FedFMStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.Join(pb.JoinRequest(version=VERSION + 1, client_id="c0", token=TOKENS["c0"]))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:  # a made-up session
        stub.Poll(pb.PollRequest(version=VERSION, session="forged"))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    refused = [e["detail"] for e in server.store.events("refused")]
    assert any("wrong token" in r for r in refused) and any("mallory" in r for r in refused)


def test_a_client_without_the_ca_cannot_connect(server):
    client = NetworkClient(server.address, "c0", TOKENS["c0"], retry_seconds=1.0)  # system CAs
    with pytest.raises(NetworkError):
        client.join()


def test_a_revoked_client_is_refused_at_its_next_call(server):
    client = server.client("c1")
    client.join()
    assert _poll(client).kind == pb.PollReply.WAIT
    time.sleep(0.01)
    server.tokens.write_text(f"c0 {TOKENS['c0']}\n")  # c1's line removed
    with pytest.raises(grpc.RpcError) as e:
        _poll(client)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in e.value.details()


def test_a_corrupted_upload_is_rejected_and_a_clean_one_still_accepted(server):
    server.start_round(1, b"g" * 2000, ["c0", "c1"])
    bad, good = server.client("c0"), server.client("c1")
    bad.join(), good.join()
    update = b"u" * 3000
    digest = hashlib.sha256(update).hexdigest()
    corrupted = bytearray(update)
    corrupted[1500] ^= 0xFF  # one flipped bit pattern in the second chunk

    def stream():
        for offset in range(0, len(corrupted), 1024):
            yield pb.Chunk(
                version=VERSION,
                session=bad.session,
                round=1,
                offset=offset,
                data=bytes(corrupted[offset : offset + 1024]),
                total_size=len(update),
                sha256=digest,
            )

    reply = bad.stub.Upload(stream())
    assert not reply.accepted and "corrupted" in reply.reason
    assert good.upload(1, b"v" * 3000, 1024) == (True, "")
    # the corrupted client may still send its real update within the deadline
    assert bad.upload(1, update, 1024) == (True, "")
    results = server.wait_round()
    assert results == {"c0": update, "c1": b"v" * 3000}
    assert any("corrupted" in e["detail"] for e in server.store.events("upload_refused"))


def test_malformed_chunks_are_refused(server):
    server.start_round(1, b"g" * 100, ["c0"])
    c = server.client("c0")
    c.join()
    update = b"w" * 2048
    digest = hashlib.sha256(update).hexdigest()

    def send(*chunks):
        return c.stub.Upload(iter(chunks))

    size = len(update)

    def chunk(offset, data, total=size, sha=digest, rnd=1):
        return pb.Chunk(
            version=VERSION,
            session=c.session,
            round=rnd,
            offset=offset,
            data=data,
            total_size=total,
            sha256=sha,
        )

    assert "offset" in send(chunk(0, update[:1024]), chunk(2000, update[1024:1100])).reason
    assert "chunk of 2048 bytes" in send(chunk(0, update)).reason  # above the chunk size
    assert "outside" in send(chunk(0, update[:10], total=10**12)).reason
    assert "out-of-round" in send(chunk(0, update[:1024], rnd=7)).reason
    assert "sha256" in send(chunk(0, update[:1024], sha="abc")).reason
    assert c.upload(1, update, 1024) == (True, "")
    assert "replay" in c.upload(1, update, 1024)[1]  # the same update again
    assert server.wait_round() == {"c0": update}


def test_an_interrupted_upload_resumes_from_the_acknowledged_byte(server):
    server.start_round(1, b"g" * 100, ["c0"])
    c = server.client("c0")
    c.join()
    update = bytes(i % 251 for i in range(5000))
    digest = hashlib.sha256(update).hexdigest()
    first = [
        pb.Chunk(
            version=VERSION,
            session=c.session,
            round=1,
            offset=o,
            data=update[o : o + 1024],
            total_size=len(update),
            sha256=digest,
        )
        for o in (0, 1024)
    ]
    reply = c.stub.Upload(iter(first))  # the stream stops after two chunks
    assert not reply.accepted and reply.received == 2048
    status = c.stub.UploadStatus(
        pb.StatusRequest(version=VERSION, session=c.session, round=1, sha256=digest)
    )
    assert status.received == 2048
    sent = []
    original = c.stub.Upload

    def counting(stream):
        chunks = list(stream)
        sent.extend(ch.offset for ch in chunks)
        return original(iter(chunks))

    c.stub.Upload = counting
    assert c.upload(1, update, 1024, start=status.received) == (True, "")
    assert sent == [2048, 3072, 4096]  # only the rest travelled
    assert server.wait_round() == {"c0": update}


def test_a_download_resumes_at_an_offset(server):
    payload = bytes(i % 253 for i in range(4000))
    server.start_round(1, payload, ["c0"])
    c = server.client("c0")
    c.join()
    request = pb.DownloadRequest(
        version=VERSION, session=c.session, round=1, what="global", offset=3000
    )
    pieces = list(c.stub.Download(request))
    assert [p.offset for p in pieces] == [3000]
    assert b"".join(p.data for p in pieces) == payload[3000:]
    assert c.upload(1, b"x" * 10, 1024)[0]
    server.wait_round()


def test_a_silent_client_is_dropped_at_the_deadline_and_a_late_upload_refused(tmp_path, certs):
    s = Server(tmp_path, certs, round_timeout=1.5, client_timeout=30.0)
    try:
        s.start_round(1, b"g" * 100, ["c0", "c1"])
        fast, slow = s.client("c0"), s.client("c1")
        fast.join(), slow.join()
        assert fast.upload(1, b"fast", 1024) == (True, "")
        t0 = time.monotonic()
        results = s.wait_round()
        assert time.monotonic() - t0 < 5
        assert results["c0"] == b"fast"
        assert isinstance(results["c1"], NetworkError) and "deadline" in str(results["c1"])
        accepted, reason = slow.upload(1, b"late", 1024)
        assert not accepted and "out-of-round" in reason
        assert [e["client_id"] for e in s.store.events("straggler")] == ["c1"]
    finally:
        s.close()


def test_a_client_that_stops_heartbeating_is_lost_before_the_deadline(tmp_path, certs):
    s = Server(tmp_path, certs, round_timeout=60.0, client_timeout=1.0)
    try:
        c = s.client("c0")
        c.join()
        s.start_round(1, b"g" * 100, ["c0"])
        t0 = time.monotonic()
        results = s.wait_round()  # c0 never polls again
        assert time.monotonic() - t0 < 10
        assert "lost" in str(results["c0"])
    finally:
        s.close()


def test_requests_above_the_rate_limit_are_refused(tmp_path, certs):
    s = Server(tmp_path, certs, max_requests_per_second=5.0)
    try:
        c = s.client("c0")
        c.join()
        codes = []
        for _ in range(30):
            try:
                _poll(c)
                codes.append("ok")
            except grpc.RpcError as e:
                codes.append(e.code().name)
        assert "RESOURCE_EXHAUSTED" in codes and codes[0] == "ok"
    finally:
        s.close()


def test_poll_says_done_after_the_run(server):
    c = server.client("c0")
    c.join()
    server.runtime.board.finished = True
    assert _poll(c).kind == pb.PollReply.DONE


def test_tokens_file_errors_are_clear(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("c0 short\n")
    with pytest.raises(ConfigError, match="line 1.*at least 16"):
        read_tokens(bad)
    bad.write_text("c0 aaaaaaaaaaaaaaaaaaaa\nc0 bbbbbbbbbbbbbbbbbbbbbb\n")
    with pytest.raises(ConfigError, match="line 2.*twice"):
        read_tokens(bad)
    bad.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="lists no client"):
        read_tokens(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_tokens(tmp_path / "missing.txt")


def test_missing_certificates_name_the_key_and_the_fix(tmp_path):
    tokens = tmp_path / "t.txt"
    tokens.write_text(f"c0 {TOKENS['c0']}\n")
    settings = ServerConfig(address="127.0.0.1:0", tokens_file=str(tokens), certs_dir="nope")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ConfigError, match=r"server.certificate = .*fedfm certs nope"):
        GrpcRuntime(settings, ClientRegistry(tokens), ServerStore(run), "", "x", False, 1, tmp_path)


def test_rate_limiter_refills():
    limiter = RateLimiter(100.0)
    assert sum(limiter.allow("a") for _ in range(500)) < 260
    time.sleep(0.05)
    assert limiter.allow("a")


def test_async_submit_and_next_result_over_the_network(tmp_path, certs):
    """FedBuff's runtime interface: work opens per client, results come back as they arrive."""
    s = Server(tmp_path, certs, round_timeout=2.0, client_timeout=30.0)
    try:
        fast, slow = s.client("c0"), s.client("c1")
        fast.join(), slow.join()
        instructions = FitInstructions(round=1, local_steps=1, lr=0.1, batch_size=4)
        s.runtime.submit(ClientTask("c0", b"v0" * 600, instructions))
        s.runtime.submit(ClientTask("c1", b"v0" * 600, instructions))
        reply = _poll(fast)
        assert reply.kind == pb.PollReply.FIT and reply.round == 1
        assert fast.download(1, "global", reply.payload_size, reply.payload_sha256) == b"v0" * 600
        assert fast.upload(1, b"delta", 1024) == (True, "")
        cid, result, elapsed = s.runtime.next_result()
        assert (cid, result) == ("c0", b"delta") and elapsed >= 0
        # the second version is opened for c0 while c1 is still out
        later = FitInstructions(round=2, local_steps=1, lr=0.1, batch_size=4)
        s.runtime.submit(ClientTask("c0", b"v1" * 600, later))
        assert _poll(fast).round == 2
        assert fast.upload(2, b"delta2", 1024) == (True, "")
        assert s.runtime.next_result()[:2] == ("c0", b"delta2")
        cid, result, _ = s.runtime.next_result()  # c1 never answers
        assert cid == "c1" and "deadline" in str(result), (cid, result)
    finally:
        s.close()


def test_a_stale_client_gets_the_sync_blob_and_decodes_a_delta_downlink_exactly(tmp_path, certs):
    """Delta-coded downlinks need the previous view: a client that missed rounds fetches it."""
    from collections import OrderedDict
    from types import SimpleNamespace

    import torch

    from fedfm.client.app import ClientApp
    from fedfm.codecs import CodecContext, Pipeline, peer_seed
    from fedfm.codecs.wire import pack_groups, unpack_groups

    template = OrderedDict(w=torch.zeros(3, 4), b=torch.zeros(4))
    down = Pipeline(("delta", "int8"), "codec.down")
    seed = peer_seed(0, "server")
    server_view, server_memory = None, {}
    payloads = {}
    for rnd in (1, 2, 3):  # the server's downlink over three rounds
        state = OrderedDict((n, torch.randn_like(t) * rnd) for n, t in template.items())
        previous = (server_view, dict(server_memory))
        payloads[rnd] = down.encode(state, CodecContext(rnd, server_view, {}, seed), {})
        server_view, _ = down.decode(
            payloads[rnd], CodecContext(rnd, server_view, server_memory, seed), template
        )
    s = Server(tmp_path, certs)
    s.runtime.service.stateful_downlink = True
    view, memory = previous  # what up-to-date clients hold before round 3

    def sync():
        return pack_groups({"client.view": dict(view), "client.view_memory": memory})

    try:
        c = s.client("c0")
        c.join()
        s.start_round(3, payloads[3], ["c0"], sync)
        reply = _poll(c, last_round=1)  # missed round 2
        assert reply.sync_size > 0
        blob = c.download(3, "sync", reply.sync_size, reply.sync_sha256)
        app = ClientApp(SimpleNamespace(seed=0), {}, down, Pipeline(()), template)
        app.load_view(unpack_groups(blob))
        decoded = app._receive(3, payloads[3])
        assert all(torch.equal(decoded[n], server_view[n]) for n in template)
        assert _poll(c, last_round=2).sync_size == 0  # up to date: no sync
        assert c.upload(3, b"x" * 10, 1024)[0]
        s.wait_round()
        assert s.runtime.take_extra_bytes() == len(blob)
    finally:
        s.close()


def test_a_copy_of_the_same_round_payload_is_decoded_once():
    """Two clients of one process get copies of a delta-coded downlink: both see one state."""
    from collections import OrderedDict
    from types import SimpleNamespace

    import torch

    from fedfm.client.app import ClientApp
    from fedfm.codecs import CodecContext, Pipeline, peer_seed

    template = OrderedDict(w=torch.zeros(2, 3))
    down = Pipeline(("delta",), "codec.down")
    seed = peer_seed(0, "server")
    app = ClientApp(SimpleNamespace(seed=0), {}, down, Pipeline(()), template)
    first = OrderedDict(w=torch.ones(2, 3))
    p1 = down.encode(first, CodecContext(1, None, {}, seed), {})
    assert torch.equal(app._receive(1, p1)["w"], first["w"])
    second = OrderedDict(w=torch.full((2, 3), 3.0))
    p2 = down.encode(second, CodecContext(2, first, {}, seed), {})
    a = app._receive(2, p2)
    b = app._receive(2, bytes(bytearray(p2)))  # an equal copy, another object
    assert torch.equal(a["w"], second["w"]) and torch.equal(b["w"], second["w"])


def test_mutual_tls_requires_a_client_certificate_naming_the_client(tmp_path, certs):
    s = Server(tmp_path, certs, mutual_tls=True)
    try:
        pem = {c: (str(certs / f"{c}.pem"), str(certs / f"{c}.key")) for c in ("c0", "c1")}
        ok = s.client("c0", cert=pem["c0"][0], key=pem["c0"][1])
        ok.join()
        assert _poll(ok).kind == pb.PollReply.WAIT
        with pytest.raises(NetworkError):  # no certificate: the TLS handshake fails
            s.client("c0").join()
        impostor = s.client("c1", cert=pem["c0"][0], key=pem["c0"][1])
        with pytest.raises(NetworkError, match="certificate names 'c0'"):
            impostor.join()
    finally:
        s.close()
