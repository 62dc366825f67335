"""``fedfm run`` with ``federation.mode = "offsite"``: bad settings stop with one line and exit
code 2; a tiny run tunes the emulator's ends and the server's plug-in model learns."""

from __future__ import annotations

import json

import pytest

from fedfm.assemble import prepare
from fedfm.cli import main
from fedfm.compat import check_network
from fedfm.config import load_config
from fedfm.errors import ConfigError
from tests.conftest import TINY

OFFSITE = ["federation.mode=offsite", "method.type=full", "offsite.keep_layers=1"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["offsite.keep_layers=0"], "offsite.keep_layers = 0 is not allowed; allowed: ≥ 1"),
        (["offsite.drop_every=1"], "offsite.drop_every = 1 is not allowed; allowed: ≥ 2"),
        (
            ["offsite.keep_layers=3"],  # minilm has 6 layers: no middle is left
            "offsite.keep_layers = 3 is not allowed; allowed: 1 … 2",
        ),
        (
            ["model.layers=5", "offsite.keep_layers=2"],  # a middle of one layer: nothing dropped
            "offsite.drop_every = 2 is not allowed with offsite.keep_layers = 2",
        ),
        (
            ["method.type=head"],
            "method.type = 'head' is not allowed with federation.mode = 'offsite'; "
            "allowed: full | lora",
        ),
        (["method.type=prompt"], "method.type = 'prompt' is not allowed"),
        (["personalize.method=local_head"], "'none' unless federation.mode = 'federated'"),
    ],
)
def test_bad_offsite_settings_are_one_line_and_exit_2(capsys, tmp_path, overrides, message):
    argv = ["run", "--quiet", "--out", str(tmp_path)]
    for item in ["federation.mode=offsite", "method.type=full", *overrides]:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedfm: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_offsite_is_refused_over_the_network(tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("c0 secret\n")
    config = load_config(
        None, [*OFFSITE, "runtime.type=grpc", f"server.tokens_file={str(tokens)!r}"]
    )
    with pytest.raises(ConfigError, match="only 'federated' runs over the network .fedfm join"):
        check_network(config)


def test_offsite_run_tunes_the_ends_and_the_plug_in_model_learns(tmp_path):
    overrides = [
        *TINY,
        *OFFSITE,
        "federation.rounds=3",
        "federation.local_steps=10",
        "federation.lr=1e-4",
        "runtime.threads=1",
    ]
    p = prepare(load_config(None, overrides))
    untuned = p.task.evaluate(p.test_tokens, p.test.labels)["accuracy"]  # random head: ~chance

    argv = ["run", "--quiet", "--out", str(tmp_path)]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert summary["mode"] == "offsite"
    assert summary["final_accuracy"] > untuned + 0.2  # the plug-in model learnt the task
    assert 0 < summary["final_emulator_accuracy"] <= 1
    assert all(r["accuracy"] is not None and r["emulator_accuracy"] is not None for r in rows)
    o = summary["offsite"]
    assert o["emulator_layers"] == [0, 1, 3, 5] and o["withheld_params"] > 0
    assert o["emulator_bytes_shipped"] == o["emulator_bytes"] * summary["clients"]
    # only the two end layers and the head travel each round
    assert summary["trainable_params"] == 2 * 1_774_464 + 4 * 384 + 4
    assert (run_dir / "model" / "config.json").is_file()  # the full model, tuned ends plugged in
