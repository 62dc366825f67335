"""The ``fedfm`` argument parser: every command, its options and the examples epilog."""

from __future__ import annotations

import argparse
from importlib import metadata

from fedfm.bench.scenarios import SCENARIOS
from fedfm.cli import governance, trust
from fedfm.dashboard.server import DEFAULT_PORT

EPILOG = """examples:
  fedfm run                                  the built-in default (MiniLM + LoRA on AG News)
  fedfm run configs/debian_maintainers.toml  any experiment config (TOML)
  fedfm run --set federation.rounds=3 --set method.type=prompt
  fedfm run --resume runs/agnews-lora        continue an interrupted run
  fedfm config > my.toml                     the default config, every key, to edit
  fedfm report runs/agnews-lora              rebuild report.html from a run directory
  fedfm predict runs/agnews-lora --text "Stocks rallied."   one label per line
  fedfm export runs/agnews-lora --merged my-model   a folder transformers.pipeline() loads
  fedfm run configs/agnews_instruct.toml     federated instruction tuning of SmolLM2 (causal LM)
  fedfm generate runs/agnews-instruct --prompt "Which topic is ...?"   answer with a tuned LM
  fedfm generate runs/debian-pretrain --prompt "Command-line tool"    continue with a pre-trained LM
  fedfm synthesize configs/fm4fl_gptfl.toml  GPT-FL data: generate, verify, write for review
  fedfm bench --quick --peers plain          fedfm against a plain PyTorch loop, in minutes
  fedfm verify runs/agnews-lora              check a run against its signed provenance log
  fedfm audit runs/agnews-lora --shadows 4   membership inference (LiRA) on a run with privacy.audit
  fedfm screen runs/teacher --texts to-label.txt   STRIP: is a teacher backdoored? (exit 1: yes)
  fedfm certs certs/                         test CA + server certificate for TLS
  fedfm serve configs/network.toml           serve an experiment to network clients
  fedfm dashboard runs/agnews-lora --port 8765   a live page of a run at http://127.0.0.1:8765/
  fedfm join 127.0.0.1:8443 --ca certs/ca.pem --client-id c1 --token T --data my.csv
"""


