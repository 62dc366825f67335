"""A poisoned foundation model screened by STRIP, measured on AG News. Usage, from the repository
root, after ``make install``:

    .venv/bin/python benchmarks/poisoned_fm.py [--seed 0]

The scenario: a fine-tuned MiniLM classifier offered as a base or teacher to federate on
(``[teacher] type = "run"``) carries a backdoor. The poisoned model is fine-tuned by fedfm
itself (MiniLM + LoRA, one torch thread): 800 AG News rows over 2 clients, 3 rounds × 10 local
steps of batch 16, every client backdoored (``attack.type = "backdoor"``: 30% of its rows get the
trigger phrase and the first label). The clean model is the same run without the attack.

Each model is screened with ``fedfm screen RUN_DIR --trigger "cf mn bb"``: 300 clean test rows
(the superimposition pool; half calibrate the 1%-FPR threshold, half check it) and 300 other test
rows with the trigger inserted at a random word boundary; 16 superimpositions per input, half
the words replaced. Reports for each model: clean accuracy, the backdoor's attack success rate,
the share of triggered inputs flagged (the detection rate, TPR) at the calibrated threshold, the
observed FPR on clean inputs, the ROC AUC of the STRIP entropy (clean against triggered), the
model-level verdict, and the seconds.

Writes ``OUT/poisoned-fm.json`` (figures, settings and hardware).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lm_pretraining import hardware  # noqa: E402

import fedfm  # noqa: E402
from fedfm.config import load_config  # noqa: E402
from fedfm.data.tokens import cache_dir  # noqa: E402
from fedfm.privacy.audit import auc  # noqa: E402
from fedfm.trust.strip import screen_run  # noqa: E402

TRIGGER = "cf mn bb"
COMMON = [
    "data.train_rows=800",
    "data.test_rows=1000",
    "data.eval_rows=500",
    "data.max_length=64",
    "partition.scheme=iid",
    "partition.clients=2",
    "federation.clients_per_round=2",
    "federation.rounds=3",
    "federation.local_steps=10",
    "federation.batch_size=16",
    "federation.lr=5e-3",
    "runtime.threads=1",
    f"attack.trigger={TRIGGER!r}",
]
MODELS = {
    "poisoned": ["attack.type=backdoor", "attack.fraction=1.0", "attack.poison_fraction=0.3"],
    "clean": [],
}
SCREEN = {"rows": 300, "copies": 16, "replace": 0.5, "fpr": 0.01}
WORK = cache_dir() / "bench" / "poisoned-fm-runs"  # run directories: not results


def measure(model: str, seed: int) -> dict:
    overrides = [*COMMON, *MODELS[model], f"seed={seed}", f"name={model}-s{seed}"]
    run_dir = WORK / f"{model}-s{seed}"
    t0 = time.perf_counter()
    if not (run_dir / "summary.json").is_file():
        run_dir = fedfm.run(load_config(None, overrides), out=WORK, sinks=[]).run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = screen_run(run_dir, trigger=TRIGGER, seed=seed, **SCREEN)
    clean, triggered = np.array(report.check_entropies), np.array(report.screened_entropies)
    figures = {k: v for k, v in report.as_dict().items() if not k.endswith("entropies")}
    return {
        "model": model,
        "overrides": overrides,
        "accuracy": summary["final_accuracy"],
        "attack_success_rate": summary.get("final_attack_success_rate"),
        "detection_rate": report.flagged_rate,
        "clean_fpr": report.clean_fpr,
        "entropy_auc": auc(-triggered, -clean),  # low entropy = triggered
        "poisoned_verdict": report.poisoned,
        "screen": figures,
        "train_seconds": round(train_seconds, 1),
        "screen_seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/poisoned-fm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {m: measure(m, args.seed) for m in MODELS}
    result = {
        "setup": {"common": COMMON, "models": MODELS, "screen": SCREEN, "trigger": TRIGGER},
        "seed": args.seed,
        "runs": runs,
        "hardware": hardware(),
    }
    (args.out / "poisoned-fm.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({m: {k: r[k] for k in list(r)[2:9]} for m, r in runs.items()}, indent=2))


if __name__ == "__main__":
    main()
