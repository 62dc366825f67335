"""Plug-ins from the user's own code: strategies, codecs, methods, tasks, partitioners, ...

A plug-in is a class (or function) registered in one of fedfm's registries, e.g.::

    # my_strategies.py
    from fedfm.strategies import STRATEGIES, Strategy

    @STRATEGIES.register("trimmed_fedavg")
    class TrimmedFedAvg(Strategy):
        Spec = TrimmedFedAvgSpec
        def aggregate(self, round, global_state, updates): ...

Two ways make it usable without editing fedfm:

* ``[plugins] modules = ["my_strategies"]`` in the experiment config: the modules are imported
  before the rest of the config is read (from the config file's folder, the current folder, or
  anywhere on ``sys.path``);
* a Python entry point in the ``fedfm.plugins`` group of an installed package
  (``[project.entry-points."fedfm.plugins"] mine = "my_package.plugins"``): imported the first
  time a config is read.

A module that does not import, or that registers a name that exists, is a
:class:`~fedfm.errors.ConfigError` that names the module.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from fedfm.errors import ConfigError, FedFMError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fedfm.plugins"

_entry_points_loaded = False


def _import(module: str, what: str, search: Sequence[Path]) -> None:
    added = [str(p) for p in search if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        importlib.import_module(module)
    except FedFMError as e:  # e.g. a name registered twice: say which module did it
        raise ConfigError(f"{what} {module!r}: {e}") from None
    except Exception as e:  # the user's module failed to import: one line, naming it
        raise ConfigError(f"{what} {module!r} does not import: {type(e).__name__}: {e}") from None
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def load_entry_points() -> None:
    """Import every module named in the ``fedfm.plugins`` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        log.debug("plug-in entry point %s = %s", entry.name, entry.value)
        _import(entry.value.split(":")[0], f"plug-in entry point {entry.name!r}:", ())


def load_modules(modules: Sequence[str], folders: Sequence[Path] = ()) -> None:
    """Import ``[plugins] modules``, searching ``folders`` (``[plugins] paths`` and the config
    file's folder) and the current folder before ``sys.path``."""
    search = [*folders, Path.cwd()]
    for module in modules:
        if not isinstance(module, str) or not module.strip():
            raise ConfigError(f"plugins.modules item {module!r} is not a module name")
        _import(module.strip(), "plugins.modules:", search)