def add_overrides(
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedfm",
        description="Federated learning with foundation models: federated fine-tuning of an FM "
        "(LoRA, prompt tuning, adapters) in simulation, with byte-accurate accounting.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=f"fedfm {version()}")
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
    add_overrides(run)
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
    add_overrides(cfg)

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
    add_overrides(bench, "override a config key for every system, e.g. --set runtime.threads=1")
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
    add_overrides(srv)
    srv.add_argument("--quiet", action="store_true", help="no live progress display")
    srv.add_argument(
        "--dashboard",
        type=int,
        metavar="PORT",
        help="also serve a live dashboard of this run at http://127.0.0.1:PORT/",
    )
    srv.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the dashboard's interface (default: 127.0.0.1; elsewhere it requires a token)",
    )
    srv.add_argument(
        "--dashboard-token",
        metavar="TOKEN",
        help="the dashboard's token (default: none on loopback, else a new one, printed)",
    )

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
        "--signing-key",
        metavar="PEM",
        help="this client's Ed25519 key (PEM) that signs its uploads; the server pins the first "
        "one a client joins with (default: ~/.config/fedfm/keys/client-ID.ed25519, made on "
        "first use)",
    )
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
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module of your own plug-ins first (repeatable): the server's "
        "[plugins] are never imported on a client",
    )
    policy = join.add_argument_group(
        "privacy policy",
        "this client's own terms, whatever the server's experiment says (docs/security.md)",
    )
    policy.add_argument(
        "--require-secagg",
        action="store_true",
        help="never send an update in the clear: refuse an experiment without secure aggregation",
    )
    policy.add_argument(
        "--min-threshold",
        type=int,
        default=0,
        metavar="K",
        help="refuse a secure round whose threshold is below K (default 0: any)",
    )
    policy.add_argument(
        "--trusted-keys",
        metavar="FILE",
        help="the clients whose signed keys this client accepts in a secure round: one "
        "'<client id> <hex Ed25519 public key>' a line (each client logs its own at join); "
        "default: trust the server's roster on first use (docs/security.md)",
    )
    policy.add_argument(
        "--max-epsilon",
        type=float,
        default=0.0,
        metavar="E",
        help="stop taking part before this client's own account (no sampling amplification) "
        "passes ε = E; needs privacy.dp = 'distributed' (default 0: no budget)",
    )
    policy.add_argument(
        "--reproducible-noise",
        action="store_true",
        help="draw DP noise from the experiment's seed, as the simulation does (for comparing a "
        "network run with a simulated one: the server can recompute and remove this noise)",
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
    certs.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA in DIR (every certificate it signed stops working)",
    )

    gen = sub.add_parser(
        "generate",
        help="write text with the model of a causal_lm or lm run",
        description="A task.type = 'causal_lm' run answers the prompt greedily through the chat "
        "template (its base model with the exported peft adapter); a task.type = 'lm' run "
        "continues the prompt (empty: a new document), sampled at --temperature.",
    )
    gen.add_argument("run_dir", help="a causal_lm or lm run directory written by `fedfm run`")
    gen.add_argument(
        "--prompt", default="", help="the user message (causal_lm) or the text to continue (lm)"
    )
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        metavar="N",
        help="at most N generated tokens (default: 64)",
    )
    gen.add_argument(
        "--temperature",
        type=float,
        default=None,
        metavar="T",
        help="lm runs: sampling temperature (default 0.8, top-p 0.95; 0 = greedy)",
    )
    gen.add_argument("--seed", type=int, default=0, help="lm runs: the sampling seed (default 0)")

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
    add_overrides(syn)
    syn.add_argument("--out", default="synthetic", help="output folder (default: synthetic)")

    pred = sub.add_parser(
        "predict",
        help="label texts with a finished classification run's model",
        description="Load a run's exported classifier and print one label per line for each "
        "text (--text, repeatable) or each line of a file (--file; '-' reads standard input).",
    )
    pred.add_argument("run_dir", help="a finished classification run directory")
    pred.add_argument("--text", action="append", default=[], help="a text to label (repeatable)")
    pred.add_argument("--file", help="a UTF-8 text file: one text per line")

    exp = sub.add_parser(
        "export",
        help="write a finished run's model as one transformers folder, the adapter merged",
        description="Merge the run's adapter into the base model's weights and write a "
        "standard transformers folder to OUT: for classification, load it with "
        "pipeline('text-classification', model=OUT, trust_remote_code=True) (the mean-pooling "
        "head ships as modeling code in OUT); for causal_lm, pipeline('text-generation', "
        "model=OUT).",
    )
    exp.add_argument("run_dir", help="a finished run directory")
    exp.add_argument("--merged", required=True, metavar="OUT", help="a new output folder")

    dash = sub.add_parser(
        "dashboard",
        help="serve a live web page of a run directory (rounds, curves, bytes, ε, clients)",
        description="Serve a small read-only web page of a run directory, finished or still "
        "running: rounds, accuracy and loss curves, bytes sent, ε under differential privacy "
        "and, for a served run, late and rejected clients. The round data are at /api/metrics "
        "(JSON). Bound to 127.0.0.1; bound elsewhere (--host) every request needs the token.",
    )
    dash.add_argument("run_dir", help="a run directory (written by `fedfm run` or `fedfm serve`)")
    dash.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port (default: {DEFAULT_PORT}; 0 = any free port)",
    )
    dash.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: 127.0.0.1; any other requires a token)",
    )
    dash.add_argument(
        "--token", help="the token requests must carry (default: none on loopback, else a new one)"
    )

    rep = sub.add_parser(
        "report",
        help="rebuild report.html of a run directory",
        description="Rebuild report.html (and plots/) from a run directory's metrics.jsonl and summary.json.",
    )
    rep.add_argument("run_dir", help="a run directory written by `fedfm run`")
    governance.add_parsers(sub)
    trust.add_parsers(sub)
    for command in sub.choices.values():  # `fedfm run --debug` as well as `fedfm --debug run`
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def version() -> str:
    try:
        return metadata.version("fedfm")
    except metadata.PackageNotFoundError:
        return "unknown"
