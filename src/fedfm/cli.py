"""The ``fedfm`` command line: ``fedfm run | config | report | generate | synthesize | bench |
serve | join | certs``.

Errors of the FedFMError hierarchy print one line and exit with code 2; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedfm.bench.scenarios import SCENARIOS
from fedfm.errors import FedFMError

EPILOG = """examples:
  fedfm run                                  the built-in default (MiniLM + LoRA on AG News)
  fedfm run configs/debian_natural.toml      any experiment config (TOML)
  fedfm run --set federation.rounds=3 --set method.type=prompt
  fedfm run --resume runs/agnews-lora        continue an interrupted run
  fedfm config > my.toml                     the default config, every key, to edit
  fedfm report runs/agnews-lora              rebuild report.html from a run directory
  fedfm run configs/agnews_instruct.toml     federated instruction tuning of SmolLM2 (causal LM)
  fedfm generate runs/agnews-instruct --prompt "Which topic is ...?"   answer with a tuned LM
  fedfm synthesize configs/fm4fl_gptfl.toml  GPT-FL data: generate, verify, write for review
  fedfm bench --quick --peers plain          fedfm against a plain PyTorch loop, in minutes
  fedfm certs certs/                         test CA + server certificate for TLS
  fedfm serve configs/network.toml           serve an experiment to network clients
  fedfm join 127.0.0.1:8443 --ca certs/ca.pem --client-id c1 --token T --data my.csv
