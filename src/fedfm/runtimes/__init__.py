"""Runtimes: where clients execute (``[runtime] type``). ``sim`` runs them in-process on one
shared frozen base; ``ray`` on Ray actors; ``grpc`` runs them as network clients of
``fedfm serve`` (``fedfm run`` with it serves the experiment)."""

from fedfm.runtimes import ray, sim  # noqa: F401  (registration)
from fedfm.runtimes.base import RUNTIMES, Runtime
from fedfm.runtimes.grpc import serve  # noqa: F401  (registration)

__all__ = ["RUNTIMES", "Runtime"]
