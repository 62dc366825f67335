"""End to end on a small AG News slice: accuracy rises, resume is exact, the export reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fedfm
from fedfm.assemble import prepare
from fedfm.errors import TrainingError
from fedfm.metrics.sinks import Sink


def test_federated_run_improves_accuracy_and_writes_the_run_directory(tiny_config, tmp_path):
    config = tiny_config("federation.rounds=3")
    p = prepare(config)
    before = p.task.evaluate(p.test_tokens, p.test.labels)["accuracy"]

    result = fedfm.run(config, out=tmp_path)
    assert result.final_accuracy > before + 0.15, (before, result.final_accuracy)

    d = result.run_dir
    for name in ("config.toml", "metrics.jsonl", "summary.json", "partition.json", "report.html"):
        assert (d / name).is_file(), name
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {
            "accuracy",
            "loss",
            "bytes_up",
            "bytes_down",
            "round_seconds",
            "peak_rss_mb",
            "clients",
        } <= set(r)
        assert len(r["clients"]) == 2 and r["peak_rss_mb"] > 100
    summary = json.loads((d / "summary.json").read_text())
    assert summary["final_accuracy"] == result.final_accuracy
    assert summary["bytes_up_total"] == sum(r["bytes_up"] for r in rows)
    assert (
        summary["trainable_params"] == 6 * 2 * 2 * 8 * 384 + 4 * 384 + 4
    )  # LoRA r=8 on q,v + head
    assert 22_000_000 < summary["total_params"] < 23_000_000

    # bytes are the serialised payloads: one per client each way, a little over 4 bytes a parameter
    per_payload = rows[0]["bytes_down"] / 2
    assert summary["trainable_params"] * 4 < per_payload < summary["trainable_params"] * 4 + 20_000
    assert rows[0]["bytes_up"] == pytest.approx(rows[0]["bytes_down"], rel=0.01)
    assert (d / "config.toml").read_text() == fedfm.config.config_to_toml(config)


def test_exported_adapter_reloads_and_reproduces_the_accuracy(tiny_config, tmp_path):
    from peft import PeftModel

    from fedfm.tasks.classification import load_exported

    result = fedfm.run(tiny_config(), out=tmp_path)
    tokenizer, model, labels = load_exported(result.run_dir)
    assert isinstance(model.encoder, PeftModel)
    assert labels == ("Business", "Sci/Tech", "Sports", "World")

    p = prepare(tiny_config())
    p.task.model = model  # score the reloaded model with the run's own evaluation
    assert p.task.evaluate(p.test_tokens, p.test.labels)["accuracy"] == result.final_accuracy


class _Interrupt(Sink):
    """Stops the run in the middle of a round, after its first client answered."""

    def __init__(self, in_round: int) -> None:
        self.in_round = in_round

    def client_done(self, round, done, total):
        if round == self.in_round and done == 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy.name=fedavg"],
        # server optimizer state and codec references (lossy downlink deltas) must survive too
        ["strategy.name=fedadam", "codec.down=['delta','fp16']", "codec.up=['delta','bf16']"],
    ],
    ids=["fedavg", "fedadam+codecs"],
)
def test_resume_reaches_the_same_final_state(tiny_config, tmp_path, overrides):
    config = tiny_config("federation.rounds=3", *overrides)
    full = fedfm.run(config, out=tmp_path / "a")

    with pytest.raises(KeyboardInterrupt):
        fedfm.run(config, out=tmp_path / "b", sinks=[_Interrupt(in_round=3)])
    interrupted = tmp_path / "b" / config.name
    assert (interrupted / "checkpoints" / "round_00002").is_dir()
    assert not (interrupted / "checkpoints" / "round_00003").exists()
    assert not (interrupted / "summary.json").exists()

    resumed = fedfm.run(resume=interrupted)
    assert resumed.run_dir == interrupted
    assert [r["round"] for r in resumed.metrics] == [1, 2, 3]
    a = load_file(str(full.run_dir / "checkpoints/round_00003/state.safetensors"))
    b = load_file(str(interrupted / "checkpoints/round_00003/state.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.final_accuracy == full.final_accuracy
    assert [r["accuracy"] for r in resumed.metrics] == [r["accuracy"] for r in full.metrics]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_config, tmp_path, monkeypatch
):
    from fedfm.tasks.classification import ClassificationTask

    real_loss = ClassificationTask.loss
    calls = {"n": 0}

    def flaky(self, *args):
        calls["n"] += 1
        loss = real_loss(self, *args)
        return (
            loss * float("nan") if calls["n"] > 12 else loss
        )  # round 2 (2 clients × 5 steps each)

    monkeypatch.setattr(ClassificationTask, "loss", flaky)
    with pytest.raises(TrainingError, match="the loss is nan"):
        fedfm.run(tiny_config(), out=tmp_path)
    run_dir = tmp_path / "agnews-lora"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round_00001"]


@pytest.mark.parametrize("mode", ["centralized", "standalone"])
def test_other_paradigms(tiny_config, tmp_path, mode):
    result = fedfm.run(tiny_config(f"federation.mode={mode}", "federation.rounds=1"), out=tmp_path)
    s = result.summary
    assert s["mode"] == mode and s["bytes_up_total"] == 0 and 0.0 <= s["final_accuracy"] <= 1.0
    if mode == "standalone":
        per_client = s["final_accuracy_per_client"]
        assert len(per_client) == 4
        assert s["final_accuracy"] == pytest.approx(np.mean(list(per_client.values())))
        assert s["final_accuracy_worst"] == min(per_client.values())
        assert result.metrics[0]["accuracy_worst"] <= result.metrics[0]["accuracy"]
    else:
        assert s["clients"] == 1
