"""The ``fedfm`` command line: ``fedfm run | config | report | predict | export | generate |
synthesize | bench | serve | join | certs | dashboard | contrib | unlearn | verify | audit |
screen``.

Errors of the FedFMError hierarchy print one line and exit with code 2; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading

from fedfm.cli import commands, governance, trust
from fedfm.cli.parser import build_parser
from fedfm.errors import FedFMError

COMMANDS = {
    "run": commands.cmd_run,
    "config": commands.cmd_config,
    "report": commands.cmd_report,
    "predict": commands.cmd_predict,
    "export": commands.cmd_export,
    "generate": commands.cmd_generate,
    "synthesize": commands.cmd_synthesize,
    "bench": commands.cmd_bench,
    "serve": commands.cmd_serve,
    "join": commands.cmd_join,
    "certs": commands.cmd_certs,
    "dashboard": commands.cmd_dashboard,
    **governance.COMMANDS,
    **trust.COMMANDS,
}


def _interruptible():
    """Make SIGINT raise KeyboardInterrupt, whatever this process inherited.

    Python turns SIGINT into KeyboardInterrupt only when the parent left it at its default: a
    process started in the background by a non-interactive shell (``fedfm run ... &`` in a
    script, CI runners, some job launchers) inherits SIGINT *ignored*, and Ctrl-C or
    ``kill -INT`` then did nothing while the run went on to its last round. A run is safe to
    interrupt (it resumes from its last checkpoint), so SIGINT always stops it. Returns the
    handler it replaced (None: none replaced).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    previous = _interruptible()
    try:
        return _main(argv)
    finally:  # a caller in the same process (tests, scripts) gets its own handler back
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
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
    except KeyboardInterrupt as e:
        run_dir = getattr(e, "run_dir", None)
        if run_dir is None:
            print("fedfm: interrupted", file=sys.stderr)
        else:
            command = "serve" if args.command == "serve" else "run"
            print(
                f"fedfm: interrupted; run directory {run_dir}; continue with "
                f"`fedfm {command} --resume {shlex.quote(str(run_dir))}`",
                file=sys.stderr,
            )
        return 130


if __name__ == "__main__":
    sys.exit(main())
