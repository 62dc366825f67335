"""``[runtime] type = "grpc"``: the experiment runs over the network with ``fedfm serve``."""

from __future__ import annotations

from fedfm.errors import ConfigError
from fedfm.runtimes.base import RUNTIMES


@RUNTIMES.register("grpc")
def grpc_runtime(app, config=None):
    """The in-process entry point refuses: a network run needs a server and joining clients."""
    raise ConfigError(
        "runtime.type = 'grpc' runs over the network: start `fedfm serve CONFIG.toml` and "
        "`fedfm join HOST:PORT --token ... --data ...` on each client (see docs/network.md)"
    )
