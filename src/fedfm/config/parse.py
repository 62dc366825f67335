"""Reading a config: TOML text or file, ``--set section.key=value`` overrides, and the checks of
each value's type before the sections check their ranges.

``[method]`` and ``[strategy]`` are parsed into the spec of the plug-in they name (``type``,
``name``), found in its registry.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from fedfm.config.checks import registry
from fedfm.config.experiment import SECTIONS, ExperimentConfig
from fedfm.config.sections import PluginsConfig
from fedfm.errors import ConfigError
from fedfm.plugins import load_entry_points, load_modules


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return "a list"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} = {value!r} has the wrong type; expected a list")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} has the wrong type")
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}")


def _did_you_mean(name: str, candidates: typing.Iterable[str], prefix: str = "") -> str:
    """`` (did you mean X?)`` for the closest candidate to a mistyped key, else ``""``."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def build_dataclass(
    cls: type, data: dict[str, Any], section: str, skip: tuple[str, ...] = ()
) -> Any:
    """Build the frozen dataclass ``cls`` from a TOML table, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip]
    unknown = sorted(set(data) - set(names) - set(skip))
    if unknown:
        allowed = ", ".join(names) or "(no keys)"
        raise ConfigError(
            f"unknown key {section}.{unknown[0]}{_did_you_mean(unknown[0], names, section + '.')}; "
            f"allowed keys in [{section}]: {allowed}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items() if k not in skip}
    return cls(**kwargs)


def _plugin_spec(kind: str, key: str, default: str, data: Any, section: str) -> Any:
    """The spec of the ``kind`` plug-in that ``data[key]`` names, built from the rest of ``data``."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    name = data.get(key, default)
    if not isinstance(name, str):
        raise ConfigError(f"{section}.{key} = {name!r} has the wrong type; expected a string")
    plugin = registry(kind).get(name)
    return build_dataclass(plugin.Spec, data, section, skip=(key,))


def config_from_dict(
    data: dict[str, Any], base: Path | None = None, import_plugins: bool = True
) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a parsed TOML document.

    The user's plug-in modules (``[plugins] modules``, searched in ``base`` first: the config
    file's folder) and the installed ``fedfm.plugins`` entry points are imported first, so
    that ``[method]``, ``[strategy]`` and the rest may name the plug-ins they register.
    ``import_plugins = False`` for a config from elsewhere (the experiment a server sends a
    joining client): its ``[plugins]`` are kept but nothing it names is imported, since a
    server must not choose code for a client to run; the client's own modules and installed
    entry points count.
    """
    load_entry_points()
    plugins = None
    if "plugins" in data:
        plugins = build_dataclass(PluginsConfig, data["plugins"], "plugins")
        if plugins.modules and base is not None:
            paths = tuple(dict.fromkeys([*plugins.paths, str(base)]))
            plugins = dataclasses.replace(plugins, paths=paths)
        if import_plugins:
            load_modules(plugins.modules, [Path(p) for p in plugins.paths])
    top_keys = {"name", "seed", *SECTIONS, "method", "strategy"}
    unknown = sorted(set(data) - top_keys)
    if unknown:
        raise ConfigError(
            f"unknown key or section {unknown[0]!r}{_did_you_mean(unknown[0], top_keys)}; "
            "allowed: name, seed, " + ", ".join(f"[{s}]" for s in [*SECTIONS, "method", "strategy"])
        )
    kwargs: dict[str, Any] = {}
    if "name" in data:
        kwargs["name"] = _coerce(data["name"], str, "name")
    if "seed" in data:
        kwargs["seed"] = _coerce(data["seed"], int, "seed")
    for section, cls in SECTIONS.items():
        if section in data:
            kwargs[section] = build_dataclass(cls, data[section], section)
    if "method" in data:
        kwargs["method"] = _plugin_spec("method", "type", "lora", data["method"], "method")
    if "strategy" in data:
        kwargs["strategy"] = _plugin_spec(
            "strategy", "name", "fedavg", data["strategy"], "strategy"
        )
    if plugins is not None:
        kwargs["plugins"] = plugins
    return ExperimentConfig(**kwargs)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse one ``--set section.key=value``; the value is read as TOML, else as a plain string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not of the form section.key=value")
    dotted, raw = item.split("=", 1)
    path = [p.strip() for p in dotted.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {item!r}: {dotted!r} is not a key such as federation.rounds")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a parsed TOML document (a new dict is returned)."""
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def parse_config_text(
    text: str, source: str = "config", import_plugins: bool = True
) -> ExperimentConfig:
    """Build a config from TOML text (e.g. the experiment a server sends to a joining client)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from None
    return config_from_dict(data, import_plugins=import_plugins)


def load_config(
    path: str | Path | None = None, overrides: typing.Sequence[str] = ()
) -> ExperimentConfig:
    """Load a TOML experiment config (``None`` = the built-in default) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    base = None if path is None else Path(path).resolve().parent
    return config_from_dict(apply_overrides(data, overrides), base)
