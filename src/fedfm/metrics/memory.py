"""Peak resident memory of the run: this process, its finished children, and live children."""

from __future__ import annotations

import resource
import sys

_peak_children_live = 0.0


def _maxrss_mb(who: int) -> float:
    kb = resource.getrusage(who).ru_maxrss
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024  # macOS reports bytes


def peak_rss_mb() -> float:
    """Peak RSS in MB of the whole run so far, summed over its processes.

    The kernel's high-water mark for this process, plus that of finished children, plus the
    largest total seen so far of live children (sampled now).
    """
    global _peak_children_live
    try:
        import psutil

        live = sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)) / 2**20
    except Exception:  # a child may exit while we look; psutil may be missing in a slim install
        live = 0.0
    _peak_children_live = max(_peak_children_live, live)
    return (
        _maxrss_mb(resource.RUSAGE_SELF)
        + _maxrss_mb(resource.RUSAGE_CHILDREN)
        + _peak_children_live
    )
