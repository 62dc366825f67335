"""Shared by the gRPC runtime's protocol tests: certificates, a loopback test server, a raw poll."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fedfm.client.app import ClientTask
from fedfm.config import ServerConfig
from fedfm.runtimes.grpc import fedfm_pb2 as pb
from fedfm.runtimes.grpc.auth import ClientRegistry
from fedfm.runtimes.grpc.certs import make_certs
from fedfm.runtimes.grpc.client import NetworkClient
from fedfm.runtimes.grpc.protocol import VERSION
from fedfm.runtimes.grpc.server import GrpcRuntime
from fedfm.runtimes.grpc.store import ServerStore
from fedfm.state import FitInstructions

TOKENS = {f"c{i}": f"secret-token-of-c{i}-0123" for i in range(3)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    make_certs(out, clients=("c0", "c1"))
    return out


class Server:
    """A GrpcRuntime on an ephemeral loopback port, with a round driven from a thread."""

    def __init__(self, tmp: Path, certs: Path, upload_limits=None, **settings) -> None:
        tokens = tmp / "tokens.txt"
        tokens.write_text("".join(f"{c} {t}\n" for c, t in TOKENS.items()))
        self.tokens = tokens
        defaults = dict(
            address="127.0.0.1:0",
            tokens_file=str(tokens),
            certs_dir=str(certs),
            chunk_size=1024,
            round_timeout=20.0,
            client_timeout=20.0,
            join_timeout=10.0,
            linger=0.5,
        )
        defaults.update(settings)
        self.settings = ServerConfig(**defaults)
        self.run_dir = tmp / "run"
        self.run_dir.mkdir(exist_ok=True)
        self.store = ServerStore(self.run_dir)
        self.runtime = GrpcRuntime(
            self.settings,
            ClientRegistry(tokens),
            self.store,
            'name = "protocol-test"\n',
            "protocol-test",
            stateful_downlink=False,
            min_clients=1,
            base=tmp,
            upload_limits=upload_limits,
        )
        self.address = f"127.0.0.1:{self.runtime.port}"
        self.results: list[tuple[str, bytes | Exception]] = []
        self._thread: threading.Thread | None = None

    def start_round(self, rnd: int, payload: bytes, clients: list[str], sync=None) -> None:
        instructions = FitInstructions(round=rnd, local_steps=1, lr=0.1, batch_size=4)
        tasks = [ClientTask(c, payload, instructions) for c in clients]
        self.runtime.prepare_round(rnd, sync)

        def drive():
            self.results.extend(self.runtime.dispatch(tasks))

        self._thread = threading.Thread(target=drive, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the round is open once every client has its work
            with self.runtime.board.lock:
                if all(c in self.runtime.board.assignments for c in clients):
                    return
            time.sleep(0.01)
        raise AssertionError("the round did not open")

    def wait_round(self, timeout: float = 30.0) -> dict[str, bytes | Exception]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the round did not finish"
        return dict(self.results)

    def client(self, cid: str = "c0", token: str | None = None, **kw) -> NetworkClient:
        return NetworkClient(
            self.address,
            cid,
            TOKENS.get(cid, "x" * 20) if token is None else token,
            ca=self.settings.certs_dir + "/ca.pem",
            retry_seconds=2.0,
            **kw,
        )

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture
def server(tmp_path, certs):
    s = Server(tmp_path, certs)
    yield s
    s.close()


def _poll(client: NetworkClient, last_round: int = 0):
    return client.stub.Poll(
        pb.PollRequest(version=VERSION, session=client.session, last_round=last_round)
    )
