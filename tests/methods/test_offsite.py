"""Offsite-tuning's emulator: which layers it keeps, how its tensors are named, what trains and
travels, and that the server's plug-in model is the full model with the tuned ends."""

from __future__ import annotations

import pytest
import torch
from tests.tasks.test_lm import tiny_pretrain
from torch import nn

import fedfm
from fedfm.assemble import prepare
from fedfm.client.app import ClientApp, ClientData, ClientTask
from fedfm.client.trainer import Trainer
from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.wire import unpack
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.methods.offsite import IndexedLayers, check_layers, emulator_layers
from fedfm.state import FitInstructions
from fedfm.tasks.classification import TextClassifier
from fedfm.tasks.models import load_encoder

OFFSITE = ["federation.mode=offsite", "method.type=full", "offsite.keep_layers=1"]


@pytest.mark.parametrize(
    ("total", "keep", "drop_every", "kept"),
    [
        (6, 1, 2, [0, 1, 3, 5]),  # minilm: middle 1-4, every other
        (6, 2, 2, [0, 1, 2, 4, 5]),
        (6, 1, 3, [0, 1, 4, 5]),
        (30, 2, 2, [0, 1, *range(2, 28, 2), 28, 29]),  # smollm2
        (10, 2, 4, [0, 1, 2, 6, 8, 9]),
    ],
)
def test_emulator_keeps_the_ends_and_every_nth_middle_layer(total, keep, drop_every, kept):
    assert emulator_layers(total, keep, drop_every) == kept
    assert check_layers(total, keep, drop_every, "m") == kept


@pytest.mark.parametrize(
    ("total", "keep", "drop_every", "message"),
    [
        (6, 3, 2, "offsite.keep_layers = 3 is not allowed; allowed: 1 … 2"),
        (6, 4, 2, "offsite.keep_layers = 4 is not allowed"),
        (5, 2, 2, "the emulator would drop no middle layer"),  # a middle of one layer
    ],
)
def test_settings_that_leave_no_middle_are_refused(total, keep, drop_every, message):
    with pytest.raises(ConfigError, match=message):
        check_layers(total, keep, drop_every, "m")


def test_indexed_layers_name_by_full_index_and_run_by_position():
    layers = IndexedLayers({0: nn.Linear(2, 2), 3: nn.Linear(2, 2), 5: nn.Linear(2, 2)})
    assert [n.split(".")[0] for n, _ in layers.named_parameters()][::2] == ["0", "3", "5"]
    assert layers[1] is layers._modules["3"] and layers[-1] is layers._modules["5"]
    assert len(layers) == 3 and len(layers[:2]) == 2 and list(layers)[2] is layers[2]


@pytest.fixture(scope="module")
def prepared(tiny_config_module):
    return prepare(tiny_config_module(*OFFSITE))


def _layer_indices(model: nn.Module) -> list[int]:
    return sorted(
        {
            int(n.split("layer.")[1].split(".")[0])
            for n, _ in model.named_parameters()
            if "encoder.layer." in n
        }
    )


def test_emulator_has_the_kept_layers_and_the_full_models_names(prepared):
    p = prepared
    assert _layer_indices(p.task.model) == [0, 1, 2, 3, 4, 5]  # the server's full model
    assert _layer_indices(p.client_task.model) == [0, 1, 3, 5]  # the clients' emulator
    assert p.offsite["emulator_layers"] == [0, 1, 3, 5]
    assert list(p.client_task.shared) == list(p.task.shared)  # one template for both
    for name, tensor in p.client_task.get_state().items():
        assert tensor.shape == p.task.shared[name].shape


def test_only_the_end_layers_and_head_train(prepared):
    p = prepared
    shared = list(p.task.shared)
    assert {"head.weight", "head.bias"} <= set(shared)
    body = [n for n in shared if not n.startswith("head.")]
    assert body and all(
        n.startswith(("encoder.encoder.layer.0.", "encoder.encoder.layer.5.")) for n in body
    )
    ends = [q for n, q in p.task.model.named_parameters() if ".layer.0." in n or ".layer.5." in n]
    assert len(body) == len(ends)  # the ends train fully (method 'full')
    assert p.task.num_params()[0] == p.client_task.num_params()[0]
    o = p.offsite
    assert o["withheld_params"] == o["middle_params"] - o["emulator_middle_params"] > 0
    assert o["emulator_params"] == o["full_model_params"] - o["withheld_params"]


