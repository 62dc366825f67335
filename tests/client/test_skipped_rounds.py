"""A client that missed rounds never decodes a delta-coded downlink against the wrong state:
the header names the reference round; a stale receiver refuses it (StaleReference) and, given
the full state (sync), decodes exactly what up-to-date clients hold."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from tests.client.test_secure_input import TEMPLATE, StepTrainer

from fedfm.client.app import ClientApp
from fedfm.codecs import Pipeline
from fedfm.codecs.wire import unpack_groups
from fedfm.config import FederationConfig
from fedfm.errors import FedFMError, StaleReference
from fedfm.runtimes.base import Runtime
from fedfm.server.federation import Federation
from fedfm.strategies.fedavg import FedAvg, FedAvgSpec

DOWN = ("delta", "int8")
SCHEDULE = {1: ["c0", "c1"], 2: ["c0"], 3: ["c0", "c1"]}  # c1 misses round 2


class Scheduled(FedAvg):
    def select(self, round, clients, k, rng):
        return SCHEDULE[round]


class Processes(Runtime):
    """Each client in its own ClientApp, as on separate machines; ``resync``: on a
    StaleReference the process loads the round's sync state, as ``fedfm join`` does."""

    def __init__(self, resync: bool) -> None:
        self.apps = {
            c: ClientApp(StepTrainer(), {c: None}, Pipeline(DOWN), Pipeline(()), TEMPLATE)
            for c in ("c0", "c1")
        }
        for i, app in enumerate(self.apps.values()):
            app.index = {next(iter(app.data)): i}
        self.resync, self.sync = resync, None

    def prepare_round(self, rnd, sync):
        self.sync = sync

    def dispatch(self, tasks):
        for task in tasks:
            app = self.apps[task.client_id]
            try:
                try:
                    payload = app.handle(task)
                except StaleReference:
                    if not self.resync:
                        raise
                    app.load_view(unpack_groups(self.sync()))
                    payload = app.handle(task)
                yield task.client_id, payload
            except FedFMError as e:
                yield task.client_id, e


def _run(resync: bool) -> tuple[Federation, Processes]:
    runtime = Processes(resync)
    fed = Federation(
        strategy=Scheduled(FedAvgSpec(), FederationConfig()),
        runtime=runtime,
        client_ids=["c0", "c1"],
        clients_per_round=2,
        rounds=3,
        evaluate=None,
        down=Pipeline(DOWN),
        seed=0,
    )
    g = torch.Generator().manual_seed(0)
    fed.run(OrderedDict((n, torch.randn(t.shape, generator=g)) for n, t in TEMPLATE.items()))
    return fed, runtime


def test_a_client_that_missed_a_round_refuses_the_delta_instead_of_decoding_garbage():
    fed, _ = _run(resync=False)
    (refusal,) = fed.rejected
    assert refusal["round"] == 3 and refusal["client"] == "c1"
    assert "coded against round 2's state" in refusal["reason"]
    assert "holds round 1's" in refusal["reason"]


def test_with_the_sync_state_it_decodes_exactly_what_up_to_date_clients_hold():
    fed, runtime = _run(resync=True)
    assert fed.rejected == []
    for app in runtime.apps.values():
        assert app.view_round == 3
        assert all(torch.equal(app.view[n], fed.client_view[n]) for n in TEMPLATE)


def test_a_checkpoint_and_a_sync_blob_carry_the_view_round():
    fed, runtime = _run(resync=True)
    groups = fed.memory_state()
    assert int(groups["server.meta"]["view_round"][0]) == 3
    app = runtime.apps["c0"]
    app.load_state_dict(app.state_dict())
    assert app.view_round == 3
    with pytest.raises(FedFMError, match="no valid view_round"):
        app.load_view({"client.meta": {"view_round": torch.tensor([1.5])}})
