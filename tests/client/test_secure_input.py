"""ClientApp.secure_input: a network client feeds secure aggregation exactly the vector the
simulation builds from the update the server would have decoded (lossy, stateful codecs too)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedfm.client.app import ClientApp, ClientTask
from fedfm.client.secure import secure_vector
from fedfm.codecs import CodecContext, Pipeline, peer_seed
from fedfm.state import FitInstructions, Update

TEMPLATE = OrderedDict(a=torch.zeros(6, 5), b=torch.zeros(7))


class StepTrainer:
    """Moves every tensor by a seeded random step: a deterministic stand-in for training."""

    seed = 0
    seen = None  # as Trainer: no record of the rows trained on (no audit)

    def fit(self, client_id, index, start, data, instructions):
        g = torch.Generator().manual_seed(instructions.round * 100 + index)
        state = OrderedDict(
            (n, t + 0.1 * torch.randn(t.shape, generator=g)) for n, t in start.items()
        )
        return Update(client_id, instructions.round, state, 40 + index, {"loss": 1.5 - 0.1 * index})


def _app(up):
    app = ClientApp(StepTrainer(), {"c1": None}, Pipeline(()), Pipeline(up), TEMPLATE)
    app.index = {"c1": 1}
    return app


@pytest.mark.parametrize(
    "up", [(), ("delta", "int8"), ("residual", "int4:block=4"), ("int8", "zlib")]
)
def test_the_secure_input_is_the_vector_of_what_the_server_would_decode(up):
    plain, secure = _app(up), _app(up)
    server_memory: dict = {}
    g = torch.Generator().manual_seed(0)
    for rnd in (1, 2, 3):  # stateful codecs (residual) must stay in step across rounds
        glob = OrderedDict((n, torch.randn(t.shape, generator=g)) for n, t in TEMPLATE.items())
        down = Pipeline(()).encode(glob, CodecContext(rnd), {"kind": "global"})
        task = ClientTask(
            "c1", down, FitInstructions(round=rnd, local_steps=1, lr=0.1, batch_size=4)
        )
        payload = plain.handle(task)
        ctx = CodecContext(rnd, glob, server_memory, peer_seed(0, "c1"))
        decoded, header = Pipeline(up).decode(payload, ctx, TEMPLATE)
        expected = secure_vector(decoded, glob, float(header["num_examples"]), 1.4)
        got = secure.secure_input(task, uniform_weights=False)
        assert np.array_equal(got, expected)
        assert got[-1] == 41.0 and got[-2] == pytest.approx(41 * 1.4)


def test_distributed_dp_weighs_every_client_alike():
    glob = OrderedDict((n, torch.ones(t.shape)) for n, t in TEMPLATE.items())
    down = Pipeline(()).encode(glob, CodecContext(1), {"kind": "global"})
    task = ClientTask("c1", down, FitInstructions(round=1, local_steps=1, lr=0.1, batch_size=4))
    vector = _app(()).secure_input(task, uniform_weights=True)
    assert vector[-1] == 1.0 and vector[-2] == pytest.approx(1.4)
