"""One hostile client cannot stop a round or own the mean (issue #16, findings 1 and 4).

Each case reproduces a finding of the review: the round loop must reject the bad upload, log it,
aggregate the honest clients' updates, and store only what it admitted.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save

from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.wire import HEADER_KEY
from fedfm.config import FederationConfig, LimitsConfig
from fedfm.runtimes.base import Runtime
from fedfm.server.admission import cap_weights, weight_cap
from fedfm.server.federation import Federation
from fedfm.state import Update
from fedfm.strategies.fedavg import FedAvg, FedAvgSpec

START = OrderedDict(w=torch.zeros(2, 3))
HONEST = {"a": torch.full((2, 3), 1.0), "b": torch.full((2, 3), 3.0)}


def upload(cid: str, state=None, **header) -> bytes:
    fields = {"client": cid, "num_examples": 10, "metrics": {"loss": 0.5}, **header}
    state = OrderedDict(w=HONEST.get(cid, torch.ones(2, 3)) if state is None else state)
    return Pipeline(()).encode(state, CodecContext(1), fields)


class Replay(Runtime):
    """Answers each task with a prepared payload; records what the loop asks it to keep."""

    def __init__(self, payloads: dict[str, bytes]) -> None:
        self.payloads = payloads
        self.kept: list[str] = []

    def dispatch(self, tasks):
        for t in tasks:
            yield t.client_id, self.payloads[t.client_id]

    def keep(self, rnd, client_id, payload):
        self.kept.append(client_id)


def run_round(payloads: dict[str, bytes], limits: LimitsConfig | None = None):
    runtime = Replay(payloads)
    fed = Federation(
        strategy=FedAvg(FedAvgSpec(), FederationConfig()),
        runtime=runtime,
        client_ids=list(payloads),
        clients_per_round=len(payloads),
        rounds=1,
        evaluate=None,
        limits=limits,
    )
    state = fed.run(OrderedDict((k, v.clone()) for k, v in START.items()))
    return fed, runtime, state


def hostile_5000_digits() -> bytes:
    """The review's payload: well-formed safetensors, a 5000-digit integer in the fedfm header."""
    header = '{"wire": "1", "client": "evil", "codecs": [], "round": 1, "num_examples": '
    return save({"w": torch.ones(2, 3)}, metadata={HEADER_KEY: header + "1" * 5000 + "}"})


@pytest.mark.parametrize(
    "evil",
    [
        hostile_5000_digits(),
        upload("evil", num_examples=10**400),
        upload("evil", num_examples=10**12),
        upload("evil", metrics={"loss": 10**400}),
        upload("evil", metrics={"loss": 1e308, "x": "y"}),
        upload("evil", state=torch.full((2, 3), 3e38)),
        b"\x00" * 7,
    ],
    ids=[
        "5000-digit int",
        "10**400 examples",
        "10**12 examples",
        "huge metric",
        "bad metric",
        "3e38 values",
        "garbage",
    ],
)
def test_the_round_goes_on_without_the_hostile_update(evil):
    fed, runtime, state = run_round({"a": upload("a"), "evil": evil, "b": upload("b")})
    assert torch.equal(state["w"], torch.full((2, 3), 2.0))  # the mean of the honest two
    assert fed.rows[0]["clients"] == ["a", "b"]
    assert fed.rows[0]["rejected"] == ["evil"]
    assert runtime.kept == ["a", "b"]  # only admitted uploads are stored (resume replays them)


def test_an_update_norm_bound_is_optional():
    far = upload("b", state=torch.full((2, 3), 100.0))
    _, _, state = run_round({"a": upload("a"), "b": far})
    assert state["w"][0, 0] == pytest.approx(50.5)  # no bound by default
    fed, _, state = run_round({"a": upload("a"), "b": far}, LimitsConfig(max_update_norm=10.0))
    assert torch.equal(state["w"], HONEST["a"]) and fed.rows[0]["rejected"] == ["b"]


def test_one_client_cannot_own_the_mean():
    big = upload("b", num_examples=10**9)
    _, _, state = run_round({"a": upload("a"), "b": big})
    assert state["w"][0, 0] == pytest.approx(3.0, abs=1e-6)  # uncapped: b's state is the mean
    _, _, state = run_round({"a": upload("a"), "b": big}, LimitsConfig(max_client_weight=0.5))
    assert torch.equal(state["w"], torch.full((2, 3), 2.0))  # capped at half: equal weights


@pytest.mark.parametrize(
    ("counts", "share"),
    [([10, 10, 1000], 0.5), ([1, 2, 3, 4, 10**9], 0.3), ([5, 5], 0.9), ([7, 1, 1], 0.25)],
)
def test_the_weight_cap_holds_and_keeps_as_much_weight_as_it_can(counts, share):
    cap = weight_cap(counts, share)
    if cap is None:  # nobody holds more than the share: nothing to cut
        assert max(counts) <= share * sum(counts)
        cap = max(counts)
    cut = [min(n, cap) for n in counts]
    if share * len(counts) >= 1:
        assert max(cut) <= share * sum(cut) + 1e-9
        bigger = [min(n, cap + 1) for n in counts]  # one more example would break the cap
        assert max(counts) <= cap or max(bigger) > share * sum(bigger)
    else:
        assert len(set(cut)) == 1
    updates = [Update(str(i), 1, OrderedDict(), n) for i, n in enumerate(counts)]
    assert [u.num_examples for u in cap_weights(updates, share)] == cut


class ResidualClients(Runtime):
    """Clients coding their updates with ``residual`` (each its own encoder memory, told the
    server's count in its instructions); client "a"'s upload of round 2 is lost."""

    def __init__(self) -> None:
        self.pipe = Pipeline(("residual",), "codec.up")
        self.memory: dict[str, dict] = {"a": {}, "b": {}}
        self.told: list[int] = []

    def dispatch(self, tasks):
        for t in tasks:
            rnd, cid = t.instructions.round, t.client_id
            if cid == "a":
                self.told.append(t.instructions.uplink_decoded)
            received, _ = Pipeline(()).decode(t.payload, CodecContext(rnd), START)
            ctx = CodecContext(rnd, received, self.memory[cid])  # coded against the global state
            ctx.peer_decoded = t.instructions.uplink_decoded
            fields = {"client": cid, "num_examples": 10, "metrics": {"loss": 0.5}}
            state = OrderedDict(w=HONEST[cid] * rnd)
            payload = self.pipe.encode(state, ctx, fields)
            if (rnd, cid) == (2, "a"):
                yield cid, ConnectionError("lost")
                continue
            yield cid, payload


def test_residual_uplink_resynchronises_after_a_lost_upload():
    """#16: one lost upload used to leave the two ends' predictions apart for good."""
    runtime = ResidualClients()
    fed = Federation(
        strategy=FedAvg(FedAvgSpec(), FederationConfig()),
        runtime=runtime,
        client_ids=["a", "b"],
        clients_per_round=2,
        rounds=4,
        evaluate=None,
        up=runtime.pipe,
    )
    state = fed.run(OrderedDict((k, v.clone()) for k, v in START.items()))
    assert runtime.told == [0, 1, 1, 2]  # round 3: 1 decoded, not 2: "a" re-based, then in step
    assert [r["client"] for r in fed.rejected] == ["a"]  # only the lost upload
    assert torch.allclose(state["w"], (HONEST["a"] + HONEST["b"]) * 4 / 2)  # round 4, exact
