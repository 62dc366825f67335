"""Multi-process network runs on loopback: `fedfm serve` + `fedfm join` processes, with faults.

Each client process holds only its own data file (written from the simulation's partition), so
a network run can be checked against the simulated run of the same config.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedfm.cli import main
from fedfm.config import config_to_toml
from fedfm.governance.provenance import LOG
from tests.conftest import TINY

pytestmark = pytest.mark.network

SERVER = [
    "server.tokens_file=tokens.txt",
    "server.round_timeout=120",
    "server.client_timeout=8",
    "server.linger=15",  # longer than a client's largest back-off, so every client hears DONE
]
NET = [
    *TINY,
    "name=net",
    "partition.clients=4",
    "federation.clients_per_round=4",
    "federation.rounds=3",
    "federation.local_steps=3",
    *SERVER,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fedfm(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "fedfm.cli", *args],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


class Deployment:
    """Certificates, tokens, client files and a config in one folder; processes started on it."""

    def __init__(self, root: Path, overrides: list[str], join_args: tuple[str, ...] = ()) -> None:
        from fedfm.config import config_to_toml, load_config
        from fedfm.data.split import write_client_files
        from fedfm.runtimes.grpc.certs import make_certs

        self.root = root
        self.join_args = join_args
        self.config = load_config(None, overrides)
        self.files = write_client_files(self.config, root / "clients")
        self.tokens = {cid: f"token-{cid}-0123456789abcdef" for cid in self.files}
        (root / "tokens.txt").write_text("".join(f"{c} {t}\n" for c, t in self.tokens.items()))
        make_certs(root / "certs")
        (root / "net.toml").write_text(config_to_toml(self.config))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def serve(self, *extra: str) -> subprocess.Popen:
        args = ["serve", "--address", self.address, "--quiet", "--out", "runs", *extra]
        if "--resume" not in extra:
            args.insert(1, "net.toml")
        p = _fedfm(*args, cwd=self.root, log=self.root / f"serve-{len(self.procs)}.log")
        self.procs[f"serve-{len(self.procs)}"] = p
        return p

    def join(self, cid: str) -> subprocess.Popen:
        p = _fedfm(
            "join",
            self.address,
            "--ca",
            "certs/ca.pem",
            "--client-id",
            cid,
            "--token",
            self.tokens[cid],
            "--data",
            str(self.files[cid]),
            "--retry-seconds",
            "120",
            *self.join_args,
            cwd=self.root,
            log=self.root / f"join-{cid}.log",
        )
        self.procs[cid] = p
        return p

    def run_to_the_end(self) -> None:
        """Serve, join every client, and wait until all of them exit cleanly."""
        try:
            self.serve()
            for cid in self.files:
                self.join(cid)
            assert self.wait("serve-0") == 0, self.logs()
            for cid in self.files:
                assert self.wait(cid, 60) == 0, self.logs()
        finally:
            self.kill_all()

    def refused_join(self, cid: str) -> str:
        """Serve, join ``cid``, expect it to exit 2 (one line, before training): its log."""
        try:
            self.serve()
            self.join(cid)
            assert self.wait(cid, 120) == 2
        finally:
            self.kill_all()
        return (self.root / f"join-{cid}.log").read_text()

    def run_dir(self) -> Path:
        return self.root / "runs" / "net"

    def wait(self, name: str, timeout: float = 300) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"{name} did not finish in {timeout} s; logs:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _round_started(run_dir: Path, rnd: int) -> bool:
    db = run_dir / "server.sqlite"
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db) as con:
            return bool(con.execute("SELECT 1 FROM rounds WHERE round = ?", (rnd,)).fetchall())
    except sqlite3.Error:
        return False


def _assert_same_adapter(a: Path, b: Path) -> None:
    """Bit-identical LoRA factors (client processes use the same thread count as the sim)."""
    net = load_file(str(a / "adapter" / "adapter_model.safetensors"))
    sim = load_file(str(b / "adapter" / "adapter_model.safetensors"))
    assert net.keys() == sim.keys()
    worst = max((net[k].float() - sim[k].float()).abs().max().item() for k in net)
    assert worst == 0.0, f"the adapters differ by up to {worst:.3g}"


def _assert_signed_by_every_client(run_dir: Path, rounds: list[int]) -> None:
    """The provenance log holds each client's own signature of every upload it made, and
    `fedfm verify` checks the whole run directory (log, checkpoints, adapter, signatures)."""
    records = [json.loads(line) for line in (run_dir / LOG).read_text().splitlines()]
    newest = {r["round"]: r for r in records if r["kind"] == "round"}
    assert sorted(newest) == rounds
    for rec in newest.values():
        assert rec["clients"] and all(c["signed"]["public_key"] for c in rec["clients"])
    assert main(["verify", str(run_dir)]) == 0


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The same experiment in simulation: the reference the network runs must reproduce."""
    from fedfm.config import load_config
    from fedfm.experiment import run

    out = tmp_path_factory.mktemp("sim")
    result = run(load_config(None, [*NET, "server.min_clients=4"]), out=out)
    return result


