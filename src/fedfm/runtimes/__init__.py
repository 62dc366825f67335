"""Runtimes: where clients execute. ``sim`` runs them in-process on one shared frozen base;
``ray`` on Ray actors; ``grpc`` runs them as network clients of ``fedfm serve``."""

from fedfm.runtimes import network, ray, sim  # noqa: F401  (registration)
from fedfm.runtimes.base import RUNTIMES, Runtime

__all__ = ["RUNTIMES", "Runtime"]
