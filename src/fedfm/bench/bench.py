"""``fedfm bench``: run a scenario through fedfm and its peers, write bench.json, plots, a table."""

from __future__ import annotations

import itertools
import json
import logging
import os
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedfm.assemble import prepare
from fedfm.bench.flops import matmul_peak_gflops, train_step_rate
from fedfm.bench.runner import Measured, run_system
from fedfm.bench.scenarios import SCENARIOS, Scenario
from fedfm.config import config_to_toml, load_config
from fedfm.errors import ConfigError, FedFMError

log = logging.getLogger(__name__)

PEERS = ("plain", "flower")


def resolve_scenario(target: str | None) -> tuple[Scenario, Path | None]:
    """A scenario by name, or a config file run as a scenario of its own."""
    if target is None or target in SCENARIOS:
        return SCENARIOS[target or "agnews-lora"], None
    path = Path(target)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ConfigError(f"bench config {target!r} does not exist")
        config = load_config(path)
        return Scenario(path.stem, f"config {path}", (), config.federation.rounds, 2), path
    raise ConfigError(
        f"bench target {target!r} is neither a scenario ({', '.join(SCENARIOS)}) nor a .toml config"
    )


def merge_overrides(base: list[str], variant: tuple[str, ...] | list[str]) -> list[str]:
    """``base`` then ``variant``; a variant that switches ``method.type`` or ``strategy.name``
    drops the base's other keys of that section (a prompt has no LoRA rank)."""
    dropped = {
        key.split(".", 1)[0]
        for key in (o.split("=", 1)[0].strip() for o in variant)
        if key in ("method.type", "strategy.name")
    }
    kept = [o for o in base if o.split(".", 1)[0] not in dropped]
    return [*kept, *variant]


def summarise(m: Measured) -> dict[str, Any]:
    t = m.timeline
    rounds = t["rounds"]
    durations = [r["end"] - r["start"] for r in rounds]
    first = rounds[0]["start"]
    return {
        "system": m.label,
        "round_seconds": statistics.median(durations),
        "round_seconds_each": durations,
        "startup_seconds": first - m.launched,
        "model_to_first_round_seconds": first - t["model_loaded"] if "model_loaded" in t else None,
        "peak_memory_mb": m.peak_tree_mb,
        "system_memory_mb": m.peak_system_mb,
        "final_accuracy": t["final_accuracy"],
        "accuracy": [r["accuracy"] for r in rounds],
        "elapsed": [r["end"] - m.launched for r in rounds],
        "bytes_up": statistics.mean(r["bytes_up"] for r in rounds),
        "cumulative_mb_up": list(itertools.accumulate(r["bytes_up"] / 1e6 for r in rounds)),
        "trainable_params": t.get("trainable_params"),
        "bytes_down": statistics.mean(r["bytes_down"] for r in rounds),
        "wall_seconds": m.wall_seconds,
        "notes": t.get("notes", []),
        "round_extras": t.get("round_extras", []),
        **t.get("summary_extras", {}),
    }


def rounds_to(accuracy: list[float | None], target: float) -> int | None:
    """The first round (1-based) whose accuracy reaches ``target``; None if none does."""
    return next((i for i, a in enumerate(accuracy, 1) if a is not None and a >= target), None)


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    ours = next(r for r in rows if r["system"] == "fedfm")
    out = {}
    for r in rows:
        if r["system"] not in PEERS:  # ratios are against peers; variants are compared in the table
            continue
        out[r["system"]] = {
            "round_seconds": ours["round_seconds"] / r["round_seconds"],
            "peak_memory": ours["peak_memory_mb"] / r["peak_memory_mb"],
            "startup": ours["startup_seconds"] / r["startup_seconds"],
            "accuracy_points": 100 * (ours["final_accuracy"] - r["final_accuracy"]),
        }
    return out


def _flop_rate(config) -> dict[str, float]:
    """Matmul peak and the train step's FLOP rate, measured in this process."""
    import torch

    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)
    peak = matmul_peak_gflops()
    p = prepare(config)
    rate = train_step_rate(p.task, p.train_tokens, p.train.labels, config.federation.batch_size)
    return {
        "bf16_matmul_peak_gflops": peak,
        **rate,
        "fraction_of_peak": rate["achieved_gflops"] / peak,
    }


