"""Run one system in a child process and measure its whole process tree from outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedfm.config import parse_config_text
from fedfm.errors import FedFMError


@dataclass
class Measured:
    """One system's run: its own timeline (Recorder JSON) and what the parent measured."""

    label: str
    system: str
    launched: float
    timeline: dict[str, Any]
    peak_tree_mb: float  # peak of the summed RSS of the child and all its descendants
    peak_system_mb: float  # peak rise of the machine's used memory during the run
    wall_seconds: float
    memory_trace: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MB)


class _MemorySampler(threading.Thread):
    """Samples the RSS of a process tree and the machine's used memory every ``interval``."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.baseline = psutil.virtual_memory().used
        self.peak_tree = 0.0
        self.peak_system = 0.0
        self.trace: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.t0 = time.time()

    def sample(self) -> None:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except self.psutil.Error:
                continue
        mb = total / 2**20
        self.peak_tree = max(self.peak_tree, mb)
        self.peak_system = max(
            self.peak_system, (self.psutil.virtual_memory().used - self.baseline) / 2**20
        )
        self.trace.append((time.time() - self.t0, mb))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def run_system(
    label: str,
    system: str,
    config_toml: str,
    workdir: Path,
    python: str = sys.executable,
    timeout: float = 3600,
    resume: bool = False,
) -> Measured:
    """Run ``system`` on the config in a child process; raise FedFMError if it fails.

    With ``resume``, a finished earlier run of the same label on the identical config (its
    ``<label>.measured.json`` holds the config it ran) is read back instead of run again.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{label}.toml"
    out = workdir / f"{label}.json"
    log = workdir / f"{label}.log"
    measured_path = workdir / f"{label}.measured.json"
    if resume:
        earlier = _earlier(measured_path, out, system, config_toml)
        if earlier is not None:
            return earlier
    measured_path.unlink(missing_ok=True)
    config_path.write_text(config_toml)
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    launched = time.time()
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [python, "-m", "fedfm.bench.peer", system, str(config_path), str(out)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        sampler = _MemorySampler(proc.pid)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise FedFMError(
                f"bench: {label} did not finish within {timeout:.0f} s (log: {log})"
            ) from None
        finally:
            sampler.stop.set()
            sampler.join()
    if code != 0 or not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise FedFMError(
            f"bench: {label} failed with exit code {code}; last lines of {log}:\n{tail}"
        )
    measured = Measured(
        label=label,
        system=system,
        launched=launched,
        timeline=json.loads(out.read_text()),
        peak_tree_mb=sampler.peak_tree,
        peak_system_mb=sampler.peak_system,
        wall_seconds=time.time() - launched,
        memory_trace=sampler.trace,
    )
    record = {k: v for k, v in asdict(measured).items() if k != "timeline"}
    tmp = measured_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**record, "config": config_toml}))
    tmp.replace(measured_path)  # written last: its presence marks a finished run
    return measured


def _earlier(measured_path: Path, out: Path, system: str, config_toml: str) -> Measured | None:
    """The finished earlier run recorded at ``measured_path``, if it ran ``config_toml``."""
    if not (measured_path.is_file() and out.is_file()):
        return None
    try:
        record = json.loads(measured_path.read_text())
        timeline = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    if not _same_config(record.pop("config", None), config_toml) or record.get("system") != system:
        return None
    record["memory_trace"] = [tuple(p) for p in record.get("memory_trace", [])]
    return Measured(**record, timeline=timeline)


def _same_config(earlier: str | None, now: str) -> bool:
    """The same experiment: equal TOML, or equal once both are read back (a key added to
    fedfm since, with its default value, does not make a finished run stale)."""
    if earlier is None:
        return False
    if earlier == now:
        return True

    try:
        return parse_config_text(earlier) == parse_config_text(now)
    except FedFMError:
        return False
