"""The live dashboard: a small read-only web page of a run (``fedfm dashboard RUN_DIR``, or
``fedfm serve --dashboard PORT`` for the server's own run).

The page shows the rounds so far, accuracy and loss curves, bytes sent, ε spent under
differential privacy and, for a served run, the connected, late and rejected clients. Its data
are the run directory's files, at ``/api/metrics`` as JSON. A top layer: nothing in fedfm's core
imports it.
"""

from fedfm.dashboard.app import RunSource, create_app
from fedfm.dashboard.data import snapshot
from fedfm.dashboard.server import DEFAULT_PORT, DashboardServer

__all__ = ["DEFAULT_PORT", "DashboardServer", "RunSource", "create_app", "snapshot"]
