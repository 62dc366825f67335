"""Runtimes: where clients execute. ``sim`` runs them in-process on one shared frozen base."""

from fedfm.runtimes import sim  # noqa: F401  (registration)
from fedfm.runtimes.base import RUNTIMES, Runtime

__all__ = ["RUNTIMES", "Runtime"]
