"""The checks a config value passes, and the plug-in registries that name the allowed values."""

from __future__ import annotations

import typing
from typing import Any

from fedfm.errors import ConfigError
from fedfm.registry import REGISTRIES, Registry


def check(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError ``key = value is not allowed; allowed: …`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{key} = {value!r} is not allowed; allowed: {allowed}")


def check_choice(key: str, value: Any, choices: typing.Iterable[str]) -> None:
    """Raise a ConfigError listing ``choices`` unless ``value`` is one of them."""
    choices = list(choices)
    check(value in choices, key, value, " | ".join(repr(c) for c in choices))


def registry(kind: str) -> Registry[Any]:
    """The registry of one kind of plug-in (``"method"``, ``"strategy"``, ``"codec"``, ...).

    The config reads it from :data:`fedfm.registry.REGISTRIES` rather than importing the plug-in
    package, which imports the config. ``import fedfm`` imports every plug-in package.
    """
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise RuntimeError(
            f"no {kind} registry is loaded: the package that registers the {kind} plug-ins was "
            f"never imported (import fedfm first; it imports them all). Loaded: "
            f"{', '.join(sorted(REGISTRIES)) or 'none'}"
        ) from None
