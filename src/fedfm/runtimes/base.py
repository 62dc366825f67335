"""The Runtime interface: move a round's tasks to clients and their payloads back."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedfm.client.app import ClientTask
from fedfm.registry import Registry


@dataclass
class SecureRound:
    """What a runtime that carries secure aggregation returns for one round."""

    sum: np.ndarray | None = None  # the decoded sum of the survivors' secure vectors
    survivors: list[str] = field(default_factory=list)  # the clients in the sum
    bytes_up: int = 0  # every protocol message, client → server
    bytes_down: int = 0  # every protocol message, server → client (not the global payload)
    seconds: float = 0.0
    failures: list[tuple[str, Exception]] = field(default_factory=list)  # who dropped, and why
    # What the summed clients state in public beside their masked inputs (local DP accounting:
    # rows and steps), as updates without state; in-process runtimes only.
    reports: list = field(default_factory=list)


class Runtime:
    """Moves bytes; decides nothing. ``dispatch`` yields ``(client_id, uplink payload)`` as they
    arrive; a client that fails yields ``(client_id, exception)`` so that the loop can log it.

    An in-process runtime (``in_process = True``: sim, ray) is built by ``fedfm run`` as
    ``Runtime(client_app, config=config)``. A runtime whose clients are other processes that
    join over the network says ``in_process = False`` and is started by :meth:`launch`, which
    runs the whole experiment (``fedfm run`` with it is ``fedfm serve``).
    """

    in_process: ClassVar[bool] = True
    #: Honours ``[continual]`` stages (its clients train each round's stage rows only, and the
    #: server knows who holds rows of a stage); a runtime that does not is refused.
    carries_stages: ClassVar[bool] = False

    @classmethod
    def launch(cls, config, **options: Any):
        """Run ``config`` as a server whose clients join from elsewhere (network runtimes)."""
        raise NotImplementedError(f"{cls.__name__} runs in-process")

    def dispatch(self, tasks: list[ClientTask]) -> Iterator[tuple[str, bytes | Exception]]:
        raise NotImplementedError

    def evaluate(self, tasks: list[ClientTask]) -> Iterator[tuple[str, bytes | Exception]]:
        """Federated-evaluation tasks (``instructions.evaluate``): like :meth:`dispatch`, but
        they must leave the round's bookkeeping (who holds this round's downlink) as it is."""
        return self.dispatch(tasks)

    # Secure aggregation: a runtime that carries it runs one round of the protocol with its
    # clients as the parties (``secure_dispatch``): in-process (sim, ray) or over the network.
    carries_secure_aggregation = False

    def secure_dispatch(self, rnd: int, tasks, sharers: list[str], protocol, progress=None):
        """One secure round: a :class:`SecureRound` with the sum over the survivors."""
        raise NotImplementedError(f"{type(self).__name__} does not carry secure aggregation")

    # Asynchronous rounds (FedBuff). In-process runtimes simulate time: a submitted client
    # finishes ``eta`` simulated seconds after it starts, and its work runs when it finishes.
    # Network runtimes override both with real time.
    def submit(self, task: ClientTask, eta: float = 1.0) -> None:
        """Start one client's work (asynchronous mode)."""
        if not hasattr(self, "_clock"):
            self._clock, self._queue, self._serial = 0.0, [], 0
        self._serial += 1
        heapq.heappush(self._queue, (self._clock + eta, self._serial, task))

    def next_result(self) -> tuple[str, bytes | Exception, float]:
        """The next client to finish: ``(client_id, payload or error, clock seconds)``."""
        if not getattr(self, "_queue", None):
            raise RuntimeError("next_result() without submitted work")
        self._clock, _, task = heapq.heappop(self._queue)
        (cid, result), *_ = list(self.dispatch([task]))
        return cid, result, self._clock

    def keep(self, rnd: int, client_id: str, payload: bytes) -> None:
        """An upload the loop admitted (decoded and checked): a runtime that survives restarts
        stores it here, never before, so a resume cannot replay a refused one."""

    def upload_signatures(self, payloads: dict[str, bytes]) -> dict[str, dict[str, Any]]:
        """What each client signed for its admitted upload (``payloads``: client → bytes), for
        the round's provenance record: round, stage, its public key and signature (base64).
        Only network clients sign; taken once (the runtime forgets them)."""
        return {}

    def available(self, client_ids: list[str]) -> list[str]:
        """The clients that can be selected now (a network runtime: the connected ones)."""
        return list(client_ids)

    def prepare_round(self, rnd: int, sync: Callable[[], bytes] | None) -> None:
        """Called before :meth:`dispatch`. ``sync()`` packs what an up-to-date client holds
        before decoding round ``rnd``'s downlink (its reference state and decoder memory), for
        clients that missed rounds; None when the downlink needs no reference."""

    def take_extra_bytes(self) -> int:
        """Downlink bytes sent this round beside the round's payloads (e.g. re-sync blobs)."""
        return 0

    def state_dict(self) -> dict[str, dict]:
        """Client-side codec state this runtime keeps for its clients (groups named ``client.*``)."""
        return {}

    def load_state_dict(self, groups: dict[str, dict]) -> None:
        """Restore :meth:`state_dict` after a resume."""

    def close(self) -> None:
        """Release workers and connections."""


RuntimeFactory = Callable[..., Runtime]
RUNTIMES: Registry[RuntimeFactory] = Registry("runtime", "runtime.type")
