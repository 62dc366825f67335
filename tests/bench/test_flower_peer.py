"""The Flower peer of ``fedfm bench``: a tiny scenario through ``python -m fedfm.bench.peer``.

Needs ``flwr[simulation]`` (the bench venv); skipped where Flower is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

TINY = [
    "data.train_rows=400",
    "data.test_rows=100",
    "data.eval_rows=100",
    "partition.clients=4",
    "federation.clients_per_round=2",
    "federation.rounds=2",
    "federation.local_steps=2",
    "federation.batch_size=8",
]


@pytest.mark.slow  # starts Ray and MiniLM: 45-100 s on 2 shared cores
def test_flower_peer_runs_two_rounds(tmp_path):
    from fedfm.config import config_to_toml, load_config

    config = tmp_path / "flower.toml"
    config.write_text(config_to_toml(load_config(None, TINY)))
    out = tmp_path / "flower.json"
    launched = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "fedfm.bench.peer", "flower", str(config), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr

    data = json.loads(out.read_text())
    assert data["system"] == "flower"
    rounds = data["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert launched < data["model_loaded"] < rounds[0]["start"]
    for r in rounds:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["start"] < r["end"]
        # two clients each way, each message at least the trainable fp32 tensors
        assert r["bytes_up"] >= 2 * 4 * data["trainable_params"]
        assert r["bytes_down"] >= 2 * 4 * data["trainable_params"]
    assert rounds[0]["end"] <= rounds[1]["start"]
    assert data["final_accuracy"] == rounds[-1]["accuracy"]
    assert data["finished"] >= rounds[-1]["end"]
    # each round trained exactly clients_per_round distinct partitions of the split
    for clients in data["flower_clients"].values():
        partitions = [c["partition"] for c in clients]
        assert len(set(partitions)) == 2 and set(partitions) <= {0, 1, 2, 3}
