"""``[runtime] type = "ray"``: simulated clients on Ray actors, on this machine or a cluster.

Each actor (``runtime.workers`` of them, ``runtime.cpus_per_worker`` CPUs each) loads the data
and the frozen base model **once** and then serves any number of clients; a client always goes to
the same actor (its index modulo the number of actors), so its codec memory (error-feedback
residuals) stays with it. Actors receive and return the same bytes as every other runtime:
safetensors payloads, never pickled tensors. An actor that skipped rounds gets the sync blob
first, so delta-coded downlinks stay exact. ``runtime.address`` points at an existing Ray cluster
(``ray start --head`` on it); empty starts a local Ray instance for the run.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np
import torch

from fedfm import assemble
from fedfm.client.app import CLIENT_GROUPS, ClientTask
from fedfm.codecs.wire import pack, pack_groups, unpack, unpack_groups
from fedfm.config import config_to_toml, parse_config_text
from fedfm.errors import ConfigError, FedFMError, ProtocolError, TrainingError
from fedfm.privacy.mechanisms import mechanism
from fedfm.runtimes.base import RUNTIMES, Runtime
from fedfm.runtimes.secure import in_process_secure_round
from fedfm.state import FitInstructions, Update

log = logging.getLogger(__name__)


class _Worker:
    """One Ray actor: the experiment's data, one frozen base, a ClientApp for its clients."""

    def __init__(self, config_toml: str, client_ids: list[str], threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        config = parse_config_text(config_toml, "the experiment sent to a Ray worker")
        self.prepared = assemble.prepare(config)
        self.app, _ = assemble.client_app(self.prepared, client_ids)

    def handle(self, client_id: str, payload: bytes, instructions: dict) -> bytes | tuple[str, str]:

        try:
            return self.app.handle(ClientTask(client_id, payload, FitInstructions(**instructions)))
        except TrainingError as e:
            return ("training", str(e))
        except FedFMError as e:
            return ("refused", str(e))

    def secure_input(
        self, client_id: str, payload: bytes, instructions: dict, uniform: bool
    ) -> bytes | tuple[str, str]:
        """The client's secure-aggregation input and public report, as safetensors bytes."""
        task = ClientTask(client_id, payload, FitInstructions(**instructions))
        try:
            vector = self.app.secure_input(task, uniform)
        except TrainingError as e:
            return ("training", str(e))
        except FedFMError as e:
            return ("refused", str(e))
        report = self.app.reports[client_id]
        header = {"rows": report.num_examples, "metrics": report.metrics}
        return pack({"vector": torch.from_numpy(vector)}, header)

    def load_view(self, blob: bytes) -> None:

        self.app.load_view(unpack_groups(blob))

    def client_memory(self) -> bytes:

        return pack_groups(self.app.client_groups())

    def load_client_memory(self, blob: bytes) -> None:

        self.app.load_client_groups(unpack_groups(blob))

    def pid(self) -> int:
        return os.getpid()


@RUNTIMES.register("ray")
class RayRuntime(Runtime):
    def __init__(self, app, config=None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "runtime.type = 'ray' needs Ray: pip install 'fedfm[ray]' (or ray>=2.40,<3)"
            ) from None
        if config is None:
            raise ConfigError("the ray runtime needs the experiment config")
        from dataclasses import asdict

        self._ray = ray
        self._asdict = asdict
        r = config.runtime
        self._started = False
        if not ray.is_initialized():
            if r.address and r.address != "auto":
                _check_reachable(r.address)
            # A local instance that times out while starting (a busy machine: its processes
            # compete with ours for the cores) is started once more before giving up.
            attempts = 1 if r.address else 2
            for attempt in range(1, attempts + 1):
                try:
                    ray.init(
                        address=r.address or None,
                        include_dashboard=False,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                        num_cpus=None if r.address else max(os.cpu_count() or 1, r.workers),
                        runtime_env={"env_vars": _forwarded_env()},
                    )
                    break
                except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError
                    if attempt < attempts and "timed out" in str(e):
                        log.warning("Ray did not start in time (%s); trying once more", e)
                        ray.shutdown()
                        continue
                    raise ConfigError(
                        f"runtime.address = {r.address!r}: cannot start or reach Ray: {e}"
                    ) from None
            self._started = True
        self.client_ids = list(app.data)
        self.uniform = mechanism(config).uniform_weights
        toml = config_to_toml(config)
        actor = ray.remote(num_cpus=r.cpus_per_worker)(_Worker)
        threads = max(1, int(r.cpus_per_worker))
        self.workers = [
            actor.remote(toml, self.client_ids, threads)
            for _ in range(min(r.workers, len(self.client_ids)))
        ]
        self.index = {cid: i for i, cid in enumerate(self.client_ids)}
        self.last_round = [0] * len(self.workers)
        self.sync = None
        self.round = 0
        self.sync_bytes = 0
        ray.get([w.pid.remote() for w in self.workers])  # fail here, not mid-round
        log.info("ray runtime: %d workers", len(self.workers))

    def worker_of(self, client_id: str) -> int:
        return self.index[client_id] % len(self.workers)

    def prepare_round(self, rnd, sync):
        self.round, self.sync = rnd, sync

    def take_extra_bytes(self) -> int:
        n, self.sync_bytes = self.sync_bytes, 0
        return n

    carries_secure_aggregation = True

    def dispatch(self, tasks):
        return self._run(tasks, fit=True)

    def secure_dispatch(self, rnd, tasks, sharers, protocol, progress=None):
        """The clients compute their inputs on their actors (in parallel); the protocol's
        parties then run here, the server side seeing only messages."""
        inputs: dict[str, tuple[np.ndarray, Update] | Exception] = {}
        for cid, result in self._run(tasks, fit=True, secure=True):
            inputs[cid] = result if isinstance(result, Exception) else _secure_reply(result, cid)

        def secure_input(task):
            got = inputs[task.client_id]
            if isinstance(got, Exception):
                raise got
            return got

        return in_process_secure_round(rnd, tasks, sharers, protocol, secure_input, progress)

    def evaluate(self, tasks):
        return self._run(tasks, fit=False)  # no downlink decoded: no sync, no bookkeeping

    def _run(self, tasks, fit: bool, secure: bool = False):
        ray = self._ray
        pending = {}
        blob = None
        for task in tasks:
            w = self.worker_of(task.client_id)
            stale = self.last_round[w] != self.round - 1 and self.round > 1
            if fit and self.sync is not None and stale:
                blob = blob if blob is not None else self.sync()
                self.workers[w].load_view.remote(blob)  # actor calls run in order
                self.sync_bytes += len(blob)
            if fit:
                self.last_round[w] = self.round
            args = (task.client_id, task.payload, self._asdict(task.instructions))
            if secure:
                ref = self.workers[w].secure_input.remote(*args, self.uniform)
            else:
                ref = self.workers[w].handle.remote(*args)
            pending[ref] = task.client_id
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cid = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as e:  # the actor died or raised
                yield cid, FedFMError(f"ray worker failed: {type(e).__name__}: {e}")
                continue
            if isinstance(result, tuple):
                kind, message = result
                if kind == "training":
                    raise TrainingError(message)
                yield cid, FedFMError(message)
            else:
                yield cid, result

    def state_dict(self):

        groups = {}
        for blob in self._ray.get([w.client_memory.remote() for w in self.workers]):
            groups.update(unpack_groups(blob))
        return groups

    def load_state_dict(self, groups):

        per_worker: list[dict] = [{} for _ in self.workers]
        for key, tensors in groups.items():
            for prefix in CLIENT_GROUPS:
                if key.startswith(prefix):
                    per_worker[self.worker_of(key[len(prefix) :])][key] = tensors
        self._ray.get(
            [
                w.load_client_memory.remote(pack_groups(g))
                for w, g in zip(self.workers, per_worker, strict=True)
            ]
        )
        self.last_round = [-1] * len(self.workers)  # every actor re-syncs its downlink view

    def close(self):
        for w in self.workers:
            self._ray.kill(w)
        self.workers = []
        if self._started:
            self._ray.shutdown()


def _secure_reply(blob: bytes, client_id: str) -> tuple[np.ndarray, Update]:
    """An actor's secure input and report (its bytes checked like any received payload)."""
    tensors, header = unpack(blob)
    vector = tensors.get("vector")
    rows, metrics = header.get("rows"), header.get("metrics")
    if (
        vector is None
        or vector.dtype != torch.float64
        or vector.dim() != 1
        or not isinstance(rows, int)
        or not isinstance(metrics, dict)
    ):
        raise ProtocolError(f"the actor of client {client_id} sent a malformed secure input")
    return vector.numpy(), Update(client_id, 0, OrderedDict(), rows, metrics)


def _forwarded_env() -> dict[str, str]:
    """Settings the actors must share with the driver (data root, caches, offline mode)."""
    keys = (
        "FEDFM_DATA",
        "FEDFM_CACHE",
        "HF_HUB_OFFLINE",
        "HF_HOME",
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
    )
    return {k: os.environ[k] for k in keys if k in os.environ}


def _check_reachable(address: str) -> None:
    """Fail in seconds with a clear message instead of Ray's long reconnect loop."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"runtime.address = {address!r} is not HOST:PORT (or 'auto', or empty)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"runtime.address = {address!r}: no Ray cluster answers there ({e}); start one with "
            "`ray start --head` or leave runtime.address empty for a local instance"
        ) from None
