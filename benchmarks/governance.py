"""Governance measured on AG News: contribution values against exact leave-one-out retraining,
and unlearning a backdoor client. Usage, from the repository root, after ``make install``:

    .venv/bin/python benchmarks/governance.py contrib [--seeds 0 1 2]
    .venv/bin/python benchmarks/governance.py unlearn [--seeds 0 1 2]

Both: MiniLM + LoRA (the default method), AG News training rows dealt IID over 5 clients, every
client in every round, batch 16, FedAvg, kept updates. ``unlearn``: 3,000 rows, 5 rounds × 10
local steps, scored on the first 500 test rows; ``contrib`` (six trainings a seed): 2,000 rows,
3 rounds × 8 local steps, scored on the first 300. Every system of a seed starts from the same weights and trains the same
clients in the same rounds with the same seeds (a retrained run leaves its removed client out of
the rounds; the others keep theirs).

``contrib`` plants three useless clients among five: c1 sends back the state it received (free
rider), c2 trains on its labels shuffled (label noise), c4 holds c0's rows (a duplicate). It values
the clients with ``loo``, ``gtg_shapley`` and ``tmc_shapley`` from the kept updates, and retrains
the run once without each client (exact leave-one-out: the accuracy lost without it); reports the
Spearman correlation of each method with exact LOO, the planted clients' ranks, evaluations and
seconds, and the cost as a multiple of one training run.

``unlearn`` makes c? a backdoor client (trigger phrase → the first label, half its rows poisoned,
``attack.type = "backdoor"``), then removes it by ``retrain`` and by ``replay`` (FedEraser,
calibration 0.5, and 1.0: ``replay_full``); reports clean accuracy, the trigger's attack success rate, the loss-threshold
membership-inference AUC on the backdoor client's own (poisoned) rows against test rows, and the
seconds of each.

Writes ``OUT/governance-contrib.json`` / ``OUT/governance-unlearn.json`` (figures and hardware).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lm_pretraining import hardware  # noqa: E402

from fedfm import assemble  # noqa: E402
from fedfm.attacks import ATTACKS  # noqa: E402
from fedfm.client.app import ClientData  # noqa: E402
from fedfm.config import load_config  # noqa: E402
from fedfm.data.tokens import cache_dir, tokenize  # noqa: E402
from fedfm.experiment import in_process_federation  # noqa: E402
from fedfm.governance import contributions  # noqa: E402
from fedfm.governance.unlearn import unlearn  # noqa: E402
from fedfm.privacy.audit import auc  # noqa: E402
from fedfm.rundir import drive, open_run  # noqa: E402
from fedfm.server.checkpoint import latest_checkpoint  # noqa: E402

COMMON = [
    "data.train_rows=3000",
    "data.test_rows=1000",
    "data.eval_rows=500",
    "data.max_length=64",
    "partition.scheme=iid",
    "partition.clients=5",
    "federation.clients_per_round=5",
    "federation.rounds=5",
    "federation.local_steps=10",
    "federation.batch_size=16",
    "governance.keep_updates=true",
]
# The contribution bench trains 6 runs a seed (the run and one without each client): shorter.
CONTRIB = [
    *COMMON,
    "data.train_rows=2000",
    "data.eval_rows=300",
    "federation.rounds=3",
    "federation.local_steps=8",
]
ROLES = {"c1": "free rider", "c2": "label noise", "c4": "duplicate of c0"}
WORK = cache_dir() / "bench" / "governance-runs"  # run directories: not results


def plant(p) -> None:
    """Make c1 a free rider, c2 a label-noise client and c4 a copy of c0 (in ``p``)."""
    ids = p.partition.client_ids
    rows = {c: p.partition.indices[i] for i, c in enumerate(ids)}
    p.attack = ATTACKS.get("free_rider")(p.config.attack, p.train.label_names)
    p.malicious = ["c1"]
    shuffle = ATTACKS.get("label_shuffle")(p.config.attack, p.train.label_names)
    texts, labels = shuffle.poison_data(
        [p.train.texts[i] for i in rows["c2"]],
        p.train.labels[rows["c2"]],
        np.random.default_rng([p.config.seed, 2]),
    )
    tokens = tokenize(texts, p.task.tokenizer, p.task.tokenizer_key, p.config.data.max_length)
    p.poisoned["c2"] = ClientData(tokens, labels, np.arange(len(texts)))
    p.poisoned["c4"] = ClientData(p.train_tokens, p.train.labels, rows["c0"])


def train(overrides: list[str], out: Path, excluded: frozenset[str] = frozenset(), planted=True):
    """One run (planted, without ``excluded``): its directory, summary and seconds."""
    p = assemble.prepare(load_config(None, overrides))
    if planted:
        plant(p)
    run_dir, rows = open_run(p, out, None, 1)
    fed = in_process_federation(p, [], run_dir)
    fed.excluded = excluded
    t0 = time.perf_counter()
    result = drive(p, fed, run_dir, [], None, 1, rows)
    return run_dir, result.summary, time.perf_counter() - t0, p


def contrib(seed: int, out: Path) -> dict:
    target = out / "per-seed" / f"contrib-s{seed}.json"
    if target.is_file():
        return json.loads(target.read_text())
    work = WORK / f"contrib-s{seed}"
    shutil.rmtree(work, ignore_errors=True)
    overrides = [*CONTRIB, f"seed={seed}", f"name=contrib-s{seed}"]
    run_dir, summary, seconds, p = train(overrides, work)
    full = summary["final_accuracy"]
    clients = p.partition.client_ids
    exact = {}
    retrain_seconds = []
    for c in clients:
        _, s, sec, _ = train([*overrides, f"name=without-{c}"], work, frozenset({c}))
        exact[c] = full - s["final_accuracy"]
        retrain_seconds.append(sec)
        print(f"seed {seed}: without {c}: accuracy {s['final_accuracy']:.4f}", flush=True)
    methods = {}
    for method in ("loo", "gtg_shapley", "tmc_shapley"):
        result = contributions(run_dir, p, method)
        values = result["values"]
        ranked = sorted(values, key=values.get)
        methods[method] = {
            "values": values,
            "confidence": result["confidence"],
            "flags": result["flags"],
            "payouts": result["payouts"],
            "evaluations": result["evaluations"],
            "seconds": result["seconds"],
            "cost_vs_training_run": result["seconds"] / seconds,
            "spearman_vs_exact_loo": float(
                spearmanr([values[c] for c in clients], [exact[c] for c in clients])[0]
            ),
            "rank_from_last": {c: ranked.index(c) + 1 for c in clients},
        }
        print(f"seed {seed}: {method}: {values} ({result['evaluations']} evaluations)", flush=True)
    figures = {
        "seed": seed,
        "final_accuracy": full,
        "training_seconds": seconds,
        "exact_loo": exact,
        "exact_loo_seconds": sum(retrain_seconds),
        "methods": methods,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(figures, indent=2))
    return figures


def _membership(p, state, member: ClientData, n: int = 300) -> float:
    """Loss-threshold MIA AUC of ``member``'s rows against as many test rows."""
    p.task.set_state(state)
    rng = np.random.default_rng(0)
    size = min(n, len(member.rows), len(p.test))
    members = rng.choice(member.rows, size=size, replace=False)
    nonmembers = rng.choice(len(p.test), size=size, replace=False)
    m_loss, _ = p.task.per_example(member.tokens, member.labels, members)
    n_loss, _ = p.task.per_example(p.test_tokens, p.test.labels, nonmembers)
    return auc(-m_loss, -n_loss)


