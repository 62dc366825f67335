"""Personalisation against the global model, on each client's own held-out rows. Usage, from the
repository root, after ``make install``:

    .venv/bin/python benchmarks/personalize.py [--scenario agnews|debian] [--seeds 0 1 2]
                                               [--systems none local_head ditto ...]

Scenarios:

* ``agnews``: AG News, 12,000 training rows dealt by Dirichlet(0.1) over 10 clients (strong
  label skew), 5 clients a round, 6 rounds of 10 local steps (batch 16, 48 tokens), MiniLM + LoRA r 8;
* ``debian``: Debian package descriptions, one client per maintaining team (natural clients,
  label and feature skew), 8 clients a round, same budget.

Each client keeps 20% of its rows apart (``evaluation.client_split = 0.2``, drawn from the seed
and its position, so every system of a seed scores the same rows); after the last round every
client scores the global model and its own (``global_accuracy_*``, ``personal_accuracy_*``:
mean over clients, mean of the worst tenth, std). ``local_head`` has no global model; its
global column is the ``none`` run's on the same rows. Every system of a seed starts from the same
weights and samples the same clients in the same rounds; one torch thread, fp32 LoRA weights
under bf16 autocast for every system.

Writes ``OUT/personalize-SCENARIO.json`` (per-run figures, mean ± std over seeds, bytes,
hardware); finished runs are kept in ``OUT/per-run/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lm_pretraining import hardware  # noqa: E402
from seeded import cached_run, spread  # noqa: E402

import fedfm  # noqa: E402
from fedfm.config import load_config  # noqa: E402
from fedfm.data.tokens import cache_dir  # noqa: E402

COMMON = [
    "evaluation.where=clients",
    "evaluation.client_split=0.2",
    "federation.rounds=6",
    "federation.local_steps=10",
    "federation.batch_size=16",
    "federation.eval_every=3",
    "governance.provenance=false",
    "runtime.threads=1",  # shares the machine's two cores without oversubscribing them
]
SCENARIOS = {
    "agnews": (
        None,
        [
            "data.max_length=48",
            "data.train_rows=12000",
            "partition.scheme=dirichlet",
            "partition.alpha=0.1",
            "partition.clients=10",
            "federation.clients_per_round=5",
        ],
    ),
    "debian": (
        ROOT / "configs/debian_maintainers.toml",
        ["data.max_length=48", "federation.clients_per_round=8", "strategy.name=fedavg"],
    ),
}
SYSTEMS = {
    "none": [],
    "local_head": ["personalize.method=local_head"],
    "ditto": ["personalize.method=ditto", "personalize.ditto_lambda=0.1"],
    "local_norm": ["personalize.method=local_norm"],
    "private_lora": ["personalize.method=private_lora", "personalize.private_r=4"],
}
FIGURES = [
    f"{who}_accuracy_{what}"
    for who in ("personal", "global")
    for what in ("mean", "worst10", "std")
]


def run_one(scenario: str, system: str, seed: int) -> dict:
    config_file, overrides = SCENARIOS[scenario]
    overrides = [*COMMON, *overrides, *SYSTEMS[system], f"seed={seed}"]
    overrides.append(f"name=personalize-{scenario}-{system}-s{seed}")
    t0 = time.perf_counter()
    work = cache_dir() / "bench" / "personalize-runs"  # run directories: not results
    result = fedfm.run(load_config(config_file, overrides), out=work, sinks=[])
    s = result.summary
    record = {
        "scenario": scenario,
        "system": system,
        "seed": seed,
        **{k: s.get(k) for k in FIGURES},
        "clients": s.get("clients"),
        "bytes_up_total": s["bytes_up_total"],
        "bytes_down_total": s["bytes_down_total"],
        "trainable_params": s.get("trainable_params"),
        "rounds": s["rounds"],
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"{scenario} {system} seed {seed}: personal {record['personal_accuracy_mean']:.3f} "
        f"(worst10 {record['personal_accuracy_worst10']:.3f}), global "
        f"{record['global_accuracy_mean'] or float('nan'):.3f}, {record['seconds']:.0f} s",
        flush=True,
    )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="agnews", choices=list(SCENARIOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/personalize")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [
        cached_run(
            args.out,
            f"{args.scenario}-{system}",
            seed,
            lambda: run_one(args.scenario, system, seed),  # noqa: B023 (called now)
        )
        for seed in args.seeds
        for system in args.systems
    ]
    summary = {}
    for system in args.systems:
        mine = [r for r in runs if r["system"] == system]
        summary[system] = {
            k: spread([r[k] for r in mine]) for k in FIGURES if mine[0][k] is not None
        }
        summary[system]["bytes_up_per_round"] = mine[0]["bytes_up_total"] / mine[0]["rounds"]
    result = {
        "setup": {
            "scenario": args.scenario,
            "common": COMMON,
            "scenario_overrides": SCENARIOS[args.scenario][1],
            "systems": SYSTEMS,
        },
        "seeds": args.seeds,
        "summary": summary,
        "runs": runs,
        "hardware": hardware(),
    }
    (args.out / f"personalize-{args.scenario}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                s: {k: round(v["mean"], 3) for k, v in f.items() if isinstance(v, dict)}
                for s, f in summary.items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
