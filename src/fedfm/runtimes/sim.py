"""In-process simulation: clients run one after another on the process's one shared model."""

from __future__ import annotations

from fedfm.errors import FedFMError, TrainingError
from fedfm.runtimes.base import RUNTIMES, Runtime


@RUNTIMES.register("sim")
class SimRuntime(Runtime):
    """Calls the client app directly with the same bytes a network runtime would send.

    Memory is one frozen base plus the shared tensors of the client being trained, whatever the
    number of clients.
    """

    def __init__(self, app, config=None) -> None:
        self.app = app

    def dispatch(self, tasks):
        for task in tasks:
            try:
                yield task.client_id, self.app.handle(task)
            except TrainingError:
                raise  # divergence stops the run; the last good checkpoint stays
            except FedFMError as e:  # a refused message is logged and skipped, the round goes on
                yield task.client_id, e

    def state_dict(self):
        return self.app.state_dict()

    def load_state_dict(self, groups):
        self.app.load_state_dict(groups)