# Unlearning methods: (method, options); replay_full calibrates with the run's own step count.
UNLEARNERS = {
    "retrain": ("retrain", {}),
    "replay": ("replay", {"calibration": 0.5}),
    "replay_full": ("replay", {"calibration": 1.0}),
}


def unlearning(seed: int, out: Path) -> dict:
    """The backdoor run and each unlearner of :data:`UNLEARNERS`; a per-seed file of an
    earlier invocation is completed (its missing systems only), not redone."""
    target = out / "per-seed" / f"unlearn-s{seed}.json"
    figures = json.loads(target.read_text()) if target.is_file() else None
    if figures is not None and all(k in figures["systems"] for k in UNLEARNERS):
        return figures
    work = WORK / f"unlearn-s{seed}"
    overrides = [
        *COMMON,
        "attack.type=backdoor",
        "attack.fraction=0.2",
        "attack.poison_fraction=0.5",
        f"seed={seed}",
        f"name=backdoor-s{seed}",
    ]
    if figures is None:
        shutil.rmtree(work, ignore_errors=True)
        run_dir, summary, seconds, p = train(overrides, work, planted=False)
        (bad,) = p.malicious
        figures = {
            "seed": seed,
            "backdoor_client": bad,
            "systems": {
                "original": {
                    "accuracy": summary["final_accuracy"],
                    "attack_success_rate": summary["final_attack_success_rate"],
                    "mia_auc": _membership(p, latest_checkpoint(run_dir).state, p.poisoned[bad]),
                    "seconds": seconds,
                }
            },
        }
    else:  # the backdoor run is in the work folder: only its data and model are needed
        run_dir = work / f"backdoor-s{seed}"
        p = assemble.prepare(load_config(run_dir / "config.toml"))
        bad = figures["backdoor_client"]
    systems = figures["systems"]
    for name, (method, options) in UNLEARNERS.items():
        if name in systems:
            continue
        target_dir = work / name
        shutil.rmtree(target_dir, ignore_errors=True)
        s = unlearn(run_dir, bad, target_dir, method, **options)
        systems[name] = {
            "accuracy": s["final_accuracy"],
            "attack_success_rate": s["final_attack_success_rate"],
            "mia_auc": _membership(p, latest_checkpoint(target_dir).state, p.poisoned[bad]),
            "seconds": s["unlearned"]["seconds"],
        }
        print(f"seed {seed}: {name}: {systems[name]}", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(figures, indent=2))
    return figures


