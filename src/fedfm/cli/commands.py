"""What each ``fedfm`` command does (the parser is in :mod:`fedfm.cli.parser`)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from fedfm.assemble import split
from fedfm.bench import bench
from fedfm.config import config_to_toml, load_config, resolve_path
from fedfm.dashboard import DashboardServer, RunSource
from fedfm.dashboard.data import check_run_dir
from fedfm.data.table import require_file
from fedfm.errors import FedFMError
from fedfm.experiment import run
from fedfm.fm4fl.synthetic import verified
from fedfm.merged import export_merged
from fedfm.metrics.report import rebuild_report
from fedfm.plugins import load_modules
from fedfm.predict import predict
from fedfm.privacy.policy import PrivacyPolicy
from fedfm.runtimes.grpc.certs import make_certs
from fedfm.runtimes.grpc.client import NetworkClient
from fedfm.runtimes.grpc.serve import serve
from fedfm.tasks.classification import load_labelled
from fedfm.tasks.generation import generate


def cmd_run(args) -> int:

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
    print_result(result)
    return 0


def cmd_config(args) -> int:

    config = load_config(args.config, args.overrides)
    for field in ("train", "test"):  # a config that cannot run is not a good template
        if getattr(config.data, field):
            require_file(resolve_path(getattr(config.data, field)), f"data.{field}")
    sys.stdout.write(config_to_toml(config))
    return 0


def cmd_report(args) -> int:
    print(rebuild_report(Path(args.run_dir)))
    return 0


def cmd_predict(args) -> int:

    texts = list(args.text)
    if args.file is not None:
        if args.file == "-":
            texts += sys.stdin.read().splitlines()
        else:
            path = Path(args.file)
            if not path.is_file():
                raise FedFMError(f"--file {args.file!r}: the file does not exist")
            try:
                texts += path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError:
                raise FedFMError(f"--file {args.file!r} is not UTF-8 text") from None
    if not texts:
        raise FedFMError("nothing to label: give --text TEXT (repeatable) or --file FILE")
    for label in predict(args.run_dir, texts):
        print(label)
    return 0


def cmd_export(args) -> int:

    print(export_merged(args.run_dir, args.merged))
    return 0


def cmd_generate(args) -> int:

    if args.max_new_tokens < 1:
        raise FedFMError(f"--max-new-tokens = {args.max_new_tokens} is not allowed; allowed: ≥ 1")
    print(generate(args.run_dir, args.prompt, args.max_new_tokens, args.temperature, args.seed))
    return 0


def cmd_bench(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    peers = (
        None if args.peers is None else tuple(p.strip() for p in args.peers.split(",") if p.strip())
    )
    result = bench.run_bench(
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
    for row in bench.format_table(result):
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


def print_result(result) -> None:
    from rich.console import Console

    s = result.summary
    console = Console()
    if result.already_finished:
        console.print(
            f"{result.run_dir} already finished its {s['rounds']} rounds; nothing to do "
            "(--set federation.rounds=N with a larger N continues it)"
        )
    ppl = s.get("final_perplexity")
    perplexity = f"perplexity [bold]{ppl:.2f}[/bold], " if ppl is not None else ""
    console.print(
        f"final test {perplexity}accuracy [bold]{s['final_accuracy']:.4f}[/bold] on "
        f"{s['test_rows']} rows · "
        f"{s['total_seconds']:.1f} s · peak RSS {s['peak_rss_mb']:.0f} MB · "
        f"{(s['bytes_up_total'] + s['bytes_down_total']) / 1e6:.2f} MB sent"
    )
    console.print(f"run directory: {result.run_dir}  (report: {result.run_dir / 'report.html'})")


def cmd_serve(args) -> int:

    if args.resume and args.config:
        raise FedFMError("give either a config or --resume RUN_DIR, not both")
    board, source = None, RunSource()
    if args.dashboard is not None:  # bound first: a taken port fails before the model loads
        board = DashboardServer(
            source, args.dashboard_host, args.dashboard, args.dashboard_token, "--dashboard"
        )
        print(f"dashboard: {board.url}", flush=True)
        board.start()
    try:
        result = serve(
            args.config,
            address=args.address,
            out=args.out,
            resume=args.resume,
            overrides=args.overrides,
            progress=not args.quiet,
            on_start=source.attach,
        )
    finally:
        if board is not None:
            board.stop()
    print_result(result)
    return 0


def cmd_dashboard(args) -> int:

    board = DashboardServer(
        RunSource(check_run_dir(args.run_dir)), args.host, args.port, args.token
    )
    print(f"dashboard of {args.run_dir}: {board.url}  (Ctrl-C stops it)", flush=True)
    board.start().wait()  # until Ctrl-C
    return 0


def cmd_join(args) -> int:

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
    policy = PrivacyPolicy(
        require_secagg=args.require_secagg,
        min_threshold=args.min_threshold,
        max_epsilon=args.max_epsilon,
        reproducible_noise=args.reproducible_noise,
    )
    logging.getLogger("fedfm").setLevel(logging.INFO)
    load_modules(args.plugin)
    client = NetworkClient(
        args.address,
        client_id,
        args.token,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        insecure=args.insecure,
        retry_seconds=args.retry_seconds,
        policy=policy,
        signing_key=args.signing_key,
        trusted_keys=args.trusted_keys,
    )
    result = client.run(args.data)
    print(
        f"done: trained in {len(result.rounds)} rounds, {result.uploads_accepted} updates "
        f"accepted, {result.uploads_refused} refused"
        + (f"; left early: {result.stopped}" if result.stopped else "")
    )
    return 0


def cmd_certs(args) -> int:

    hosts = tuple(args.host) or ("localhost", "127.0.0.1")
    written = make_certs(args.dir, hosts, tuple(args.client), args.days, force=args.force)
    for name, path in written.items():
        print(f"{name:>16}  {path}")
    return 0


def cmd_synthesize(args) -> int:
    from rich.progress import Progress

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
