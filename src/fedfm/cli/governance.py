"""``fedfm contrib | unlearn | verify``: the governance commands, reading a run directory.

Each command has an ``add_<name>(sub)`` that declares its arguments and a ``cmd_<name>(args)``
that runs it; :data:`COMMANDS` maps names to the latter for :mod:`fedfm.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def add_parsers(sub) -> None:
    """Declare every governance command on the ``fedfm`` sub-parsers."""
