"""What a benchmarked system reports: wall-clock timestamps of its rounds, accuracy and bytes.

Every system (fedfm, the plain loop, Flower) runs in its own child process and fills one
:class:`Recorder`; the parent measures memory from outside, so all are measured alike.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class Recorder:
    """Collects one system's timeline and writes it as JSON (atomically) when done."""

    def __init__(self, system: str, out: Path) -> None:
        self.system = system
        self.out = out
        self.data: dict[str, Any] = {"system": system, "rounds": [], "notes": []}
        self._open: dict[int, float] = {}

    def model_loaded(self, at: float | None = None) -> None:
        """The frozen model is in memory (time to first round is measured from here too)."""
        self.data.setdefault("model_loaded", time.time() if at is None else at)

    def round_start(self, rnd: int) -> None:
        self._open[rnd] = time.time()

    def round_end(
        self,
        rnd: int,
        accuracy: float | None,
        bytes_up: int,
        bytes_down: int,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        """Close round ``rnd`` (opened by :meth:`round_start`, or with explicit timestamps)."""
        start = self._open.pop(rnd) if start is None else start
        self.data["rounds"].append(
            {
                "round": rnd,
                "start": start,
                "end": time.time() if end is None else end,
                "accuracy": accuracy,
                "bytes_up": int(bytes_up),
                "bytes_down": int(bytes_down),
            }
        )

    def note(self, text: str) -> None:
        self.data["notes"].append(text)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def finish(self, final_accuracy: float) -> None:
        self.data["final_accuracy"] = float(final_accuracy)
        self.data["finished"] = time.time()
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.out)
