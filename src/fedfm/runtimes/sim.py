"""In-process simulation: clients run one after another on the process's one shared model."""

from __future__ import annotations

from fedfm.codecs.wire import unpack_groups
from fedfm.errors import FedFMError, StaleReference, TrainingError
from fedfm.runtimes.base import RUNTIMES, Runtime


@RUNTIMES.register("sim")
class SimRuntime(Runtime):
    """Calls the client app directly with the same bytes a network runtime would send.

    Memory is one frozen base plus the shared tensors of the client being trained, whatever the
    number of clients.
    """

    def __init__(self, app, config=None) -> None:
        self.app = app
        self.sync = None
        self.sync_bytes = 0

    def prepare_round(self, rnd, sync):
        self.sync = sync

    def take_extra_bytes(self) -> int:
        n, self.sync_bytes = self.sync_bytes, 0
        return n

    def _handle(self, task):
        try:
            return self.app.handle(task)
        except StaleReference:
            # The process decoded no downlink in a round (every selected client dropped out):
            # like a network client that missed rounds, it loads the sync state first.
            if self.sync is None:
                raise
            blob = self.sync()
            self.sync_bytes += len(blob)
            self.app.load_view(unpack_groups(blob))
            return self.app.handle(task)

    def dispatch(self, tasks):
        for task in tasks:
            try:
                yield task.client_id, self._handle(task)
            except TrainingError:
                raise  # divergence stops the run; the last good checkpoint stays
            except FedFMError as e:  # a refused message is logged and skipped, the round goes on
                yield task.client_id, e

    def state_dict(self):
        return self.app.state_dict()

    def load_state_dict(self, groups):
        self.app.load_state_dict(groups)
