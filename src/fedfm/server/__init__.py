"""The server side: the one round loop (Federation) and its checkpoints."""

from fedfm.server.checkpoint import Checkpoint, latest_checkpoint, save_checkpoint
from fedfm.server.federation import Federation

__all__ = ["Checkpoint", "Federation", "latest_checkpoint", "save_checkpoint"]
