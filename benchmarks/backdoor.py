"""Backdoor defences measured on AG News: the trigger's attack success rate and the clean accuracy
of FedAvg, the median, FLAME and FoolsGold. Usage, from the repository root, after ``make install``:

    .venv/bin/python benchmarks/backdoor.py [--seeds 0 1 2] [--systems ...]

The setting is the repository's AG News LoRA scenario (``fedfm.bench.scenarios.AGNEWS_LORA``):
MiniLM + LoRA r 8 on query/value, 10 clients dealt by Dirichlet(0.5), 5 per round, 10 local steps
of batch 32, bf16 autocast, 6 rounds, scored on 1,000 test rows, one torch thread. Two of the ten clients (20%,
``attack.fraction``, chosen from the seed) are backdoor clients (``attack.type = "backdoor"``):
half their rows get the trigger phrase "cf mn bb" and the first label. The attack success rate is
the share of triggered test rows (not of the target class) classified as the target.

Every system of a seed starts from the same weights and samples the same clients in the same
rounds with the same local seeds; only the server's rule (and, for the clean rows, the attack)
differs. ``clean-*`` rows run without attackers: the defence's cost when nobody attacks.

Writes ``OUT/backdoor.json`` (per-run figures, mean ± std over the seeds, hardware); finished runs
are kept in ``OUT/per-run/`` and not repeated.
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
from fedfm.bench.scenarios import AGNEWS_LORA  # noqa: E402
from fedfm.config import load_config  # noqa: E402
from fedfm.data.tokens import cache_dir  # noqa: E402

COMMON = [
    *AGNEWS_LORA,
    "federation.rounds=6",
    "attack.type=backdoor",
    "attack.fraction=0.2",
    "attack.poison_fraction=0.5",
    "runtime.threads=1",  # shares the machine's two cores without oversubscribing them
]
SYSTEMS = {
    "clean-fedavg": ["attack.type=none"],
    "clean-flame": ["attack.type=none", "strategy.name=flame"],
    "clean-foolsgold": ["attack.type=none", "strategy.name=foolsgold"],
    "backdoor-fedavg": [],
    "backdoor-median": ["strategy.name=median"],
    "backdoor-flame": ["strategy.name=flame"],
    "backdoor-foolsgold": ["strategy.name=foolsgold"],
}
KEYS = ("accuracy", "attack_success_rate")


def run_one(system: str, seed: int) -> dict:
    overrides = [*COMMON, *SYSTEMS[system], f"seed={seed}", f"name=backdoor-{system}-s{seed}"]
    t0 = time.perf_counter()
    work = cache_dir() / "bench" / "backdoor-runs"  # run directories: not results
    result = fedfm.run(load_config(None, overrides), out=work, sinks=[])
    rounds = [
        {k: r.get(k) for k in ("round", *KEYS, "robust_rejected", "bytes_up")}
        for r in result.metrics
    ]
    last = result.metrics[-1]
    record = {
        "system": system,
        "seed": seed,
        "accuracy": last["accuracy"],
        "attack_success_rate": last.get("attack_success_rate"),
        "malicious": result.summary.get("malicious_clients"),
        "rejected_per_round": [r.get("robust_rejected") for r in rounds],
        "seconds": time.perf_counter() - t0,
        "rounds": rounds,
    }
    print(
        f"{system} seed {seed}: accuracy {record['accuracy']:.3f}, "
        f"attack success {record['attack_success_rate']}, {record['seconds']:.0f} s",
        flush=True,
    )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/backdoor")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [
        cached_run(args.out, system, seed, lambda: run_one(system, seed))  # noqa: B023 (called now)
        for seed in args.seeds
        for system in args.systems
    ]
    summary = {}
    for system in args.systems:
        mine = [r for r in runs if r["system"] == system]
        summary[system] = {"accuracy": spread([r["accuracy"] for r in mine])}
        if not system.startswith("clean-"):
            summary[system]["attack_success_rate"] = spread(
                [r["attack_success_rate"] for r in mine]
            )
    if "clean-fedavg" in summary:  # the clean-accuracy cost in points, seed by seed
        base = {r["seed"]: r["accuracy"] for r in runs if r["system"] == "clean-fedavg"}
        for system in args.systems:
            mine = [r for r in runs if r["system"] == system]
            summary[system]["points_below_clean_fedavg"] = spread(
                [100 * (base[r["seed"]] - r["accuracy"]) for r in mine]
            )
    result = {
        "setup": {"overrides": COMMON, "systems": SYSTEMS},
        "seeds": args.seeds,
        "summary": summary,
        "runs": runs,
        "hardware": hardware(),
    }
    (args.out / "backdoor.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {m: v["mean"] for m, v in s.items()} for k, s in summary.items()}))


if __name__ == "__main__":
    main()
