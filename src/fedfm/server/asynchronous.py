"""The asynchronous round loop (FedBuff): clients train on the version they downloaded; the
server steps every ``buffer_size`` arrivals without waiting for stragglers.

``clients_per_round`` clients are in flight at any time. When one finishes, its update is decoded
against the version it started from, turned into a delta, tagged with its staleness τ (server
steps since it started) and buffered; a new client takes its slot with the current version.
Every K buffered updates the strategy (:class:`fedfm.strategies.fedbuff.FedBuff`) applies them;
that server step is one row of ``metrics.jsonl``, checkpointed like a synchronous round.

In simulation, time is simulated: each client has a speed drawn once from a log-normal
(``strategy.speed_sigma``), a fit takes ``local_steps × speed`` seconds, and clients finish in
that order; rows get ``sim_time``. Over the network, clients finish when they finish. A resume
starts from the last checkpoint with no client in flight. The downlink must be stateless (no
``delta``/``residual`` down): clients hold different versions.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from fedfm.client.app import ClientTask
from fedfm.codecs import CodecContext, peer_seed
from fedfm.errors import ConfigError, ProtocolError
from fedfm.server.federation import Federation
from fedfm.state import State, clone_state

log = logging.getLogger(__name__)


class AsyncFederation(Federation):
    def run(self, state: State, start_round: int = 1) -> State:
        if self.down.stateful:
            raise ConfigError(
                f"codec.down = {self.down.specs}: asynchronous rounds need a stateless downlink "
                "(clients hold different versions); drop delta/residual from codec.down"
            )
        template = clone_state(state)
        info = {
            "name": self.name,
            "rounds": self.rounds,
            "start_round": start_round,
            "clients": len(self.client_ids),
            "mode": "async",
            **self.start_info,
        }
        for sink in self.sinks:
            sink.start(info)
        spec = self.strategy.spec
        rng = np.random.default_rng([self.seed, 0xA5C, start_round])
        speed_rng = np.random.default_rng([self.seed, 0x5BEED])
        speeds = dict(
            zip(
                self.client_ids,
                np.exp(spec.speed_sigma * speed_rng.standard_normal(len(self.client_ids))),
                strict=True,
            )
        )
        version = start_round - 1
        views: dict[int, tuple[bytes, State]] = {version: self._publish(version, state, template)}
        in_flight: dict[str, int] = {}  # client → the version it started from
        last_start: dict[str, int] = {}
        buffer: list = []
        bytes_up = bytes_down = 0
        t0 = time.perf_counter()
        clock = 0.0
        while version < self.rounds:
            live = self.runtime.available(self.client_ids)
            idle = [c for c in live if c not in in_flight and last_start.get(c) != version]
            while len(in_flight) < self.clients_per_round and idle:
                cid = idle.pop(int(rng.integers(len(idle))))
                instructions = self._fit_instructions(version + 1, cid)
                steps = max(1, instructions.local_steps)
                payload = views[version][0]
                self.runtime.submit(
                    ClientTask(cid, payload, instructions), float(speeds[cid] * steps)
                )
                in_flight[cid], last_start[cid] = version, version
                bytes_down += len(payload)
            if not in_flight:
                raise ConfigError(
                    "asynchronous rounds have no client to run: every connected client already "
                    "trained on the current version and fewer than buffer_size updates are buffered"
                )
            cid, result, clock = self.runtime.next_result()
            start = in_flight.pop(cid)
            if isinstance(result, Exception):
                self._reject(version + 1, cid, result)
                continue
            bytes_up += len(result)
            reference = views[start][1]
            try:
                update = self._decode(start + 1, cid, result, template, reference)
            except Exception as e:  # ProtocolError, or a decoder bug: one client never stops us
                self._reject(version + 1, cid, e)
                continue
            staleness = version - start
            if staleness > spec.max_staleness:
                self._reject(version + 1, cid, ProtocolError(f"update {staleness} versions stale"))
                continue
            update.state = OrderedDict(
                (n, update.state[n].float() - reference[n].float()) for n in template
            )
            update.metrics["staleness"] = float(staleness)
            buffer.append(update)
            self._payloads[cid] = result
            if len(buffer) < spec.buffer_size:
                continue
            self._before = state
            state = self.strategy.aggregate(version + 1, state, buffer)
            version += 1
            extra: dict[str, Any] = {**self.strategy.round_metrics(), "sim_time": clock}
            self._log_round(version, state, buffer, bytes_up, bytes_down, t0, extra)
            buffer, bytes_up, bytes_down, t0 = [], 0, 0, time.perf_counter()
            self._payloads = {}
            views[version] = self._publish(version, state, template)
            for old in [v for v in views if v != version and v not in in_flight.values()]:
                del views[old]
        return state

    def _publish(self, version: int, state: State, template: State) -> tuple[bytes, State]:
        """Encode version ``version`` of the global state once; and what clients decode."""
        seed = peer_seed(self.seed, "server")
        payload = self.down.encode(
            state, CodecContext(version + 1, None, {}, seed), {"kind": "global"}
        )
        view, _ = self.down.decode(payload, CodecContext(version + 1, None, {}, seed), template)
        return payload, view
