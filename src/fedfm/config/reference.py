"""The config reference (``docs/config.md`` of the documentation site), read from the schema.

Every section and key with its type, default, allowed values and meaning comes from the code
itself, so the reference cannot drift from it: keys, types and defaults from the dataclasses;
allowed values from the registries that name plug-ins and from each section's own
:func:`~fedfm.config.check_choice` and :func:`~fedfm.config.check` calls; meaning from the
section's docstring and the comment beside (or just above) each field. ``[method]`` and
``[strategy]`` get one table per registered plug-in, from its ``Spec``.

Plug-ins must be registered first (``import fedfm`` registers fedfm's own).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Any

from fedfm.config.checks import registry
from fedfm.config.experiment import SECTIONS, ExperimentConfig
from fedfm.config.toml import toml_value
from fedfm.registry import REGISTRIES

__all__ = ["Key", "reference_markdown", "schema_keys", "section_keys"]


@dataclass(frozen=True)
class Key:
    """One config key as the reference shows it."""

    name: str  # "federation.rounds"
    type: str
    default: str  # as TOML
    allowed: str
    meaning: str


def _class_source(cls: type) -> tuple[ast.ClassDef, dict[int, str]] | None:
    """The class's syntax tree and its comments by line (1 = the ``class`` line)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return None
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    node = ast.parse(source).body[0]
    return (node, comments) if isinstance(node, ast.ClassDef) else None


def _field_comments(node: ast.ClassDef, comments: dict[int, str]) -> dict[str, str]:
    """``{field: comment}``: the comment lines just above a field and those on its lines."""
    out: dict[str, str] = {}
    previous_end = node.lineno
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            above = []
            line = stmt.lineno - 1
            while line > previous_end and line in comments:
                above.insert(0, comments[line])
                line -= 1
            beside = [comments[i] for i in range(stmt.lineno, stmt.end_lineno + 1) if i in comments]
            text = markdown_text(" ".join([*above, *beside]))
            if text:
                out[stmt.target.id] = text
        previous_end = stmt.end_lineno or stmt.lineno
    return out


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _checks(node: ast.ClassDef) -> dict[str, list[str]]:
    """``{"section.key": [allowed, ...]}`` from the ``check`` and ``check_choice`` calls of the
    class's ``__post_init__`` whose key and allowed values are literals."""
    out: dict[str, list[str]] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.FunctionDef) and stmt.name == "__post_init__"):
            continue
        for call in ast.walk(stmt):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
                continue
            args = call.args
            if call.func.id == "check" and len(args) == 4:
                key, allowed = _literal(args[1]), _literal(args[3])
            elif call.func.id == "check_choice" and len(args) == 3:
                key, choices = _literal(args[0]), _literal(args[2])
                allowed = " | ".join(repr(c) for c in choices) if choices else None
                if allowed is None:  # check_choice(key, value, registry("kind").names())
                    kind = _registry_kind(args[2])
                    allowed = _names(kind) if kind else None
            else:
                continue
            if isinstance(key, str) and isinstance(allowed, str):
                out.setdefault(key, []).append(allowed)
    return out


def _registry_kind(node: ast.AST) -> str | None:
    """``"kind"`` of a ``registry("kind").names()`` expression."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "registry"
    ):
        kind = _literal(node.func.value.args[0])
        return kind if isinstance(kind, str) else None
    return None


def _names(kind: str) -> str:
    return " | ".join(repr(n) for n in registry(kind).names())


def _registry_allowed() -> dict[str, str]:
    """``{"section.key": allowed}`` for the keys whose values name plug-ins."""
    out: dict[str, str] = {}
    for kind, reg in REGISTRIES.items():
        names = _names(kind)
        if reg.field == "codec":  # items of both chains: name or name:argument
            for key in ("codec.up", "codec.down"):
                out[key] = f"a list of items `name` or `name:argument`, name one of {names}"
        elif reg.field == "logging.report_to":
            out[reg.field] = f"a list of {names}"
        else:
            out[reg.field] = names
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    try:
        return toml_value(value)
    except TypeError:
        return repr(value)


def section_keys(cls: type, section: str, skip: tuple[str, ...] = ()) -> list[Key]:
    """The keys of one section's dataclass (``section`` = "" for the top level)."""
    comments: dict[str, str] = {}
    checks: dict[str, list[str]] = {}
    for base in reversed(cls.__mro__):  # a subclass's comment or check wins
        if not dataclasses.is_dataclass(base):
            continue
        parsed = _class_source(base)
        if parsed is not None:
            comments.update(_field_comments(*parsed))
            checks.update(_checks(parsed[0]))
    by_registry = _registry_allowed()
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        name = f"{section}.{f.name}" if section else f.name
        allowed = [by_registry[name]] if name in by_registry else []
        allowed += [a for a in checks.get(name, []) if a not in allowed]
        tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        keys.append(Key(name, tp, _default(f), "; ".join(allowed), comments.get(f.name, "")))
    return keys


