"""The network runtime's overhead against simulation on the same run.

Runs one experiment twice — in-process simulation, then `fedfm serve` + one `fedfm join` process
per client on loopback with TLS — and reports seconds per round, bytes per round, and whether
the final adapters are identical. Usage (from the repository root, after `make install`):

    .venv/bin/python benchmarks/network_overhead.py [--rounds 5] [--out bench-runs/network]
        [--set secagg.enabled=true --baseline]

``--set KEY=VALUE`` changes the experiment (e.g. secure aggregation); ``--baseline`` also runs the
network without those changes, in the same invocation, and reports the ratio of round seconds.

On one machine the clients share its cores, so the network run's rounds include that
contention; the bytes are exact either way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from fedfm.config import config_to_toml, load_config
from fedfm.data.split import write_client_files
from fedfm.experiment import run
from fedfm.runtimes.grpc.certs import make_certs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--out", default="bench-runs/network")
    parser.add_argument("--port", type=int, default=50851)
    parser.add_argument(
        "--client-threads", type=int, default=0, help="torch threads per client (0 = all cores)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--baseline", action="store_true", help="also run the network without the --set changes"
    )
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        "name=network-overhead",
        "data.train_rows=3000",
        "data.test_rows=1000",
        "data.eval_rows=500",
        f"partition.clients={args.clients}",
        f"federation.clients_per_round={args.clients}",
        f"federation.rounds={args.rounds}",
        "federation.local_steps=10",
        "server.tokens_file=tokens.txt",
        f"server.min_clients={args.clients}",
        "server.linger=3",
    ]
    config = load_config(None, [*overrides, *args.set])

    t0 = time.perf_counter()
    sim = run(config, out=out / "sim")
    sim_wall = time.perf_counter() - t0

    network = _network(config, out / "net", args.port, args.client_threads)
    if network is None:
        return 1
    net_rows, net_summary, net_run, net_wall = network
    a = load_file(str(net_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(sim.run_dir / "adapter" / "adapter_model.safetensors"))
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)

    def per_round(rows, key):
        return statistics.median(r[key] for r in rows)

    result = {
        "client_threads": args.client_threads,
        "rounds": args.rounds,
        "clients": args.clients,
        "set": args.set,
        "sim": {
            "round_seconds": per_round(sim.metrics, "round_seconds"),
            "bytes_up_per_round": per_round(sim.metrics, "bytes_up"),
            "bytes_down_per_round": per_round(sim.metrics, "bytes_down"),
            "final_accuracy": sim.final_accuracy,
            "wall_seconds": sim_wall,
        },
        "network": {
            "round_seconds": per_round(net_rows, "round_seconds"),
            "bytes_up_per_round": per_round(net_rows, "bytes_up"),
            "bytes_down_per_round": per_round(net_rows, "bytes_down"),
            "final_accuracy": net_summary["final_accuracy"],
            "wall_seconds": net_wall,
        },
        "adapter_max_abs_difference": worst,
    }
    result["round_seconds_ratio"] = (
        result["network"]["round_seconds"] / result["sim"]["round_seconds"]
    )
    if args.baseline:
        plain = load_config(None, overrides)
        base = _network(plain, out / "net-baseline", args.port + 1, args.client_threads)
        if base is None:
            return 1
        rows, summary, _, _ = base
        result["network_baseline"] = {
            "round_seconds": per_round(rows, "round_seconds"),
            "bytes_up_per_round": per_round(rows, "bytes_up"),
            "bytes_down_per_round": per_round(rows, "bytes_down"),
            "final_accuracy": summary["final_accuracy"],
        }
        for key in ("round_seconds", "bytes_up_per_round", "bytes_down_per_round"):
            result[f"{key}_vs_baseline"] = result["network"][key] / result["network_baseline"][key]
    (out / "network_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _network(config, net_dir: Path, port: int, client_threads: int):
    """``fedfm serve`` + one ``fedfm join`` per client on loopback TLS: (rows, summary, run
    directory, wall seconds), or None if the server failed."""
    net_dir.mkdir(parents=True, exist_ok=True)
    files = write_client_files(config, net_dir / "clients")
    tokens = {c: f"token-{c}-{os.urandom(8).hex()}" for c in files}
    (net_dir / "tokens.txt").write_text("".join(f"{c} {t}\n" for c, t in tokens.items()))
    make_certs(net_dir / "certs")
    (net_dir / "net.toml").write_text(config_to_toml(config))
    address = f"127.0.0.1:{port}"
    cli = [sys.executable, "-m", "fedfm.cli"]
    t0 = time.perf_counter()
    with open(net_dir / "serve.log", "w") as log:
        server = subprocess.Popen(
            [*cli, "serve", "net.toml", "--address", address, "--quiet", "--out", "runs"],
            cwd=net_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    clients = []
    for cid, path in files.items():
        with open(net_dir / f"join-{cid}.log", "w") as log:
            clients.append(
                subprocess.Popen(
                    [*cli, "join", address, "--ca", "certs/ca.pem", "--client-id", cid]
                    + ["--token", tokens[cid], "--data", str(path)]
                    + ["--threads", str(client_threads)],
                    cwd=net_dir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    if server.wait() != 0:
        print((net_dir / "serve.log").read_text()[-2000:])
        return None
    for c in clients:
        c.wait(120)
    net_wall = time.perf_counter() - t0
    net_run = net_dir / "runs" / config.name
    net_rows = [json.loads(r) for r in (net_run / "metrics.jsonl").read_text().splitlines()]
    net_summary = json.loads((net_run / "summary.json").read_text())
    return net_rows, net_summary, net_run, net_wall


if __name__ == "__main__":
    sys.exit(main())