def test_a_server_and_four_clients_reproduce_the_simulated_run(tmp_path, simulated):
    d = Deployment(tmp_path, [*NET, "server.min_clients=4"])
    d.run_to_the_end()
    summary = json.loads((d.run_dir() / "summary.json").read_text())
    assert summary["final_accuracy"] == simulated.summary["final_accuracy"]
    assert summary["bytes_up_total"] == simulated.summary["bytes_up_total"]
    _assert_same_adapter(d.run_dir(), simulated.run_dir)
    rows = [json.loads(r) for r in (d.run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert "done: trained in 3 rounds" in (tmp_path / "join-c0.log").read_text()
    _assert_signed_by_every_client(d.run_dir(), rounds=[1, 2, 3])


def test_a_server_killed_mid_run_resumes_to_the_same_final_state(tmp_path, simulated):
    d = Deployment(tmp_path, [*NET, "server.min_clients=4"])
    try:
        server = d.serve()
        for cid in d.files:
            d.join(cid)
        _wait_for(lambda: _round_started(d.run_dir(), 2), 240, "round 2 to start")
        server.send_signal(signal.SIGKILL)  # kill -9 in the middle of round 2
        server.wait()
        d.serve("--resume", str(d.run_dir()))
        assert d.wait("serve-5") == 0, d.logs()
        for cid in d.files:
            assert d.wait(cid, 60) == 0, d.logs()
    finally:
        d.kill_all()
    summary = json.loads((d.run_dir() / "summary.json").read_text())
    assert summary["final_accuracy"] == simulated.summary["final_accuracy"]
    _assert_same_adapter(d.run_dir(), simulated.run_dir)
    assert "joining again" in d.logs()
    _assert_signed_by_every_client(d.run_dir(), rounds=[1, 2, 3])


def test_a_client_killed_mid_round_is_dropped_and_the_run_goes_on(tmp_path):
    d = Deployment(tmp_path, [*NET, "server.min_clients=4", "federation.rounds=2"])
    try:
        d.serve()
        for cid in d.files:
            d.join(cid)
        _wait_for(lambda: _round_started(d.run_dir(), 1), 240, "round 1 to start")
        d.procs["c2"].send_signal(signal.SIGKILL)
        assert d.wait("serve-0") == 0, d.logs()
    finally:
        d.kill_all()
    rows = [json.loads(r) for r in (d.run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["rejected"] == ["c2"] and sorted(rows[0]["clients"]) == ["c0", "c1", "c3"]
    assert sorted(rows[1]["clients"]) == ["c0", "c1", "c3"]  # c2 is no longer selectable
    with sqlite3.connect(d.run_dir() / "server.sqlite") as con:
        events = con.execute("SELECT client_id, detail FROM events WHERE kind='straggler'")
        assert [(c, "lost" in r) for c, r in events] == [("c2", True)]


def test_a_client_whose_file_lacks_the_columns_fails_before_training(tmp_path):
    d = Deployment(tmp_path, [*NET, "server.min_clients=4", "server.join_timeout=20"])
    (tmp_path / "wrong.csv").write_text("body,category\nhello,World\n")
    d.files["c0"] = tmp_path / "wrong.csv"
    out = d.refused_join("c0")
    assert "data.text_column = 'text' is not a column" in out and "Traceback" not in out


def test_a_client_refuses_an_experiment_that_breaks_its_own_privacy_policy(tmp_path):
    """fedfm join --require-secagg against a server without secure aggregation: one line, exit
    2, before any training; the update never leaves the client."""
    d = Deployment(tmp_path, [*NET, "server.min_clients=4"], join_args=("--require-secagg",))
    out = d.refused_join("c0")
    assert "this client requires secure aggregation (--require-secagg)" in out
    assert "Traceback" not in out and "trained in" not in out


SECURE = [
    *NET,
    "server.min_clients=4",
    "secagg.enabled=true",
    "privacy.dp=distributed",
    "privacy.noise_multiplier=0.3",
    "privacy.clip_norm=5",
    "federation.dropout=0.25",  # one of the four shares keys, then vanishes
]


def test_secure_aggregation_over_the_network_reproduces_the_simulated_run(tmp_path):
    """Four client processes mask their (clipped, noised) updates; the server learns only the
    sum, one client drops after sharing keys each round, and the result is the simulation's."""
    from fedfm.config import load_config
    from fedfm.experiment import run

    simulated = run(load_config(None, SECURE), out=tmp_path / "sim")
    # the simulation's noise, so that the runs can be compared (by default a network client
    # draws its noise from its own CSPRNG: tests/privacy/test_policy.py)
    d = Deployment(tmp_path / "net", SECURE, join_args=("--reproducible-noise",))
    d.run_to_the_end()
    summary = json.loads((d.run_dir() / "summary.json").read_text())
    assert summary["final_accuracy"] == simulated.summary["final_accuracy"]
    assert summary["epsilon"] == simulated.summary["epsilon"]
    _assert_same_adapter(d.run_dir(), simulated.run_dir)
    net = [json.loads(r) for r in (d.run_dir() / "metrics.jsonl").read_text().splitlines()]
    sim = [json.loads(r) for r in (simulated.run_dir / "metrics.jsonl").read_text().splitlines()]
    for n, s in zip(net, sim, strict=True):
        assert n["dropped"] == s["dropped"] and len(n["dropped"]) == 1
        assert n["secagg_survivors"] == s["secagg_survivors"] == 3
        assert sorted(n["clients"]) == sorted(set(s["clients"]))
        # the same protocol messages, byte for byte in size, in both directions
        assert (n["bytes_up"], n["bytes_down"]) == (s["bytes_up"], s["bytes_down"])
        assert n["loss"] == s["loss"]  # the mean loss, from the secure sum
    # the server never held an update: nothing was stored, and no update payload was logged
    with sqlite3.connect(d.run_dir() / "server.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM updates").fetchone() == (0,)


def test_a_causal_lm_is_served_and_joined_like_the_simulation(tmp_path, tiny_lm):
    """task.type = 'causal_lm' over fedfm serve + fedfm join: the same task registry and
    assembly as the simulation, so the network run reproduces it bit for bit."""
    from fedfm.config import load_config
    from fedfm.experiment import run
    from tests.tasks.test_causal_lm import TINY_LM

    lm = [
        *TINY_LM,
        f"model.name={str(tiny_lm)!r}",
        "name=net",
        *SERVER,
        "server.min_clients=2",
    ]
    sim = run(load_config(None, lm), out=tmp_path / "sim")
    d = Deployment(tmp_path, lm)
    d.run_to_the_end()
    summary = json.loads((d.run_dir() / "summary.json").read_text())
    assert summary["final_perplexity"] == sim.summary["final_perplexity"]
    assert summary["final_accuracy"] == sim.summary["final_accuracy"]  # exact match
    assert summary["bytes_up_total"] == sim.summary["bytes_up_total"] > 0
    _assert_same_adapter(d.run_dir(), sim.run_dir)
    rows = [json.loads(r) for r in (d.run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    served = load_config(d.run_dir() / "config.toml")
    assert served.task.type == "causal_lm"


@pytest.mark.slow  # 1.5 minutes: a simulated run, then a server and 2 clients
def test_language_model_pretraining_is_served_and_joined_like_the_simulation(tmp_path, tiny_lm):
    """task.type = 'lm' over the network: each client packs its own site's text into blocks as
    the simulation packs that site's rows, so the DiLoCo run (outer momentum kept on the server)
    reproduces the simulated one bit for bit, tokens per client included."""
    import csv

    import torch
    from safetensors.torch import load_file

    from fedfm.config import load_config, resolve_path
    from fedfm.experiment import run
    from tests.tasks.test_lm import tiny_pretrain

    source = resolve_path("${FEDFM_DATA}/debian/train.tsv")
    with source.open(encoding="utf-8", newline="") as f:
        rows = [r for _, r in zip(range(56), csv.DictReader(f, delimiter="\t"), strict=False)]
    data = tmp_path / "sites.tsv"
    with data.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["text", "label", "site"])  # two sites: 40 and 16 descriptions
        w.writerows([r["text"], r["label"], "a" if i < 40 else "b"] for i, r in enumerate(rows))
    lm = [
        *tiny_pretrain(tiny_lm),
        f"data.train={str(data)!r}",
        "data.train_rows=0",
        "partition.column=site",
        "partition.min_size=1",
        "partition.clients=2",
        "federation.clients_per_round=2",
        "federation.rounds=2",
        "federation.local_steps=2",
        "strategy.name=diloco",
        "name=net",
        *SERVER,
        "server.min_clients=2",
    ]
    sim = run(load_config(None, lm), out=tmp_path / "sim")
    d = Deployment(tmp_path, lm)
    d.run_to_the_end()
    summary = json.loads((d.run_dir() / "summary.json").read_text())
    assert summary["final_perplexity"] == sim.summary["final_perplexity"]
    assert summary["tokens_per_client"] == sim.summary["tokens_per_client"]
    assert set(summary["tokens_per_client"]) == {"c0", "c1"}
    assert summary["bytes_up_total"] == sim.summary["bytes_up_total"] > 0
    a = load_file(str(d.run_dir() / "model" / "model.safetensors"))
    b = load_file(str(sim.run_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_server_without_a_test_set_gets_the_clients_evaluation(tmp_path):
    """[evaluation] where = 'clients' over the network: the server holds no data at all (its
    data.test does not exist); the clients score the global model on their held-out rows, with
    the same figures as the simulation, and those rows are never trained on."""
    from fedfm.config import load_config
    from fedfm.experiment import run

    ev = [
        *NET,
        "server.min_clients=4",
        "federation.rounds=2",
        "evaluation.where=clients",
        "evaluation.client_split=0.2",
        "data.labels=['Business', 'Sci/Tech', 'Sports', 'World']",
    ]
    sim = run(load_config(None, ev), out=tmp_path / "sim")
    d = Deployment(tmp_path, [*ev, "data.test=no/such/test.tsv"])
    d.run_to_the_end()
    summary = json.loads((d.run_dir() / "summary.json").read_text())
    assert summary["final_client_eval"] == sim.summary["final_client_eval"]
    assert summary["final_accuracy"] == sim.summary["final_accuracy"]
    assert summary["test_rows"] == 0
    assert summary["bytes_up_total"] == sim.summary["bytes_up_total"]  # training traffic only
    assert summary["client_eval_bytes_up_total"] == sim.summary["client_eval_bytes_up_total"]
    _assert_same_adapter(d.run_dir(), sim.run_dir)
    rows = [json.loads(r) for r in (d.run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in rows] == [r["client_accuracy"] for r in rows]
    assert len(rows[-1]["client_eval"]) == 4  # every client in the last round


@pytest.mark.slow  # 2.5 minutes: 4 processes, 2 rounds
def test_a_servers_own_strategy_plugin_needs_nothing_on_the_clients(tmp_path):
    """The server aggregates with a strategy from the user's module; the clients, which never
    import the server's plug-ins, receive an experiment without it and train as usual."""
    from fedfm.config import load_config

    example = Path(__file__).parents[2] / "examples" / "plugins" / "geomedian.toml"
    overrides = [*NET, "server.min_clients=4", "federation.rounds=2"]
    config = load_config(example, overrides)
    d = Deployment(tmp_path, overrides)
    (tmp_path / "net.toml").write_text(config_to_toml(config))  # names the plug-in module
    d.run_to_the_end()
    summary = json.loads((d.run_dir() / "summary.json").read_text())
    assert summary["strategy"] == "geomedian" and summary["rounds"] == 2
    assert summary["rejected_updates"] == 0
    assert "done: trained in 2 rounds" in (tmp_path / "join-c0.log").read_text()


@pytest.mark.slow  # 2 minutes: 3 processes, 2 rounds
def test_a_servers_report_to_sinks_log_the_served_rounds(tmp_path):
    """`fedfm serve` feeds the [logging] report_to sinks, a custom one from the server's own
    plug-ins included; the clients receive the experiment without them and train as usual."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.metrics.test_sinks_report_to import _docs_example

    plugins = tmp_path / "server-plugins"
    plugins.mkdir()
    (plugins / "csv_rounds_sink.py").write_text(_docs_example())
    overrides = [
        *NET,
        "partition.clients=2",
        "federation.clients_per_round=2",
        "federation.rounds=2",
        'logging.report_to=["tensorboard", "csv_rounds"]',
        'plugins.modules=["csv_rounds_sink"]',
        f"plugins.paths=[{str(plugins)!r}]",
    ]
    d = Deployment(tmp_path, overrides)
    d.run_to_the_end()
    rows = [json.loads(line) for line in (d.run_dir() / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    events = EventAccumulator(str(d.run_dir() / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("accuracy")] == pytest.approx(
        [r["accuracy"] for r in rows], rel=1e-6
    )
    assert [e.value for e in events.Scalars("bytes_up")] == pytest.approx(
        [r["bytes_up"] for r in rows], rel=1e-6
    )
    csv = (d.run_dir() / "rounds.csv").read_text().splitlines()
    assert csv == [f"{r['round']},{r['accuracy']},{r['loss']}" for r in rows]
    assert "done: trained in 2 rounds" in (tmp_path / "join-c0.log").read_text()
