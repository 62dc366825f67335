"""Continued pre-training of SmolLM2-135M on Debian text, and what it does for a downstream task.
Usage, from the repository root, after ``make install``:

    .venv/bin/python benchmarks/lm_continued.py [--out benchmarks/results/lm-continued] [--reuse]

``--reuse`` keeps the figures and merged model of an earlier invocation and runs only step 2.

1. ``continued``: federated LoRA (r 8 on q, v) continued pre-training of the packaged
   SmolLM2-135M-Instruct on the descriptions of the 8 largest Debian maintainers (one client each,
   the same TSV as ``lm_pretraining.py``), FedAvg, 4 rounds × 4 clients × 8 steps × 4 blocks of 128
   tokens. Held-out perplexity (all blocks of the first 200 descriptions of Debian's test split) of
   the base model and of the tuned one.
2. ``downstream``: federated LoRA instruction tuning (``task.type = "causal_lm"``) on Debian section
   classification ("Which Debian section ...? Answer with one word." → ``admin``, ``net``, ...; 21
   sections; 2,000 training rows, Dirichlet(0.5) over 4 clients, 3 rounds × 4 clients × 10 steps),
   once from the base model and once from the base merged with the continued pre-training's
   adapter; exact match on the first 200 test rows. Same seed, data, clients and steps.

Writes ``OUT/lm-continued.json`` (figures and hardware) and one JSON per run under ``OUT/per-run``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lm_pretraining import DATA, client_text, hardware  # noqa: E402

import fedfm  # noqa: E402
from fedfm.config import load_config  # noqa: E402
from fedfm.data.tokens import cache_dir  # noqa: E402
from fedfm.tasks.lm import LanguageModelTask  # noqa: E402

CONTINUED = [
    "name=continued",
    "task.type=lm",
    "model.name=smollm2",
    "method.type=lora",
    "method.r=8",
    "method.dropout=0.0",
    f"data.test={str(DATA / 'debian' / 'test.tsv')!r}",
    "data.max_length=128",
    "data.test_rows=200",
    "data.eval_rows=32",
    "partition.scheme=column",
    "partition.column=maintainer",
    "partition.clients=0",
    "partition.min_size=1",
    "federation.rounds=4",
    "federation.clients_per_round=4",
    "federation.local_steps=8",
    "federation.batch_size=4",
    "federation.lr=1e-3",
    "strategy.name=fedavg",
]

QUESTION = (
    "Which Debian section does this package belong to? Answer with one word, e.g. admin, "
    "devel, games, net, science, text or x11."
)
DOWNSTREAM = [
    "task.type=causal_lm",
    f"task.instruction={QUESTION!r}",
    "task.max_new_tokens=4",
    f"data.train={str(DATA / 'debian' / 'train.tsv')!r}",
    f"data.test={str(DATA / 'debian' / 'test.tsv')!r}",
    "data.max_length=128",
    "data.train_rows=2000",
    "data.test_rows=200",
    "data.eval_rows=200",
    "partition.scheme=dirichlet",
    "partition.alpha=0.5",
    "partition.clients=4",
    "method.type=lora",
    "federation.rounds=3",
    "federation.clients_per_round=4",
    "federation.local_steps=10",
    "federation.batch_size=8",
    "federation.lr=1e-3",
    "federation.eval_every=3",
]


def _record(result, seconds: float) -> dict:
    s = result.summary
    return {
        "final_accuracy": s["final_accuracy"],
        "final_perplexity": s.get("final_perplexity"),
        "tokens_total": s.get("tokens_total"),
        "bytes_total": s["bytes_up_total"] + s["bytes_down_total"],
        "seconds": round(seconds, 1),
        "rows": [
            {k: r.get(k) for k in ("round", "perplexity", "accuracy", "loss", "tokens")}
            for r in result.metrics
        ],
    }


def continued(config, out: Path, work: Path, merged: Path, figures: dict) -> None:
    """Steps 1-2: the base model's perplexity, continued pre-training, the merged model."""
    from fedfm.assemble import prepare

    p = prepare(config)
    base = p.task.evaluate(p.test_tokens, p.test.labels)  # every block of the 200 descriptions
    figures["base_perplexity"] = base["perplexity"]
    figures["base_next_token_accuracy"] = base["accuracy"]
    del p
    t0 = time.perf_counter()
    result = fedfm.run(config, out=work, sinks=[])
    run = _record(result, time.perf_counter() - t0)
    (out / "per-run" / "continued.json").write_text(json.dumps(run, indent=1))
    figures["continued_perplexity"] = run["final_perplexity"]
    figures["continued_next_token_accuracy"] = run["final_accuracy"]
    figures["continued_tokens"] = run["tokens_total"]
    print(f"perplexity {base['perplexity']:.2f} -> {run['final_perplexity']:.2f}", flush=True)

    # the merged model, as a folder another run can name
    tokenizer, model = LanguageModelTask.load_trained(result.run_dir, config)
    model.save_pretrained(str(merged))
    tokenizer.save_pretrained(str(merged))
    del model


def main() -> None:
    out = ROOT / "benchmarks/results/lm-continued"
    if "--out" in sys.argv:
        out = Path(sys.argv[sys.argv.index("--out") + 1])
    (out / "per-run").mkdir(parents=True, exist_ok=True)
    work = cache_dir() / "bench" / "lm-continued-runs"  # run directories: not results
    figures: dict = {}

    def save() -> None:  # after every step: an interrupted benchmark keeps what it measured
        record = {
            "hardware": hardware(),
            "continued_overrides": CONTINUED,
            "downstream_overrides": DOWNSTREAM,
            "figures": figures,
        }
        (out / "lm-continued.json").write_text(json.dumps(record, indent=1))

    config = load_config(None, [*CONTINUED, f"data.train={str(client_text())!r}"])
    merged = cache_dir() / "bench" / "smollm2-debian-continued"
    previous = out / "lm-continued.json"
    if "--reuse" in sys.argv and (merged / "model.safetensors").exists() and previous.exists():
        # steps 1-2 done by an earlier invocation of this script: keep its figures and model
        figures.update(
            {
                k: v
                for k, v in json.loads(previous.read_text())["figures"].items()
                if not k.startswith("downstream")
            }
        )
        figures["reused_continued_from"] = json.loads(previous.read_text())["hardware"]
    else:
        continued(config, out, work, merged, figures)
        save()

    # 3. downstream: section classification from the base and from the continued model
    for name, model_name in (("downstream-base", "smollm2"), ("downstream-continued", str(merged))):
        overrides = [*DOWNSTREAM, f"name={name}", f"model.name={model_name!r}"]
        t0 = time.perf_counter()
        result = fedfm.run(load_config(None, overrides), out=work, sinks=[])
        run = _record(result, time.perf_counter() - t0)
        run["overrides"] = overrides
        (out / "per-run" / f"{name}.json").write_text(json.dumps(run, indent=1))
        figures[f"{name}_exact_match"] = run["final_accuracy"]
        print(f"{name}: exact match {run['final_accuracy']:.3f}", flush=True)
        save()


if __name__ == "__main__":
    main()
