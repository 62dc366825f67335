"""Continual federated learning: class-incremental AG News, naive sequential training against
replay. Usage, from the repository root, after ``make install``:

    .venv/bin/python benchmarks/continual.py [--seeds 0 1 2] [--systems none replay]

Setup: AG News, 4,000 training rows dealt by Dirichlet(0.5) over 10 clients, 5 clients a round,
MiniLM + LoRA r 8. Stage 0 trains World + Sports, stage 1 Business + Sci/Tech, 3 rounds each of
10 local steps (batch 16, 64 tokens). The server scores the global model every round on the
evaluation rows (the first 400 test rows) of each stage seen so far. ``none`` trains each stage's
rows only; ``replay`` mixes up to 64 of each client's rows of the earlier stage into its batches.
Every system of a seed starts from the same weights and samples the same clients in the same
rounds; one torch thread.

Figures (see ``docs/clients.md``): ``average_accuracy`` (mean over stages of the final model's
accuracy on the stage's rows), ``forgetting`` (mean over the old stages of the best accuracy
ever logged minus the final one), ``stage0_end`` (stage-0 accuracy at the end of stage 0).

Writes ``OUT/continual.json`` (per-run figures, mean ± std over seeds, hardware) after every
run; finished runs are kept in ``OUT/per-run/``.
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

ROUNDS_PER_STAGE = 3
COMMON = [
    "data.train_rows=4000",
    "data.test_rows=400",
    "data.eval_rows=400",
    "data.max_length=64",
    "partition.scheme=dirichlet",
    "partition.alpha=0.5",
    "partition.clients=10",
    "federation.clients_per_round=5",
    f"federation.rounds={2 * ROUNDS_PER_STAGE}",
    "federation.local_steps=10",
    "federation.batch_size=16",
    "federation.eval_every=1",
    'continual.stages=[["World", "Sports"], ["Business", "Sci/Tech"]]',
    f"continual.rounds_per_stage={ROUNDS_PER_STAGE}",
    "governance.provenance=false",
    "runtime.threads=1",  # shares the machine's two cores without oversubscribing them
]
SYSTEMS = {
    "none": ["continual.mitigation=none"],
    "replay": ["continual.mitigation=replay", "continual.replay_rows=64"],
}
FIGURES = ["average_accuracy", "forgetting", "stage0_end", "stage0_final", "stage1_final"]


def run_one(system: str, seed: int) -> dict:
    overrides = [*COMMON, *SYSTEMS[system], f"seed={seed}", f"name=continual-{system}-s{seed}"]
    t0 = time.perf_counter()
    work = cache_dir() / "bench" / "continual-runs"  # run directories: not results
    result = fedfm.run(load_config(None, overrides), out=work, sinks=[])
    s, rows = result.summary, result.metrics
    record = {
        "system": system,
        "seed": seed,
        "average_accuracy": s["average_accuracy"],
        "forgetting": s["forgetting"],
        "stage0_end": rows[ROUNDS_PER_STAGE - 1]["stage_accuracy"]["0"],
        "stage0_final": s["final_stage_accuracy"]["0"],
        "stage1_final": s["final_stage_accuracy"]["1"],
        "final_accuracy": s["final_accuracy"],
        "stage_accuracy_per_round": [r["stage_accuracy"] for r in rows],
        "clients_per_round": [r["clients"] for r in rows],
        "bytes_up_total": s["bytes_up_total"],
        "rounds": s["rounds"],
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"{system} seed {seed}: average {record['average_accuracy']:.3f}, forgetting "
        f"{record['forgetting']:.3f}, stage 0 {record['stage0_end']:.3f} → "
        f"{record['stage0_final']:.3f}, {record['seconds']:.0f} s",
        flush=True,
    )
    return record


def write(out: Path, seeds: list[int], systems: list[str], runs: list[dict]) -> None:
    summary = {}
    for system in systems:
        mine = [r for r in runs if r["system"] == system]
        if mine:
            summary[system] = {k: spread([r[k] for r in mine]) for k in FIGURES}
            summary[system]["seeds"] = [r["seed"] for r in mine]
    result = {
        "setup": {"common": COMMON, "systems": SYSTEMS},
        "seeds": seeds,
        "summary": summary,
        "runs": runs,
        "hardware": hardware(),
    }
    (out / "continual.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/continual")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        for system in args.systems:
            runs.append(
                cached_run(args.out, system, seed, lambda: run_one(system, seed))  # noqa: B023
            )
            write(args.out, args.seeds, args.systems, runs)  # a partial file if stopped early
    summary = json.loads((args.out / "continual.json").read_text())["summary"]
    for system, figures in summary.items():
        means = {k: round(v["mean"], 3) for k, v in figures.items() if k != "seeds"}
        print(system, figures["seeds"], means)


if __name__ == "__main__":
    main()
