"""Writing the resolved config as TOML, which :func:`~fedfm.config.load_config` reads back."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedfm.config.experiment import SECTIONS, ExperimentConfig
from fedfm.registry import spec_name


def toml_value(value: Any) -> str:
    """A value as TOML (bool, number, string, or a list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a plain dict of TOML tables, plug-in names included."""

    out: dict[str, Any] = {"name": config.name, "seed": config.seed}
    for section in SECTIONS:
        out[section] = dataclasses.asdict(getattr(config, section))
    out["method"] = {
        "type": spec_name(config.method),
        **dataclasses.asdict(config.method),
    }
    out["strategy"] = {
        "name": spec_name(config.strategy),
        **dataclasses.asdict(config.strategy),
    }
    return out


def config_to_toml(config: ExperimentConfig) -> str:
    """The resolved config as TOML text that :func:`load_config` reads back to an equal config."""
    data = config_to_dict(config)
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