def run_bench(
    target: str | None = None,
    peers: tuple[str, ...] | None = None,
    quick: bool = False,
    out: Path = Path("bench-runs"),
    sweep: bool = True,
    progress=None,
    resume: bool = False,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the benchmark and write ``bench.json`` and plots into ``out/<scenario>``.

    With ``resume``, systems that already finished on the same config in ``out/<scenario>`` are
    read back rather than run again (a benchmark interrupted half-way loses only the system it
    was running). ``overrides`` (``--set``) apply to every system, after the scenario's.
    """
    scenario, path = resolve_scenario(target)
    peers = scenario.peers if peers is None else peers
    for peer in peers:
        if peer not in PEERS:
            raise ConfigError(
                f"--peers item {peer!r} is not a known peer; allowed: {', '.join(PEERS)}"
            )
    if "flower" in peers:
        try:
            import flwr  # noqa: F401
        except ImportError:
            raise FedFMError(
                "the flower peer needs the `flwr` package: run `make bench` (it installs Flower "
                "into .venv-bench), or pass --peers plain"
            ) from None
    rounds = scenario.quick_rounds if quick else scenario.rounds
    extra = [
        *scenario.overrides,
        *(scenario.quick_overrides if quick else ()),
        f"federation.rounds={rounds}",
    ]
    config = load_config(path, [*extra, *overrides])
    workdir = out / scenario.name
    workdir.mkdir(parents=True, exist_ok=True)

    plan: list[tuple[str, str, Any]] = [("fedfm", "fedfm", config)]
    for label, variant in scenario.variants.items():
        if not quick or label in (scenario.quick_variants or ()):
            merged = [*merge_overrides(extra, variant), *overrides]
            plan.append((label, "fedfm", load_config(path, merged)))
    plan += [(peer, peer, config) for peer in peers]

    say = progress or (lambda text: None)
    measured: list[Measured] = []
    for label, system, cfg in plan:
        say(f"running {label} ({cfg.federation.rounds} rounds)")
        toml = config_to_toml(replace(cfg, name=f"{cfg.name}-{label}"))
        measured.append(run_system(label, system, toml, workdir, resume=resume))
    rows = [summarise(m) for m in measured]
    if scenario.target_accuracy is not None:
        for row in rows:
            row["target_accuracy"] = scenario.target_accuracy
            row["rounds_to_target"] = rounds_to(row["accuracy"], scenario.target_accuracy)

    sweep_rows = []
    if sweep and scenario.sweep_clients:
        for n in scenario.sweep_clients if not quick else scenario.sweep_clients[:2]:
            say(f"memory sweep: {n} clients")
            cfg = load_config(
                path,
                [
                    *scenario.overrides,
                    "partition.scheme=iid",
                    f"partition.clients={n}",
                    "federation.rounds=1",
                    "federation.local_steps=2",
                    "data.eval_rows=200",
                    "data.test_rows=200",
                ],
            )
            m = run_system(f"sweep-{n}", "fedfm", config_to_toml(cfg), workdir, resume=resume)
            sweep_rows.append({"clients": n, "peak_memory_mb": m.peak_tree_mb})

    say("measuring the matmul peak and the train step's FLOP rate")
    flops = _flop_rate(config)
    result = {
        "scenario": scenario.name,
        "description": scenario.description,
        "quick": quick,
        "rounds": rounds,
        "rows": rows,
        "ratios": ratios(rows),
        "memory_sweep": sweep_rows,
        "flops": flops,
        "config": config_to_toml(config),
    }
    (workdir / "bench.json").write_text(json.dumps(result, indent=2))
    _plots(result, workdir)
    result["dir"] = str(workdir)
    return result


def _plots(result: dict[str, Any], workdir: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.6))
    ax1, ax2, ax4, ax3 = fig.subplots(1, 4)
    for row in result["rows"]:
        rounds = list(range(1, len(row["accuracy"]) + 1))
        ax1.plot(rounds, row["accuracy"], marker="o", label=row["system"])
        ax2.plot(row["elapsed"], row["accuracy"], marker="o", label=row["system"])
        ax4.plot(row["cumulative_mb_up"], row["accuracy"], marker="o", label=row["system"])
    ax4.set(xlabel="cumulative uplink MB", ylabel="test accuracy", title="accuracy vs uplink bytes")
    ax4.set_xscale("log")
    ax1.set(xlabel="round", ylabel="test accuracy", title="accuracy per round")
    ax2.set(xlabel="seconds since launch", ylabel="test accuracy", title="accuracy vs wall-clock")
    ax1.legend(fontsize=7)
    if result["memory_sweep"]:
        xs = [r["clients"] for r in result["memory_sweep"]]
        ax3.plot(
            xs, [r["peak_memory_mb"] for r in result["memory_sweep"]], marker="o", label="fedfm"
        )
        ax3.set_xscale("log")
    ax3.set(xlabel="simulated clients", ylabel="peak RSS (MB)", title="memory vs clients")
    fig.tight_layout()
    fig.savefig(workdir / "bench.png", dpi=110)


def format_table(result: dict[str, Any]) -> list[list[str]]:
    """Rows of the printed table: one per system, then the ratios."""
    table = []
    for r in result["rows"]:
        table.append(
            [
                r["system"],
                f"{r['round_seconds']:.1f}",
                f"{r['startup_seconds']:.1f}",
                "—"
                if r["model_to_first_round_seconds"] is None
                else f"{r['model_to_first_round_seconds']:.1f}",
                f"{r['peak_memory_mb']:.0f}",
                f"{r['final_accuracy']:.4f}",
                " ".join(f"{a:.3f}" for a in r["accuracy"]),
                f"{r['bytes_up'] / 1e6:.2f}",
                f"{r['bytes_down'] / 1e6:.2f}",
            ]
        )
    return table