_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr):`~?([^`]+)`")


def markdown_text(text: str) -> str:
    """reStructuredText of docstrings as Markdown on one line: ``:class:`~x.Y``` → ``x.Y``."""
    return " ".join(_ROLE.sub(r"`\1`", text).split())


def _doc(obj: Any) -> str:
    """An object's own docstring (not the signature dataclasses make up), on one line."""
    doc = inspect.getdoc(obj) or ""
    if not doc or doc.startswith(f"{getattr(obj, '__name__', '')}("):
        return ""
    return markdown_text(doc)


def _plugin_specs(kind: str) -> list[tuple[str, type, str]]:
    """``(name, Spec, what it is)`` of every registered plug-in of a kind."""
    reg = registry(kind)
    out = []
    for name in reg.names():
        plugin = reg.get(name)
        spec = plugin.Spec
        out.append((name, spec, _doc(spec) or _doc(plugin).split(". ")[0].rstrip(".")))
    return out


_SELECTORS = {  # the sections that are a plug-in's spec: the key that picks the plug-in
    "method": ("type", "which tensors of the model train and travel"),
    "strategy": ("name", "the server's rule: which clients, and how updates become the next model"),
}


def _selector(section: str) -> Key:
    """``method.type`` / ``strategy.name``: the key that picks the plug-in."""
    selector, meaning = _SELECTORS[section]
    chosen = getattr(ExperimentConfig(), section)
    default = toml_value(type(chosen).plugin_name)
    return Key(f"{section}.{selector}", "str", default, _names(section), meaning)


def schema_keys() -> dict[str, list[Key]]:
    """Every key of the schema by table: ``""`` (top level), each section, ``method`` and
    ``strategy`` (the key that picks the plug-in) and ``method.<type>`` / ``strategy.<name>``
    (each plug-in's own keys)."""
    out = {"": section_keys(ExperimentConfig, "", skip=(*SECTIONS, *_SELECTORS))}
    for section, cls in SECTIONS.items():
        out[section] = section_keys(cls, section)
    for section in _SELECTORS:
        out[section] = [_selector(section)]
        for name, spec, _ in _plugin_specs(section):
            out[f"{section}.{name}"] = section_keys(spec, section)
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(keys: list[Key]) -> list[str]:
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for k in keys:
        default = f"`{_cell(k.default)}`" if k.default else ""
        lines.append(
            f"| `{k.name}` | `{_cell(k.type)}` | {default} | {_cell(k.allowed)} | "
            f"{_cell(k.meaning)} |"
        )
    return lines


def reference_markdown() -> str:
    """The whole reference as one Markdown page."""
    keys = schema_keys()
    lines = [
        "# Config reference",
        "",
        "Generated from the config schema (`src/fedfm/config/` and the registered plug-ins) "
        "each time the site is built. Every key has a default, so an empty file is the default "
        "experiment; `fedfm config` prints them all as TOML, `--set section.key=value` changes "
        "one. Unknown keys, wrong types and values out of range stop with one line naming the "
        "key, the value and what is allowed.",
        "",
        "## Top level",
        "",
        *_table(keys[""]),
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"## `[{section}]`", "", _doc(cls), "", *_table(keys[section])]
    for section, (selector, _) in _SELECTORS.items():
        lines += [
            "",
            f"## `[{section}]`",
            "",
            f"`{section}.{selector}` picks the {section}; the other keys of `[{section}]` are "
            f"that {section}'s own, below.",
            "",
            *_table(keys[section]),
        ]
        for name, _, what in _plugin_specs(section):
            lines += ["", f'### `{selector} = "{name}"`', ""]
            if what:
                lines += [_cell(what), ""]
            own = keys[f"{section}.{name}"]
            lines += _table(own) if own else ["No keys of its own."]
    return "\n".join(lines) + "\n"
