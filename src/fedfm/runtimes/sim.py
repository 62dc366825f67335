"""In-process simulation: clients run one after another on the process's one shared model."""

from __future__ import annotations

from fedfm.codecs.wire import unpack_groups
from fedfm.errors import FedFMError, StaleReference, TrainingError
from fedfm.privacy.mechanisms import mechanism
from fedfm.runtimes.base import RUNTIMES, Runtime
from fedfm.runtimes.secure import in_process_secure_round


@RUNTIMES.register("sim")
class SimRuntime(Runtime):
    """Calls the client app directly with the same bytes a network runtime would send.

    Memory is one frozen base plus the shared tensors of the client being trained, whatever the
    number of clients.
    """

    carries_secure_aggregation = True
    carries_stages = True

    def __init__(self, app, config=None) -> None:
        self.app = app
        self.sync = None
        self.sync_bytes = 0
        # distributed DP weighs every client alike in the secure sum
        self.uniform = config is not None and mechanism(config).uniform_weights

    def prepare_round(self, rnd, sync):
        self.sync = sync

    def take_extra_bytes(self) -> int:
        n, self.sync_bytes = self.sync_bytes, 0
        return n

    def secure_dispatch(self, rnd, tasks, sharers, protocol, progress=None):
        def secure_input(task):
            vector = self._resynced(lambda: self.app.secure_input(task, self.uniform))
            return vector, self.app.reports.get(task.client_id)

        return in_process_secure_round(rnd, tasks, sharers, protocol, secure_input, progress)

    def _handle(self, task):
        return self._resynced(lambda: self.app.handle(task))

    def _resynced(self, work):
        try:
            return work()
        except StaleReference:
            # The process decoded no downlink in a round (every selected client dropped out):
            # like a network client that missed rounds, it loads the sync state first.
            if self.sync is None:
                raise
            blob = self.sync()
            self.sync_bytes += len(blob)
            self.app.load_view(unpack_groups(blob))
            return work()

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
