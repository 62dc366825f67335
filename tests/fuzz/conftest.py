"""Hypothesis profiles for the fuzzing harness, and the count of cases it ran.

The default suite runs the short profile (a few seconds in all). ``make fuzz`` runs the long one:
``FEDFM_FUZZ=long`` (``FEDFM_FUZZ_CASES`` cases per target) and writes what ran, and what
crashed, to ``FEDFM_FUZZ_REPORT``. A crash is any exception other than ProtocolError (the
property of every target) or a case over its deadline.
"""

from __future__ import annotations

import json
import os
import resource
import time
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings

from tests.fuzz import payloads

settings.register_profile(
    "short",
    max_examples=25,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("FEDFM_FUZZ_CASES", "7000")),
    deadline=timedelta(seconds=2),  # a case that takes longer is a failure (bounded time)
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("FEDFM_FUZZ", "short"))

_started = time.time()
_failed: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.failed:
        _failed.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("FEDFM_FUZZ_REPORT")
    if not path:
        return
    # ru_maxrss is in KiB on Linux: the peak of the whole process, setup included
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "profile": os.environ.get("FEDFM_FUZZ", "short"),
        "cases_per_target": settings().max_examples,
        "cases": sum(payloads.CASES.values()),
        "cases_by_target": dict(sorted(payloads.CASES.items())),
        "refused_with_protocol_error": sum(payloads.REFUSED.values()),
        "crashes": len(_failed),
        "crashed_targets": _failed,
        "seconds": round(time.time() - _started, 1),
        "peak_rss_mb": round(peak_mb, 1),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
