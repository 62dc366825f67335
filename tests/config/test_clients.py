"""``[continual]`` (in ``config/clients.py``): a config the run cannot honour is one line, exit 2,
before anything is written."""

from __future__ import annotations

import pytest

from fedfm.cli import main

STAGES = 'continual.stages=[["World", "Sports"], ["Business", "Sci/Tech"]]'
GOOD = [STAGES, "continual.rounds_per_stage=2", "federation.rounds=4"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [STAGES, "continual.rounds_per_stage=2", "federation.rounds=3"],
            "federation.rounds = 3 is not allowed; allowed: 4 (len(continual.stages) × ",
        ),
        ([*GOOD, "continual.mitigation=lwf"], "lwf and ewc are not built yet"),
        ([*GOOD, "continual.mitigation=ewc"], "lwf and ewc are not built yet"),
        ([*GOOD, "continual.rounds_per_stage=0"], "continual.rounds_per_stage = 0"),
        (
            ['continual.stages=[["World", "Sports"]]', "federation.rounds=1"],
            "≥ 2 non-empty lists of label names or indices",
        ),
        (
            ['continual.stages=[["World", "Weather"], ["Business"]]', "federation.rounds=2"],
            "continual.stages[0] = 'Weather' is not allowed; allowed: a label of the data set",
        ),
        (
            ['continual.stages=[["World", "Sports"], ["Sports"]]', "federation.rounds=2"],
            "continual.stages[1] = 'Sports' is not allowed; allowed: labels in one stage only",
        ),
        (
            ["continual.stages=[[3], [9]]", "federation.rounds=2"],
            "continual.stages[1] = 9 is not allowed",
        ),
        (
            # a label no evaluation row carries: its stage could not be scored
            [*GOOD, "data.eval_rows=1"],
            "no test row has this one",
        ),
        ([*GOOD, "runtime.type=ray"], "runtime.type = 'ray' does not carry [continual] stages"),
        ([*GOOD, "runtime.type=grpc"], "runtime.type = 'grpc' does not carry [continual] stages"),
        ([*GOOD, "strategy.name=fedbuff"], "[continual] stages need a synchronous strategy"),
        (
            [*GOOD, "evaluation.where=clients", "evaluation.client_split=0.2"],
            "evaluation.where = 'clients' is not allowed",
        ),
        ([*GOOD, "federation.mode=standalone"], "federation.mode = 'standalone' is not allowed"),
    ],
)
def test_a_continual_config_the_run_cannot_honour_is_one_line_and_exit_2(
    capsys, tmp_path, overrides, message
):
    argv = ["run", "--quiet", "--out", str(tmp_path), "--set", "data.train_rows=400"]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedfm: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_fedfm_serve_refuses_continual_stages_in_one_line(capsys):
    argv = ["serve"]
    for item in GOOD:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedfm: error: ") and err.count("\n") == 1
    assert "[continual] stages are not built for the network runtime yet" in err
