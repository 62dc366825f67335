"""Signed uploads over the network: each client signs what it uploads with its own Ed25519 key,
pinned by the server at the first join; a bad signature is refused and the round goes on."""

from __future__ import annotations

import base64
import hashlib

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedfm.errors import NetworkError
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.runtimes.grpc.protocol import VERSION
from fedfm.runtimes.grpc.store import ServerStore
from fedfm.signing import (
    public_from_raw,
    raw_public,
    signature_valid,
    upload_message,
)
from tests.runtimes.conftest import TOKENS, Server, _poll

pytestmark = pytest.mark.network


def _pem(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def test_a_signed_upload_is_accepted_and_its_signature_kept_for_the_record(server):
    server.start_round(1, b"g" * 100, ["c0"])
    client = server.client("c0")
    client.join()
    update = b"update" * 500
    assert client.upload(1, update, _poll(client).chunk_size) == (True, "")
    assert server.wait_round() == {"c0": update}
    server.runtime.keep(1, "c0", update)  # the loop admitted it: stored with its signature
    signed = server.runtime.upload_signatures({"c0": update})["c0"]
    assert signed["round"] == 1 and signed["stage"] == ""
    key = public_from_raw(base64.b64decode(signed["public_key"]))
    assert signed["public_key"] == base64.b64encode(raw_public(client.signing_key)).decode()
    digest = hashlib.sha256(update).hexdigest()
    message = upload_message("protocol-test", "c0", 1, "", digest)
    assert signature_valid(key, base64.b64decode(signed["signature"]), message)
    assert server.runtime.upload_signatures({"c0": update}) == {}  # taken once
    assert server.store.stored_signature(1, "c0") == signed  # a resumed server has it too


def test_an_upload_with_a_wrong_or_missing_signature_is_refused(server):
    server.start_round(1, b"g" * 100, ["c0"])
    client = server.client("c0")
    client.join()
    update = b"honest" * 150  # one chunk of 900 bytes
    digest = hashlib.sha256(update).hexdigest()
    other = Ed25519PrivateKey.generate()
    for signature in (
        other.sign(upload_message("protocol-test", "c0", 1, "", digest)),  # not its key
        client.signing_key.sign(upload_message("protocol-test", "c0", 2, "", digest)),  # round
        b"",  # none
    ):
        chunk = pb.Chunk(
            version=VERSION,
            session=client.session,
            round=1,
            offset=0,
            data=update,
            total_size=len(update),
            sha256=digest,
            signature=signature,
        )
        reply = client.stub.Upload(iter([chunk]))
        assert not reply.accepted and "signature" in reply.reason
    assert client.upload(1, update, 1 << 20) == (True, "")  # the round goes on
    assert server.wait_round() == {"c0": update}


def test_the_first_key_a_client_joins_with_is_pinned(tmp_path, certs):
    server = Server(tmp_path, certs)
    try:
        first = server.client("c1", signing_key=_pem(tmp_path, "first"))
        first.join()
        again = server.client("c1", signing_key=first_key_path(tmp_path))
        again.join()  # the same key: welcome
        with pytest.raises(NetworkError, match="joined before with another signing key"):
            server.client("c1", signing_key=_pem(tmp_path, "second")).join()
        keyless = pb.JoinRequest(version=VERSION, client_id="c1", token=TOKENS["c1"])
        with pytest.raises(grpc.RpcError) as e:
            first.stub.Join(keyless)  # no downgrade to unsigned uploads either
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        short = pb.JoinRequest(
            version=VERSION, client_id="c1", token=TOKENS["c1"], public_key=b"k" * 31
        )
        with pytest.raises(grpc.RpcError) as e:
            first.stub.Join(short)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        pinned = raw_public(first.signing_key)
    finally:
        server.close()
    assert ServerStore(server.run_dir).pinned_key("c1") == pinned  # survives a restart


def first_key_path(tmp_path) -> str:
    return str(tmp_path / "first.pem")
