"""The config reference is the schema's: every key of every section and plug-in spec, with its
default, the registries' names as allowed values and the fields' comments as meaning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

import fedfm  # noqa: F401  (registers the plug-ins)
from fedfm.config import ExperimentConfig, check, check_choice
from fedfm.config.experiment import SECTIONS
from fedfm.config.reference import reference_markdown, schema_keys, section_keys
from fedfm.registry import REGISTRIES


def _every_key() -> set[str]:
    """Every key a config file can set, walked from the dataclasses themselves."""
    keys = {f.name for f in dataclasses.fields(ExperimentConfig)} - {
        *SECTIONS,
        "method",
        "strategy",
    }
    for section, cls in SECTIONS.items():
        keys |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)}
    for section, kind, selector in (("method", "method", "type"), ("strategy", "strategy", "name")):
        keys.add(f"{section}.{selector}")
        for name in REGISTRIES[kind].names():
            spec = REGISTRIES[kind].get(name).Spec
            keys |= {f"{section}.{f.name}" for f in dataclasses.fields(spec)}
    return keys


def test_the_reference_names_every_key_of_the_schema():
    page = reference_markdown()
    rows = {line.split("`")[1] for line in page.splitlines() if line.startswith("| `")}
    assert rows == _every_key()
    for section in [*SECTIONS, "method", "strategy"]:
        assert f"## `[{section}]`" in page
    for kind in ("method", "strategy"):  # one table per registered plug-in
        selector = REGISTRIES[kind].field.split(".")[1]
        for name in REGISTRIES[kind].names():
            assert f'### `{selector} = "{name}"`' in page


def test_defaults_allowed_values_and_meanings_come_from_the_code():
    keys = {k.name: k for table in schema_keys().values() for k in table}
    default = ExperimentConfig()
    assert keys["federation.rounds"].default == str(default.federation.rounds)
    assert keys["codec.up"].default == "[]"
    assert keys["method.target_modules"].default == '["query", "value"]'
    # registries name the plug-ins a key accepts
    for name in REGISTRIES["sink"].names():
        assert repr(name) in keys["logging.report_to"].allowed
    for name in REGISTRIES["strategy"].names():
        assert repr(name) in keys["strategy.name"].allowed
    assert "'zlib'" in keys["codec.down"].allowed
    # check_choice lists and check's allowed text
    assert (
        keys["federation.mode"].allowed == "'federated' | 'centralized' | 'standalone' | 'offsite'"
    )
    assert keys["data.max_length"].allowed == "8 … 8192"
    # comments beside and above a field
    assert keys["federation.local_epochs"].meaning.startswith("> 0 replaces local_steps")
    assert keys["data.test"].meaning.startswith('"" = no test file')


@dataclass(frozen=True)
class _Section:
    """A section as a plug-in author would write one."""

    # how many widgets
    # (two comment lines above the field)
    widgets: int = 3
    shape: str = "round"  # the widgets' shape
    plain: float = 0.5

    def __post_init__(self) -> None:
        check(self.widgets >= 1, "toy.widgets", self.widgets, "≥ 1")
        check_choice("toy.shape", self.shape, ["round", "square"])


def test_a_new_section_documents_itself():
    widgets, shape, plain = section_keys(_Section, "toy")
    assert dataclasses.astuple(widgets) == (
        "toy.widgets",
        "int",
        "3",
        "≥ 1",
        "how many widgets (two comment lines above the field)",
    )
    assert (shape.default, shape.allowed, shape.meaning) == (
        '"round"',
        "'round' | 'square'",
        "the widgets' shape",
    )
    assert (plain.type, plain.default, plain.allowed, plain.meaning) == ("float", "0.5", "", "")


@pytest.mark.parametrize("section", ["federation", "logging"])
def test_a_section_table_has_its_docstring(section):
    page = reference_markdown()
    part = page.split(f"## `[{section}]`", 1)[1].split("\n## ", 1)[0]
    doc = " ".join((SECTIONS[section].__doc__ or "").split())
    assert doc.split(":")[0] in part


def test_every_key_says_what_it_means():
    """A key added without a comment (or a section docstring) fails here, not in the docs."""
    blank = [k.name for table in schema_keys().values() for k in table if not k.meaning]
    assert blank == []
    for section, cls in SECTIONS.items():
        assert (cls.__doc__ or "").strip() and not cls.__doc__.startswith(cls.__name__ + "("), (
            section
        )
