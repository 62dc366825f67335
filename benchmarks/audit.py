"""The membership audit measured on AG News: the loss-threshold attack against offline LiRA
(Carlini et al. 2022) on a run without DP and on a client-level DP run. Usage, from the
repository root, after ``make install``:

    .venv/bin/python benchmarks/audit.py [--shadows 3] [--seed 0]

MiniLM + LoRA (the default method), one torch thread. A small, memorising federation: 400 AG
News training rows dealt IID over 4 clients, every client in every round, 5 rounds × 10 local
steps of batch 16 (each client draws its 100 rows about 8 times). ``dp``: the same with
DP-FedAvg (``privacy.dp = "central"``, σ = 1, clip 0.1). After each run, ``fedfm audit --attack
lira --shadows K``: K shadow federations trained without the audited rows (the run's config
reseeded, on the clients' other rows); 200 members (half the trained rows) against 200 test
rows. With 200 non-members the lowest FPR that is not zero is 0.5%: TPR at 1% FPR lets 2 false
positives through, TPR at 0.1% none.

Writes ``OUT/audit-lira.json`` (figures, settings, seconds and hardware); resumable per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lm_pretraining import hardware  # noqa: E402

import fedfm  # noqa: E402
from fedfm.config import load_config  # noqa: E402
from fedfm.data.tokens import cache_dir  # noqa: E402
from fedfm.trust.lira import membership_audit  # noqa: E402

COMMON = [
    "data.train_rows=400",
    "data.test_rows=1000",
    "data.eval_rows=500",
    "data.max_length=64",
    "partition.scheme=iid",
    "partition.clients=4",
    "federation.clients_per_round=4",
    "federation.rounds=5",
    "federation.local_steps=10",
    "federation.batch_size=16",
    "privacy.audit=true",
    "privacy.audit_rows=1000",
    "runtime.threads=1",
]
SETTINGS = {
    "no_dp": [],
    "dp": ["privacy.dp=central", "privacy.noise_multiplier=1.0", "privacy.clip_norm=0.1"],
}
WORK = cache_dir() / "bench" / "audit-runs"  # run directories: not results


def measure(setting: str, shadows: int, seed: int, out: Path) -> dict:
    target = out / "per-setting" / f"{setting}-k{shadows}-s{seed}.json"
    if target.is_file():  # resumable: a finished setting is not repeated
        return json.loads(target.read_text())
    overrides = [*COMMON, *SETTINGS[setting], f"seed={seed}", f"name={setting}-s{seed}"]
    run_dir = WORK / f"{setting}-s{seed}"
    if (run_dir / "summary.json").is_file():  # trained already (another number of shadows)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        run_seconds = summary["total_seconds"]
    else:
        t0 = time.perf_counter()
        run = fedfm.run(load_config(None, overrides), out=WORK, sinks=[])
        run_seconds = time.perf_counter() - t0
        run_dir, summary, rows = run.run_dir, run.summary, run.metrics
    report = membership_audit(run_dir, "lira", shadows)
    s = summary
    result = {
        "setting": setting,
        "overrides": overrides,
        "accuracy": s["final_accuracy"],
        "epsilon": rows[-1].get("epsilon"),
        "summary_mia_auc": s["mia_auc"],
        "trained_rows": s["mia_trained_rows"],
        "audit": report,
        "run_seconds": round(run_seconds, 1),
        "audit_seconds": report["seconds"],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shadows", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/audit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {s: measure(s, args.shadows, args.seed, args.out) for s in args.settings}
    summary = {
        s: {
            "accuracy": r["accuracy"],
            "epsilon": r["epsilon"],
            "loss": r["audit"]["loss"],
            "lira": r["audit"]["lira"],
            "rows": r["audit"]["rows"],
            "cpu_seconds_run_and_audit": round(r["run_seconds"] + r["audit_seconds"], 1),
        }
        for s, r in runs.items()
    }
    result = {
        "setup": {"common": COMMON, "settings": SETTINGS, "shadows": args.shadows},
        "seed": args.seed,
        "summary": summary,
        "runs": runs,
        "hardware": hardware(),
    }
    (args.out / "audit-lira.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
