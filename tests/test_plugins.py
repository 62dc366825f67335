"""Plug-ins from the user's own code: ``[plugins] modules`` and ``fedfm.plugins`` entry points."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import fedfm
from fedfm import plugins
from fedfm.config import config_to_toml, load_config, parse_config_text
from fedfm.errors import ConfigError
from fedfm.state import Update
from fedfm.strategies import STRATEGIES
from tests.conftest import TINY

EXAMPLE = Path(__file__).parents[1] / "examples" / "plugins" / "geomedian.toml"


def test_a_strategy_from_the_users_folder_is_named_in_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the module is found next to the config, not in the cwd
    config = load_config(EXAMPLE, ["strategy.iterations=5"])
    assert config.strategy.plugin_name == "geomedian"
    assert config.strategy.iterations == 5
    # the resolved config (what a resumed run reads back) still finds the module
    assert parse_config_text(config_to_toml(config)) == config
    with pytest.raises(ConfigError, match=r"strategy\.iterations = 0"):
        load_config(EXAMPLE, ["strategy.iterations=0"])


def test_the_geometric_median_ignores_a_planted_outlier():
    load_config(EXAMPLE)
    rule = STRATEGIES.get("geomedian")(STRATEGIES.get("geomedian").Spec(), None)
    glob = {"w": torch.zeros(4)}
    honest = [torch.tensor([1.0, 1.0, 1.0, 1.0]) + 0.1 * k for k in range(-2, 2)]
    outlier = torch.full((4,), 1000.0)
    updates = [Update(f"c{i}", 1, {"w": s}, 10) for i, s in enumerate([*honest, outlier])]
    median = rule.aggregate(1, glob, updates)["w"]
    mean = torch.stack([u.state["w"] for u in updates]).mean(0)
    assert (median - torch.ones(4)).abs().max() < 0.3  # near the honest clients
    assert mean.min() > 190  # FedAvg is dragged 200× away
    assert STRATEGIES.get("geomedian").needs_individual_updates


def test_a_run_with_the_users_strategy(tmp_path):
    more = ["federation.clients_per_round=4", "federation.local_steps=10", "runtime.threads=1"]
    result = fedfm.run(load_config(EXAMPLE, [*TINY, *more]), out=tmp_path)
    assert result.summary["strategy"] == "geomedian"
    # 4 classes, chance 0.25; measured 0.705 → 0.775 over the two rounds
    assert result.metrics[-1]["accuracy"] > result.metrics[0]["accuracy"]
    assert result.final_accuracy > 0.6


def _module(folder: Path, name: str, body: str) -> str:
    (folder / f"{name}.py").write_text(body)
    return name


def test_a_module_that_does_not_import_is_named(tmp_path):
    name = _module(tmp_path, "broken_plugin_mod", "raise RuntimeError('half written')\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[plugins]\nmodules = ["{name}"]\n')
    with pytest.raises(ConfigError, match="plugins.modules: 'broken_plugin_mod' does not import"):
        load_config(config)
    with pytest.raises(ConfigError, match="'no_such_plugin_mod' does not import"):
        load_config(None, ['plugins.modules=["no_such_plugin_mod"]'])


def test_a_module_that_registers_a_taken_name_is_named(tmp_path):
    body = (
        "from fedfm.strategies import STRATEGIES\n"
        "from fedfm.strategies.fedavg import FedAvg\n"
        "STRATEGIES.register('fedavg')(type('Again', (FedAvg,), {}))\n"
    )
    name = _module(tmp_path, "taken_name_plugin_mod", body)
    config = tmp_path / "c.toml"
    config.write_text(f'[plugins]\nmodules = ["{name}"]\n')
    with pytest.raises(ConfigError, match="taken_name_plugin_mod.*'fedavg', which .*already"):
        load_config(config)


def test_an_installed_entry_point_registers_its_plugins(tmp_path, monkeypatch):
    body = (
        "from fedfm.codecs.base import CODECS\n"
        "from fedfm.codecs.basic import Float16\n"
        "CODECS.register('half_from_entry_point')(type('Half', (Float16,), {}))\n"
    )
    name = _module(tmp_path, "entry_point_plugin_mod", body)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = metadata.EntryPoint("mine", name, plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [entry])
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    config = load_config(None, ["codec.up=['half_from_entry_point']"])
    assert config.codec.up == ("half_from_entry_point",)
    assert name in sys.modules


def test_a_joining_client_never_imports_what_the_server_names(tmp_path):
    """The experiment a server sends is parsed without importing its [plugins]: a server must
    not choose code for a client to run (fedfm join --plugin MODULE is the client's choice)."""
    marker = tmp_path / "imported"
    _module(tmp_path, "server_chosen_plugin_mod", f"open({str(marker)!r}, 'w').close()\n")
    text = f'[plugins]\nmodules = ["server_chosen_plugin_mod"]\npaths = [{str(tmp_path)!r}]\n'
    config = parse_config_text(text, "the server's experiment config", import_plugins=False)
    assert config.plugins.modules == ("server_chosen_plugin_mod",)
    assert not marker.exists() and "server_chosen_plugin_mod" not in sys.modules
    parse_config_text(text)  # a config the user chose imports it
    assert marker.exists()