def test_only_end_layer_tensors_travel_and_the_emulators_middle_stays(prepared):
    p = prepared
    task = p.client_task
    frozen = {
        n: q.detach().clone() for n, q in task.model.named_parameters() if n not in task.shared
    }
    start = p.task.get_state()  # the server's (full model's) state
    data = {"c0": ClientData(p.train_tokens, p.train.labels, p.partition.indices[0])}
    app = ClientApp(Trainer(task, seed=0), data, Pipeline(()), Pipeline(()), task.get_state())
    down = Pipeline(()).encode(start, CodecContext(round=1), {})
    payload = app.handle(
        ClientTask("c0", down, FitInstructions(round=1, local_steps=2, lr=1e-4, batch_size=8))
    )
    tensors, _ = unpack(payload)
    assert sorted(tensors) == sorted(p.task.shared)
    assert not torch.equal(
        tensors["encoder.encoder.layer.5.output.dense.weight"],
        start["encoder.encoder.layer.5.output.dense.weight"],
    )
    for n, before in frozen.items():
        assert torch.equal(dict(task.model.named_parameters())[n], before), n


@torch.no_grad()
def test_plug_in_model_is_the_full_model_with_the_tuned_ends(prepared):
    p = prepared
    generator = torch.Generator().manual_seed(0)
    tuned = {
        n: t + 0.05 * torch.randn(t.shape, generator=generator)
        for n, t in p.task.get_state().items()
    }
    ids, mask = p.test_tokens.batch(torch.arange(8).numpy(), p.task.pad_id)

    p.task.set_state(tuned)
    p.client_task.set_state(tuned)
    plug_in = p.task.model.eval()(ids, mask)
    emulated = p.client_task.model.eval()(ids, mask)

    _, encoder = load_encoder("minilm")  # by hand: the full model, the tuned ends loaded
    hand = TextClassifier(encoder, encoder.config.hidden_size, len(p.train.label_names)).eval()
    missing, unexpected = hand.load_state_dict(tuned, strict=False)
    assert unexpected == [] and not set(tuned) & set(missing)
    assert torch.allclose(plug_in, hand(ids, mask), atol=1e-5)
    assert not torch.allclose(plug_in, emulated, atol=1e-3)


# ---- decoders: a tiny 6-layer Llama with SmolLM2's tokenizer, instruction tuning ---------------


@pytest.fixture(scope="module")
def six_layer_lm(tokenizer, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("six-layer-lm")
    LlamaForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_causal_lm_offsite_run_trains_lora_on_the_end_layers(six_layer_lm, tmp_path):
    question = "Which topic is this news about? Answer with one word."
    config = load_config(
        None,
        [
            "task.type=causal_lm",
            f"task.instruction={question!r}",
            "task.max_new_tokens=4",
            f"model.name={str(six_layer_lm)!r}",
            "data.train_rows=48",
            "data.test_rows=12",
            "data.eval_rows=8",
            "data.max_length=64",
            "partition.clients=2",
            "federation.clients_per_round=2",
            "federation.rounds=2",
            "federation.local_steps=2",
            "federation.batch_size=4",
            "federation.lr=1e-3",
            "runtime.threads=1",
            "federation.mode=offsite",
            "offsite.keep_layers=1",
        ],
    )
    result = fedfm.run(config, out=tmp_path)
    s = result.summary
    assert s["offsite"]["emulator_layers"] == [0, 1, 3, 5]
    # LoRA r=8 on q (32→32) and v (32→16) of layers 0 and 5 only
    assert s["trainable_params"] == 2 * ((8 * 32 + 32 * 8) + (8 * 32 + 16 * 8))
    assert "final_emulator_accuracy" in s and s["final_accuracy"] is not None
    assert all("emulator_perplexity" in r for r in result.metrics)


def test_lm_pretraining_offsite_run_trains_the_end_layers_fully(tiny_lm, tmp_path):
    overrides = [*tiny_pretrain(tiny_lm), "model.layers=6", "federation.rounds=2"]
    config = load_config(None, [*overrides, "federation.mode=offsite", "offsite.keep_layers=1"])
    result = fedfm.run(config, out=tmp_path)
    s = result.summary
    assert s["offsite"]["emulator_layers"] == [0, 1, 3, 5] and s["offsite"]["layers"] == 6
    layer = s["offsite"]["middle_params"] // 4  # the middle is 4 layers of one shape
    assert s["trainable_params"] == 2 * layer  # layers 0 and 5, nothing else
    assert all(r["perplexity"] and r["emulator_perplexity"] for r in result.metrics)