def _spread(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("contrib", "unlearn"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/governance")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "contrib":
        runs = [contrib(s, args.out) for s in args.seeds]
        summary = {
            m: {
                "spearman_vs_exact_loo": _spread(
                    [r["methods"][m]["spearman_vs_exact_loo"] for r in runs]
                ),
                "evaluations": _spread([r["methods"][m]["evaluations"] for r in runs]),
                "cost_vs_training_run": _spread(
                    [r["methods"][m]["cost_vs_training_run"] for r in runs]
                ),
                "planted_in_bottom_3": sum(
                    all(r["methods"][m]["rank_from_last"][c] <= 3 for c in ("c1", "c2"))
                    for r in runs
                ),
            }
            for m in ("loo", "gtg_shapley", "tmc_shapley")
        }
        summary["exact_loo_cost_vs_training_run"] = _spread(
            [r["exact_loo_seconds"] / r["training_seconds"] for r in runs]
        )
        name = "governance-contrib.json"
    else:
        runs = [unlearning(s, args.out) for s in args.seeds]
        summary = {
            system: {
                key: _spread([r["systems"][system][key] for r in runs])
                for key in ("accuracy", "attack_success_rate", "mia_auc", "seconds")
            }
            for system in ("original", *UNLEARNERS)
        }
        name = "governance-unlearn.json"
    result = {
        "setup": {
            "overrides": CONTRIB if args.what == "contrib" else COMMON,
            "roles": ROLES if args.what == "contrib" else None,
        },
        "seeds": args.seeds,
        "summary": summary,
        "runs": runs,
        "hardware": hardware(),
    }
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
