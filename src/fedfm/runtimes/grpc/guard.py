"""Limits on who may hold the server's threads: streams, their idle time and age, call rates.

A synchronous gRPC server gives every call a worker thread for its whole life, so a client that
opens a stream and sends nothing holds a thread. :class:`StreamGuard` caps the streams under way
(in all and per peer address), and a watchdog cancels a stream that is silent too long (much
sooner before it has authenticated) or too old, so Join and heartbeats always find a thread.
:class:`RateLimiter` is a token bucket per key with bounded memory.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


def peer_host(peer: str) -> str:
    """The address of a gRPC peer without its port: ``ipv4:1.2.3.4:5678`` → ``1.2.3.4``,
    ``ipv6:[::1]:5678`` → ``::1`` (a new connection must not reset a limit)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")] if "]" in rest else rest
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    return peer  # unix sockets and the like: the whole name


class RateLimiter:
    """A token bucket per key: ``rate`` calls per second, bursts of ``2·rate``.

    At most ``max_keys`` buckets are kept: the least recently used goes first (a forgotten key
    starts again with a full bucket, as an idle one would have refilled anyway).
    """

    def __init__(self, rate: float, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.capacity = max(2.0, 2 * rate)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.pop(key, (self.capacity, now))
            level = min(self.capacity, level + (now - last) * self.rate)
            allowed = level >= 1
            self._buckets[key] = (level - 1 if allowed else level, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return allowed

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class _Stream:
    context: object
    host: str
    started: float
    last: float
    authenticated: bool = False
    cancelled: bool = False


class StreamGuard:
    """Admits at most ``max_streams`` streams (``per_host`` from one address) and cancels those
    silent for ``idle_seconds`` (``first_seconds`` before the first message) or older than
    ``max_age``."""

    def __init__(
        self,
        max_streams: int,
        per_host: int,
        idle_seconds: float,
        first_seconds: float,
        max_age: float,
    ) -> None:
        self.max_streams, self.per_host = max_streams, per_host
        self.idle_seconds, self.first_seconds, self.max_age = idle_seconds, first_seconds, max_age
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="fedfm-streams", daemon=True)
        self._watchdog.start()

    @contextmanager
    def stream(self, context, host: str):
        """Admit a stream for its life: yields ``(touch, None)``, or ``(None, why not)``.

        ``touch(authenticated)`` marks activity; a stream is authenticated once a message of
        it named a valid session, and then gets the longer idle limit."""
        now = time.monotonic()
        with self._lock:
            refusal = None
            if len(self._streams) >= self.max_streams:
                refusal = f"the server has {self.max_streams} streams under way; retry shortly"
            elif sum(s.host == host for s in self._streams.values()) >= self.per_host:
                refusal = f"{self.per_host} streams from this address are under way"
            else:
                key = next(self._ids)
                self._streams[key] = entry = _Stream(context, host, now, now)
        if refusal is not None:
            yield None, refusal
            return

        def touch(authenticated: bool = True) -> None:
            entry.last = time.monotonic()
            entry.authenticated = entry.authenticated or authenticated

        try:
            yield touch, None
        finally:
            with self._lock:
                self._streams.pop(key, None)

    def active(self) -> int:
        with self._lock:
            return len(self._streams)

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                expired = []
                for s in self._streams.values():
                    idle = self.idle_seconds if s.authenticated else self.first_seconds
                    if not s.cancelled and (now - s.last > idle or now - s.started > self.max_age):
                        s.cancelled = True
                        expired.append(s)
            for s in expired:
                log.info("cancelled a stream from %s: silent or too old", s.host)
                s.context.cancel()

    def close(self) -> None:
        self._stop.set()
