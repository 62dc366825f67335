"""``report_to = ["tensorboard"]``: TensorBoard event files in ``<run_dir>/tensorboard``.

Written by PyTorch's :class:`torch.utils.tensorboard.SummaryWriter` (which needs the
``tensorboard`` package): every number of a round's row as a scalar at ``step = round``, the config
as text, and the summary's figures under ``summary/``. ``tensorboard --logdir runs`` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedfm.config import ExperimentConfig, config_to_toml
from fedfm.metrics.sinks import SINKS, Sink, scalars


@SINKS.register("tensorboard")
class TensorBoardSink(Sink):
    """Each round's figures as TensorBoard scalars (``accuracy``, ``loss``, ``bytes_up``, ...)."""

    requires = ("tensorboard",)
    install = "'fedfm[tensorboard]'"

    def __init__(self, run_dir: Path, config: ExperimentConfig) -> None:
        self.log_dir = run_dir / "tensorboard"
        self.config = config
        self.writer: Any = None
        self.last_round = 0

    def _open(self, start_round: int = 1) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run writes a new event file; purge_step hides the old file's rounds from
        # start_round on (they were run again after the last checkpoint).
        purge = start_round if start_round > 1 else None
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge)

    def start(self, info: dict[str, Any]) -> None:
        self._open(info.get("start_round", 1))
        if info.get("start_round", 1) == 1:
            self.writer.add_text("config", f"```toml\n{config_to_toml(self.config)}\n```", 0)

    def round(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            self._open()
        self.last_round = row["round"]
        for key, value in scalars(row).items():
            if key != "round":
                self.writer.add_scalar(key, value, global_step=row["round"])
        self.writer.flush()

    def end(self, summary: dict[str, Any]) -> None:
        if self.writer is None:
            self._open()
        step = summary.get("rounds", self.last_round)
        for key, value in scalars(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
