"""The Runtime interface: move a round's tasks to clients and their payloads back."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fedfm.client.app import ClientTask
from fedfm.registry import Registry


class Runtime:
    """Moves bytes; decides nothing. ``dispatch`` yields ``(client_id, uplink payload)`` as they
    arrive; a client that fails yields ``(client_id, exception)`` so that the loop can log it."""

    def dispatch(self, tasks: list[ClientTask]) -> Iterator[tuple[str, bytes | Exception]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, dict]:
        """Client-side codec state this runtime keeps for its clients (groups named ``client.*``)."""
        return {}

    def load_state_dict(self, groups: dict[str, dict]) -> None:
        """Restore :meth:`state_dict` after a resume."""

    def close(self) -> None:
        """Release workers and connections."""


RuntimeFactory = Callable[..., Runtime]
RUNTIMES: Registry[RuntimeFactory] = Registry("runtime", "runtime.type")
