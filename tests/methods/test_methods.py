"""Every method trains, and only its own tensors change and travel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedfm.assemble import prepare
from fedfm.client.app import ClientApp, ClientData, ClientTask
from fedfm.client.trainer import Trainer
from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.wire import unpack
from fedfm.state import FitInstructions

# method type -> (marker every shared encoder tensor's name contains, expected trainable count)
METHODS = {
    "lora": ("lora_", 6 * 2 * 2 * 8 * 384),
    "prompt": ("prompt_encoder", 16 * 384),
    "adapter": (
        "ia3_",
        6 * (3 * 384 + 1536),
    ),  # key, value, attention out; FFN out scales its 1536 inputs
    "head": (None, 0),
    "full": ("", None),
}
HEAD = 4 * 384 + 4


@pytest.mark.parametrize("method", list(METHODS))
def test_only_the_methods_tensors_train_and_travel(tiny_config, method):
    p = prepare(tiny_config(f"method.type={method}"))
    marker, encoder_count = METHODS[method]
    shared = p.task.shared
    encoder_names = [n for n in shared if not n.startswith("head.")]
    assert {"head.weight", "head.bias"} <= set(shared)
    if marker is None:
        assert encoder_names == []
    else:
        assert encoder_names and all(marker in n for n in encoder_names)
    trainable, total = p.task.num_params()
    if encoder_count is not None:
        assert trainable == encoder_count + HEAD
    else:
        assert trainable == total

    frozen = {n: q.detach().clone() for n, q in p.task.model.named_parameters() if n not in shared}
    start = p.task.get_state()
    data = {"c0": ClientData(p.train_tokens, p.train.labels, p.partition.indices[0])}
    app = ClientApp(Trainer(p.task, seed=0), data, Pipeline(()), Pipeline(()), start)
    down = Pipeline(()).encode(start, CodecContext(round=1), {})
    payload = app.handle(
        ClientTask("c0", down, FitInstructions(round=1, local_steps=3, lr=5e-3, batch_size=8))
    )

    tensors, header = unpack(payload)
    assert sorted(tensors) == sorted(shared)  # exactly the shared tensors travel
    assert header["client"] == "c0" and header["num_examples"] == len(p.partition.indices[0])
    assert np.isfinite(header["metrics"]["loss"])
    changed = [n for n in shared if not torch.equal(tensors[n], start[n])]
    assert "head.weight" in changed and (
        marker is None or any(n != "head.weight" and n != "head.bias" for n in changed)
    )
    for n, before in frozen.items():  # the frozen base is untouched
        assert torch.equal(dict(p.task.model.named_parameters())[n], before), n