"""


def _add_overrides(
    parser: argparse.ArgumentParser,
    help: str = "override one config key (repeatable), e.g. --set federation.rounds=3; "
    "values are read as TOML (numbers, true/false, [lists]), else as strings",
) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable) into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=help,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedfm",
        description="Federated learning with foundation models: federated fine-tuning of an FM "
        "(LoRA, prompt tuning, adapters) in simulation, with byte-accurate accounting.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=f"fedfm {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run an experiment (the default one without a config)",
        description="Run a federated experiment and write its run directory (config.toml, "
        "metrics.jsonl, summary.json, checkpoints/, adapter/, report.html).",
    )
    run.add_argument(
        "config", nargs="?", help="experiment config (TOML); omit for the built-in default"
    )
    _add_overrides(run)
    run.add_argument(
        "--out", default="runs", help="parent folder of the run directory (default: runs)"
    )
    run.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    run.add_argument("--quiet", action="store_true", help="no live progress display")

    cfg = sub.add_parser(
        "config",
        help="print the resolved config (the default, or a file with --set overrides) as TOML",
        description="Print a resolved config: every key with its value. Useful as a template.",
    )
    cfg.add_argument("config", nargs="?", help="experiment config (TOML); omit for the default")
    _add_overrides(cfg)

    bench = sub.add_parser(
        "bench",
        help="benchmark fedfm against a plain PyTorch loop and Flower on one scenario",
        description="Run one scenario through fedfm and its peers, each in its own process, "
        "measured alike: seconds per round, start-up, accuracy per round, peak memory of the "
        "process tree, bytes per round; plus a memory-vs-clients sweep and the train step's FLOP "
        "rate against this machine's measured bf16 matmul peak. Writes bench.json and bench.png.",
    )
    bench.add_argument(
        "target",
        nargs="?",
        default="agnews-lora",
        help=f"a scenario ({', '.join(SCENARIOS)}) or an experiment config (TOML); "
        "default: agnews-lora",
    )
    bench.add_argument(
        "--peers",
        default=None,
        help="comma-separated peers to compare with: plain, flower (default: the scenario's — both "
        "for agnews-lora, none for the codec, method and attack scenarios; flower needs `make bench`)",
    )
    bench.add_argument(
        "--quick", action="store_true", help="a short variant that fits in a few minutes"
    )
    bench.add_argument("--no-sweep", action="store_true", help="skip the memory-vs-clients sweep")
    bench.add_argument(
        "--resume",
        action="store_true",
        help="reuse the systems that already finished on the same config in the output folder",
    )
    _add_overrides(bench, "override a config key for every system, e.g. --set runtime.threads=1")
    bench.add_argument(
        "--out", default="bench-runs", help="parent folder of the results (default: bench-runs)"
    )

    srv = sub.add_parser(
        "serve",
        help="serve an experiment to network clients (gRPC, TLS by default)",
        description="Start a federated server: it waits for server.min_clients clients to join "
        "with `fedfm join`, runs the rounds, and writes the same run directory as `fedfm run` "
        "(plus server.sqlite). Allowed clients and their tokens come from [server] tokens_file.",
    )
    srv.add_argument("config", nargs="?", help="experiment config (TOML) with a [server] section")
    srv.add_argument("--address", help="HOST:PORT to listen on (default: server.address)")
    srv.add_argument("--out", default="runs", help="parent folder of the run directory")
    srv.add_argument("--resume", metavar="RUN_DIR", help="continue a crashed server's run")
    _add_overrides(srv)
    srv.add_argument("--quiet", action="store_true", help="no live progress display")

    join = sub.add_parser(
        "join",
        help="join a server as a client with a local data file",
        description="Join a `fedfm serve` server: receive the experiment (model, method, columns, "
        "labels, hyper-parameters, codecs), train on the local data file each round the server "
        "asks, and send updates back. Only the updates leave this machine.",
    )
    join.add_argument("address", metavar="HOST:PORT", help="the server's address")
    join.add_argument("--token", default="", help="this client's token (from the server operator)")
    join.add_argument("--data", required=True, help="training data file (CSV, TSV, JSONL, Parquet)")
    join.add_argument("--client-id", help="this client's id (default: the --cert common name)")
    join.add_argument("--ca", help="CA certificate (PEM) that signed the server's certificate")
    join.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    join.add_argument("--key", help="its private key (PEM)")
    join.add_argument(
        "--insecure", action="store_true", help="no TLS (only for servers with server.tls = false)"
    )
    join.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for training (default 0: all cores; use 1 when several clients "
        "share one machine)",
    )
    join.add_argument(
        "--retry-seconds",
        type=float,
        default=300.0,
        help="keep retrying an unreachable server this long (default: 300)",
    )

    certs = sub.add_parser(
        "certs",
        help="create a test CA, server and client certificates",
        description="Write ca.pem/ca.key, server.pem/server.key and <client>.pem/.key into DIR: "
        "enough to try TLS and mutual TLS. Use your own PKI in production.",
    )
    certs.add_argument("dir", help="output folder")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        help="host name or IP the server certificate is valid for (repeatable; "
        "default: localhost and 127.0.0.1)",
    )
    certs.add_argument(
        "--client", action="append", default=[], help="also issue a client certificate (repeatable)"
    )
    certs.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")

    gen = sub.add_parser(
        "generate",
        help="answer a prompt with the tuned model of a causal_lm run",
        description="Load a task.type = 'causal_lm' run's base model and its exported peft "
        "adapter (adapter/), apply the chat template to the prompt and print the greedy answer.",
    )
    gen.add_argument("run_dir", help="a causal_lm run directory written by `fedfm run`")
    gen.add_argument("--prompt", required=True, help="the user message")
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        metavar="N",
        help="at most N generated tokens (default: 64)",
    )

    syn = sub.add_parser(
        "synthesize",
        help="generate a config's synthetic data set (GPT-FL) and verify it, without training",
        description="Generate the labelled set that [synthetic] describes (or read "
        "synthetic.file), run the checks against the config's clients (quality, duplicates, "
        "near-copies of client rows from per-sample MinHash counts, label balance), and write "
        "OUT/synthetic.jsonl (every sample, with 'kept' and the reason it was dropped) and "
        "OUT/report.json. The generated set is cached: a later `fedfm run` reuses it.",
    )
    syn.add_argument("config", nargs="?", help="experiment config (TOML); omit for the default")
    _add_overrides(syn)
    syn.add_argument("--out", default="synthetic", help="output folder (default: synthetic)")

    rep = sub.add_parser(
        "report",
        help="rebuild report.html of a run directory",
        description="Rebuild report.html (and plots/) from a run directory's metrics.jsonl and summary.json.",
    )
    rep.add_argument("run_dir", help="a run directory written by `fedfm run`")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedfm")
    except PackageNotFoundError:
        return "unknown"


def _cmd_run(args) -> int:
    from fedfm.experiment import run

    if args.resume and args.config:
        raise FedFMError(
            "give either a config or --resume RUN_DIR, not both (the run keeps its own config)"
        )
    result = run(
        args.config,
        out=args.out,
        resume=args.resume,
        overrides=args.overrides,
        progress=not args.quiet,
    )
    _print_result(result)
    return 0


def _cmd_config(args) -> int:
    from fedfm.config import config_to_toml, load_config

    sys.stdout.write(config_to_toml(load_config(args.config, args.overrides)))
    return 0


def _cmd_report(args) -> int:
    from fedfm.metrics.report import write_report

    run_dir = Path(args.run_dir)
    for name in ("config.toml", "metrics.jsonl", "summary.json"):
        if not (run_dir / name).is_file():
            raise FedFMError(f"{str(run_dir)!r} is not a finished run directory: {name} is missing")
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    path = write_report(run_dir, (run_dir / "config.toml").read_text(), rows, summary)
    print(path)
    return 0


def _cmd_generate(args) -> int:
    from fedfm.tasks.causal_lm import generate

    if args.max_new_tokens < 1:
        raise FedFMError(f"--max-new-tokens = {args.max_new_tokens} is not allowed; allowed: ≥ 1")
    print(generate(args.run_dir, args.prompt, args.max_new_tokens))
    return 0


def _cmd_bench(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from fedfm.bench.bench import format_table, run_bench

    console = Console()
    peers = (
        None if args.peers is None else tuple(p.strip() for p in args.peers.split(",") if p.strip())
    )
    result = run_bench(
        args.target,
        peers=peers,
        quick=args.quick,
        out=Path(args.out),
        sweep=not args.no_sweep,
        progress=lambda text: console.print(f"[dim]bench:[/dim] {text}"),
        resume=args.resume,
        overrides=tuple(args.overrides),
    )
    table = Table(title=f"fedfm bench: {result['scenario']} ({result['rounds']} rounds)")
    for col in (
        "system",
        "s/round",
        "startup s",
        "model→round 1 s",
        "peak MB",
        "final acc",
        "acc per round",
        "MB up/rnd",
        "MB down/rnd",
    ):
        table.add_column(col)
    for row in format_table(result):
        table.add_row(*row)
    console.print(table)
    for peer, r in result["ratios"].items():
        console.print(
            f"fedfm vs {peer}: {r['round_seconds']:.2f}× the seconds per round, "
            f"{r['peak_memory']:.2f}× the peak memory, {r['startup']:.2f}× the start-up, "
            f"{r['accuracy_points']:+.1f} accuracy points"
        )
    for row in result["memory_sweep"]:
        console.print(
            f"memory sweep: {row['clients']:>5} clients → {row['peak_memory_mb']:.0f} MB peak"
        )
    for row in result["rows"]:
        console.print(
            f"{row['system']:>14}: {row['cumulative_mb_up'][-1]:.2f} MB uplink in total, final accuracy {row['final_accuracy']:.4f}"
            + (
                f", attack success {row['attack_success_rate']:.3f}"
                if row.get("attack_success_rate") is not None
                else ""
            )
        )
    f = result["flops"]
    console.print(
        f"train step: {f['step_gflop']:.1f} GFLOP in {f['step_seconds']:.3f} s = {f['achieved_gflops']:.0f} GFLOP/s, "
        f"{100 * f['fraction_of_peak']:.0f}% of the measured bf16 matmul peak ({f['bf16_matmul_peak_gflops']:.0f} GFLOP/s)"
    )
    console.print(f"results: {result['dir']}/bench.json, {result['dir']}/bench.png")
    return 0


def _print_result(result) -> None:
    from rich.console import Console

    s = result.summary
    console = Console()
    console.print(
        f"final test accuracy [bold]{s['final_accuracy']:.4f}[/bold] on {s['test_rows']} rows · "
        f"{s['total_seconds']:.1f} s · peak RSS {s['peak_rss_mb']:.0f} MB · "
        f"{(s['bytes_up_total'] + s['bytes_down_total']) / 1e6:.2f} MB sent"
    )
    console.print(f"run directory: {result.run_dir}  (report: {result.run_dir / 'report.html'})")


def _cmd_serve(args) -> int:
    from fedfm.runtimes.grpc.serve import serve

    if args.resume and args.config:
        raise FedFMError("give either a config or --resume RUN_DIR, not both")
    result = serve(
        args.config,
        address=args.address,
        out=args.out,
        resume=args.resume,
        overrides=args.overrides,
        progress=not args.quiet,
    )
    _print_result(result)
    return 0


def _cmd_join(args) -> int:
    from fedfm.runtimes.grpc.client import NetworkClient

    client_id = args.client_id
    if not client_id and args.cert:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate(Path(args.cert).read_bytes())
        client_id = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    if not client_id:
        raise FedFMError("--client-id is required (or --cert, whose common name is the id)")
    if not args.token and not args.cert:
        raise FedFMError("--token is required unless the server uses mutual TLS (--cert, --key)")
    if not args.insecure and not args.ca:
        raise FedFMError(
            "--ca CA.pem is required to check the server's certificate (or --insecure for a "
            "server with server.tls = false)"
        )
    if args.threads < 0:
        raise FedFMError(f"--threads {args.threads} must be ≥ 0 (0 = all cores)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.getLogger("fedfm").setLevel(logging.INFO)
    client = NetworkClient(
        args.address,
        client_id,
        args.token,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        insecure=args.insecure,
        retry_seconds=args.retry_seconds,
    )
    result = client.run(args.data)
    print(
        f"done: trained in {len(result.rounds)} rounds, {result.uploads_accepted} updates "
        f"accepted, {result.uploads_refused} refused"
    )
    return 0


def _cmd_certs(args) -> int:
    from fedfm.runtimes.grpc.certs import make_certs

    hosts = tuple(args.host) or ("localhost", "127.0.0.1")
    written = make_certs(args.dir, hosts, tuple(args.client), args.days)
    for name, path in written.items():
        print(f"{name:>16}  {path}")
    return 0


def _cmd_synthesize(args) -> int:
    from rich.progress import Progress

    from fedfm.assemble import split
    from fedfm.config import load_config
    from fedfm.fm4fl.synthetic import verified
    from fedfm.tasks.classification import load_labelled

    config = load_config(args.config, args.overrides)
    if config.task.type != "classification":
        raise FedFMError("fedfm synthesize: synthetic data are for task.type = 'classification'")
    train, _ = load_labelled(config)
    part = split(config, train)
    out = Path(args.out)
    with Progress(transient=True) as bar:
        job = bar.add_task("generating", total=None)
        generated, checked = verified(
            config, train, part, lambda done, total: bar.update(job, completed=done, total=total)
        )
    out.mkdir(parents=True, exist_ok=True)
    reasons = checked.reasons if checked is not None else [None] * len(generated.texts)
    rows = [
        {"text": text, "label": train.label_names[label], "kept": why is None, "dropped": why}
        for text, label, why in zip(generated.texts, generated.labels, reasons, strict=True)
    ]
    report = {
        "generated_file": str(generated.path),
        **(checked.report if checked is not None else {"generated": len(rows), "kept": len(rows)}),
    }
    for name, text in (
        ("synthetic.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
        ("report.json", json.dumps(report, indent=2) + "\n"),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    print(f"{report['kept']} of {len(rows)} samples kept", end="")
    if checked is not None:
        print(f"; dropped: {checked.report['dropped']}", end="")
    print(f"\nwritten: {out / 'synthetic.jsonl'}, {out / 'report.json'}")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "config": _cmd_config,
    "report": _cmd_report,
    "generate": _cmd_generate,
    "synthesize": _cmd_synthesize,
    "bench": _cmd_bench,
    "serve": _cmd_serve,
    "join": _cmd_join,
    "certs": _cmd_certs,
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except FedFMError as e:
        if args.debug:
            raise
        print(f"fedfm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedfm: interrupted; continue with `fedfm run --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
