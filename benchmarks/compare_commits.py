"""Seconds per round of the default run at two commits, in one invocation, alternating.

Each commit's source is checked out into a temporary git worktree and run with this
virtualenv's Python (``PYTHONPATH`` = that worktree's ``src``), so only fedfm's code differs.
Runs alternate (A, B, A, B, ...) so that drift in the machine's speed hits both alike. Usage,
from the repository root, after ``make install``:

    .venv/bin/python benchmarks/compare_commits.py BEFORE AFTER [--repeats 2]
        [--set federation.rounds=6] [--out benchmarks/results/core-v2]

Writes ``OUT/compare.json``: per commit the mean round seconds (rounds after the first, which
includes one-off warm-up), each run's figures, the final accuracy, and the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def _hardware() -> dict:
    cpu = "unknown"
    flags: list[str] = []
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                flags = [x for x in line.split(":", 1)[1].split() if x in wanted]
    return {
        "cpu": cpu,
        "flags": flags,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _run_once(src: Path, out: Path, overrides: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "fedfm.cli", "run", "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    steady = [r["round_seconds"] for r in rows[1:]] or [rows[0]["round_seconds"]]
    return {
        "round_seconds_mean": statistics.mean(steady),
        "round_seconds": [round(r["round_seconds"], 3) for r in rows],
        "final_accuracy": summary["final_accuracy"],
        "bytes_up_total": summary["bytes_up_total"],
        "bytes_down_total": summary["bytes_down_total"],
        "peak_rss_mb": summary["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="benchmarks/results/core-v2")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    runs: dict[str, list[dict]] = {args.before: [], args.after: []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for commit in runs:
            tree = Path(tmp) / commit
            subprocess.run(
                ["git", "-C", str(root), "worktree", "add", "-f", "--detach", str(tree), commit],
                check=True,
                capture_output=True,
            )
            trees[commit] = tree
        try:
            for i in range(args.repeats):
                for commit, tree in trees.items():
                    out = Path(tmp) / f"runs-{commit}-{i}"
                    result = _run_once(tree / "src", out, args.overrides)
                    print(commit, i, f"{result['round_seconds_mean']:.2f} s/round", flush=True)
                    runs[commit].append(result)
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                    check=False,
                    capture_output=True,
                )
    commit_of = {
        c: subprocess.run(
            ["git", "-C", str(root), "rev-parse", c], capture_output=True, text=True, check=True
        ).stdout.strip()
        for c in runs
    }
    means = {c: statistics.mean(r["round_seconds_mean"] for r in rs) for c, rs in runs.items()}
    report = {
        "overrides": args.overrides,
        "hardware": _hardware(),
        "commits": {
            c: {"commit": commit_of[c], "round_seconds_mean": means[c], "runs": rs}
            for c, rs in runs.items()
        },
        "after_over_before": means[args.after] / means[args.before],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({c: round(m, 3) for c, m in means.items()}), report["after_over_before"])


if __name__ == "__main__":
    main()
