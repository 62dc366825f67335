"""task.type = 'lm': packed Debian descriptions, a scratch model that learns, DiLoCo, resume,
generation and bad input.

The model is a fresh SmolLM2-shaped decoder (1 layer of width 64) with SmolLM2's tokenizer, its
template read from the tiny test LM's folder (the GGUF path is tested once, below)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tests.tasks.test_causal_lm import _Interrupt
from transformers import AutoConfig

import fedfm
from fedfm.cli import main as cli
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.tasks import models
from fedfm.tasks.generation import generate

DEBIAN = "${FEDFM_DATA}/debian"


def tiny_pretrain(template) -> list[str]:
    """A scratch model on 300 Debian descriptions split by maintainer: seconds per round."""
    return [
        "name=lm",
        "task.type=lm",
        f"model.name={str(template)!r}",
        "model.init=scratch",
        "model.layers=1",
        "model.hidden_size=64",
        "method.type=full",
        f"data.train={DEBIAN}/train.tsv",
        f"data.test={DEBIAN}/test.tsv",
        "data.train_rows=300",
        "data.test_rows=60",
        "data.eval_rows=24",
        "data.max_length=64",
        "partition.scheme=column",
        "partition.column=maintainer",
        "partition.min_size=20",
        "partition.clients=3",
        "federation.clients_per_round=3",
        "federation.rounds=3",
        "federation.local_steps=6",
        "federation.batch_size=8",
        "federation.lr=3e-3",
        "runtime.threads=1",
    ]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_defaults_for_lm_and_what_it_refuses():
    config = load_config(None, ["task.type=lm", "method.type=lora"])
    assert config.model.name == "smollm2"  # the default encoder cannot pre-train text
    assert config.method.target_modules == ("q_proj", "v_proj")
    refused = [
        (["model.init=scratch"], "method.type = 'lora' is not allowed; allowed: 'full' with"),
        (
            ["method.type=prompt"],
            "method.type = 'prompt' is not allowed; allowed: 'lora' or 'full'",
        ),
        (["model.layers=2"], "model.layers = 2 is not allowed; allowed: 0 unless model.init"),
        (["model.hidden_size=128"], "model.hidden_size = 128 is not allowed"),
        (
            ["privacy.dp=local", "privacy.noise_multiplier=1.0"],
            "privacy.dp = 'local' is not allowed",
        ),
    ]
    for overrides, message in refused:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(None, ["task.type=lm", *overrides])
    with pytest.raises(ConfigError, match="model.hidden_size = 64 is not allowed"):
        load_config(None, ["model.hidden_size=64"])  # classification


def test_scratch_shape_follows_smollm2s_proportions(tiny_lm):
    base = AutoConfig.from_pretrained(str(tiny_lm))
    shape = models.scratch_shape(base, 49152, 3, 192)
    assert (shape.num_hidden_layers, shape.hidden_size, shape.vocab_size) == (3, 192, 49152)
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.head_dim) == (3, 1, 64)
    with pytest.raises(
        ConfigError, match=r"model.hidden_size = 100 is not allowed; allowed: a multiple of 64"
    ):
        models.scratch_shape(base, 49152, 3, 100)


def test_the_loss_is_hfs_causal_lm_loss_on_a_batch_of_full_blocks(tiny_lm):
    from fedfm.assemble import prepare

    p = prepare(load_config(None, tiny_pretrain(tiny_lm)))
    tokens = p.train_tokens
    full = np.flatnonzero(tokens.lengths() == 64)[:4]
    assert len(full) == 4 and len(tokens) > 100  # 300 descriptions make hundreds of blocks
    ours = p.task.loss(tokens, p.train.labels, full)
    input_ids, mask = tokens.batch(full, p.task.pad_id)
    with p.task.autocast():
        hf = p.task.model(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
    torch.testing.assert_close(ours, hf.float(), rtol=2e-2, atol=2e-2)  # bf16 autocast
    # every block of a maintainer's client comes from that maintainer's descriptions
    part = p.partition
    single = [(rows, g) for rows, g in zip(part.indices, part.groups, strict=True) if "(" not in g]
    assert single  # the largest maintainers have clients of their own
    for rows, group in single:
        assert {p.train.columns["maintainer"][i] for i in rows} == {group}


def test_pretraining_lowers_perplexity_counts_tokens_generates_and_resumes_bit_for_bit(
    tiny_lm, tmp_path, capsys
):
    from fedfm.assemble import prepare

    config = load_config(None, [*tiny_pretrain(tiny_lm), "strategy.name=diloco"])
    fresh = prepare(config)
    initial = fresh.task.evaluate(fresh.test_tokens, fresh.test.labels, fresh.eval_rows)
    assert initial["perplexity"] > 20_000  # a fresh model: close to uniform over 49,152 tokens
    result = fedfm.run(config, out=tmp_path)
    rows = _rows(result.run_dir)
    assert rows[-1]["perplexity"] < rows[0]["perplexity"] < 0.5 * initial["perplexity"]
    assert rows[-1]["perplexity"] < 0.2 * initial["perplexity"]
    for r in rows:
        assert r["perplexity"] == pytest.approx(np.exp(r["eval_loss"]))
    s = result.summary
    assert s["final_perplexity"] < 0.2 * initial["perplexity"]  # on all 60 test descriptions
    assert s["test_rows"] == fresh.test.documents == 60 and s["test_blocks"] == len(fresh.test)
    # tokens: 3 rounds × 3 clients × 6 steps × 8 blocks of ≤ 64 tokens, most of them full
    budget = 3 * 3 * 6 * 8 * 64
    assert 0.8 * budget < s["tokens_total"] <= budget
    assert (
        sum(s["tokens_per_client"].values()) == s["tokens_total"] == sum(r["tokens"] for r in rows)
    )
    # the exported model is a plain HF folder: generation continues a prompt
    assert (result.run_dir / "model" / "config.json").is_file()
    text = generate(result.run_dir, "This package", max_new_tokens=12, seed=1)
    assert text.startswith("This package") and len(text) > len("This package")
    assert text == generate(result.run_dir, "This package", max_new_tokens=12, seed=1)
    assert (
        cli(["generate", str(result.run_dir), "--prompt", "A library", "--max-new-tokens", "5"])
        == 0
    )
    assert capsys.readouterr().out.startswith("A library")

    # interrupted in round 3 and resumed (the outer momentum comes from round 2's checkpoint):
    # the same weights, bit for bit
    with pytest.raises(KeyboardInterrupt):
        fedfm.run(config, out=tmp_path / "cut", sinks=[_Interrupt(in_round=3)])
    resumed = fedfm.run(resume=tmp_path / "cut" / config.name)
    x = load_file(str(result.run_dir / "checkpoints/round_00003/state.safetensors"))
    y = load_file(str(resumed.run_dir / "checkpoints/round_00003/state.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert resumed.summary["final_perplexity"] == s["final_perplexity"]
    assert resumed.summary["tokens_per_client"] == s["tokens_per_client"]


def test_diloco_at_outer_lr_one_without_momentum_is_fedavg_bit_for_bit(tiny_lm, tmp_path):
    base = [*tiny_pretrain(tiny_lm), "federation.rounds=2", "federation.local_steps=2"]
    fedavg = fedfm.run(load_config(None, base), out=tmp_path / "fedavg")
    identity = ["strategy.name=diloco", "strategy.outer_lr=1.0", "strategy.momentum=0.0"]
    diloco1 = fedfm.run(load_config(None, [*base, *identity]), out=tmp_path / "d1")
    a = load_file(str(fedavg.run_dir / "checkpoints/round_00002/state.safetensors"))
    b = load_file(str(diloco1.run_dir / "checkpoints/round_00002/state.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert diloco1.summary["final_perplexity"] == fedavg.summary["final_perplexity"]


def test_bad_input_is_one_line_and_exit_2(tiny_lm, tmp_path, capsys):
    base = tiny_pretrain(tiny_lm)
    cases = [
        (["data.text_column=body"], "data.text_column = 'body' is not a column of"),
        (["data.max_length=512"], "data.max_length = 512 is not allowed; allowed: ≤ 256"),
        (
            ["model.hidden_size=96"],
            "model.hidden_size = 96 is not allowed; allowed: a multiple of 64",
        ),
    ]
    for overrides, message in cases:
        args = ["run", "--out", str(tmp_path)]
        for o in [*base, *overrides]:
            args += ["--set", o]
        assert cli(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert any(message in line for line in err), err
        assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "lm" / "summary.json").exists()


def test_a_classification_run_cannot_generate(tmp_path):
    (tmp_path / "config.toml").write_text('[task]\ntype = "classification"\n')
    with pytest.raises(
        ConfigError, match="generating text needs a run of task.type 'causal_lm', 'lm'"
    ):
        generate(tmp_path, "hello")


@pytest.mark.slow  # the real SmolLM2-135M (converted once from its GGUF file): minutes on 2 cores
def test_continued_pretraining_of_smollm2_with_lora_lowers_its_debian_perplexity(tmp_path):
    from fedfm.assemble import prepare

    config = load_config(
        None,
        [
            "name=continued",
            "task.type=lm",
            "method.type=lora",
            f"data.train={DEBIAN}/train.tsv",
            f"data.test={DEBIAN}/test.tsv",
            "data.train_rows=400",
            "data.test_rows=40",
            "data.eval_rows=32",
            "data.max_length=64",
            "partition.scheme=column",
            "partition.column=maintainer",
            "partition.min_size=10",
            "partition.clients=2",
            "federation.clients_per_round=2",
            "federation.rounds=2",
            "federation.local_steps=6",
            "federation.batch_size=4",
            "federation.lr=1e-3",
        ],
    )
    assert config.model.name == "smollm2"
    fresh = prepare(config)
    before = fresh.task.evaluate(fresh.test_tokens, fresh.test.labels, fresh.eval_rows)
    del fresh
    result = fedfm.run(config, out=tmp_path)
    rows = _rows(result.run_dir)
    assert rows[-1]["perplexity"] < 0.9 * before["perplexity"]
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    assert generate(result.run_dir, "This package", max_new_tokens=8).startswith("This package")


def test_a_network_clients_file_needs_only_its_text_column(tiny_lm, tmp_path):
    from fedfm.assemble import node_app

    own = tmp_path / "mine.jsonl"
    own.write_text(
        "".join(
            json.dumps({"body": f"Package number {i} provides a tool."}) + "\n" for i in range(40)
        )
    )
    config = load_config(None, [*tiny_pretrain(tiny_lm), "data.text_column=body"])
    app = node_app(config, own, "c0", 0)
    (data,) = app.data.values()
    assert len(data) > 0 and int(data.tokens.lengths().max()) <= 64  # packed into blocks
