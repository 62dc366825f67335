"""The client side: local training (Trainer) and the message handler every runtime calls."""

from fedfm.client import personalizers  # noqa: F401 (registers the [personalize] rules)
from fedfm.client.app import ClientApp, ClientData, ClientTask
from fedfm.client.trainer import Trainer

__all__ = ["ClientApp", "ClientData", "ClientTask", "Trainer"]
