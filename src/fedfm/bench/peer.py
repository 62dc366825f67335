"""Child-process entry of ``fedfm bench``: ``python -m fedfm.bench.peer SYSTEM CONFIG OUT``.

Runs one system on one resolved experiment config and writes its Recorder JSON to OUT. The
parent process measures this process tree's memory from outside.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from fedfm.bench.recorder import Recorder
from fedfm.config import load_config

# system name -> module under fedfm.bench.peers with a `run(config, recorder)` function
PEERS = {"fedfm": "fedfm_peer", "plain": "plain", "flower": "flower"}


def main(argv: list[str]) -> int:
    system, config_path, out = argv

    config = load_config(config_path)
    module = importlib.import_module(f"fedfm.bench.peers.{PEERS[system]}")
    recorder = Recorder(system, Path(out))
    module.run(config, recorder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
