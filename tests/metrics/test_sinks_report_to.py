"""``[logging] report_to``: a real tiny run writes TensorBoard event files and an MLflow store
that their own readers read back with metrics.jsonl's figures; the custom sink of
docs/logging.md, as a plug-in module, gets the same rows; a bad name or a missing library is
one line and exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import fedfm
from fedfm.cli import main
from fedfm.errors import ConfigError
from fedfm.metrics.sinks import SINKS, Sink

ROOT = Path(__file__).resolve().parents[2]


def _docs_example() -> str:
    """The worked example of docs/logging.md ("A sink of your own"), as a user's module."""
    text = (ROOT / "docs" / "logging.md").read_text()
    section = text.split("## A sink of your own", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


@pytest.fixture(scope="module")
def reported_run(tiny_config_module, tmp_path_factory):
    """A tiny federated run (2 rounds) reporting to TensorBoard, MLflow and a custom sink."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    plugin_dir = tmp_path_factory.mktemp("plugins")
    (plugin_dir / "csv_rounds_sink.py").write_text(_docs_example())
    config = tiny_config_module(
        'logging.report_to=["tensorboard", "mlflow", "csv_rounds"]',
        'plugins.modules=["csv_rounds_sink"]',
        f'plugins.paths=["{plugin_dir}"]',
    )
    result = fedfm.run(config, out=tmp_path_factory.mktemp("runs"))
    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rows] == [1, 2]
    return result, rows


def test_tensorboard_events_hold_the_rounds_of_metrics_jsonl(reported_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, rows = reported_run
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    accuracy = events.Scalars("accuracy")
    assert [e.step for e in accuracy] == [1, 2]
    # TensorBoard stores float32
    assert [e.value for e in accuracy] == pytest.approx([r["accuracy"] for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("bytes_up")] == pytest.approx(
        [r["bytes_up"] for r in rows], rel=1e-6
    )
    final = events.Scalars("summary/final_accuracy")
    assert [e.value for e in final] == pytest.approx([result.final_accuracy], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]  # the config as text


def test_mlflow_store_holds_params_rounds_and_summary(reported_run):
    from mlflow.tracking import MlflowClient

    result, rows = reported_run
    client = MlflowClient(tracking_uri=(result.run_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("agnews-lora")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    assert run.data.params["federation.rounds"] == "2"
    assert run.data.params["logging.report_to"] == '["tensorboard", "mlflow", "csv_rounds"]'
    assert run.data.params["name"] == "agnews-lora" and run.data.params["codec.up"] == "[]"
    assert run.data.params["federation.lr"] == "0.002"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [r["accuracy"] for r in rows]
    assert run.data.metrics["summary/final_accuracy"] == result.final_accuracy
    summary = json.loads((result.run_dir / "summary.json").read_text())
    artifact = client.download_artifacts(run.info.run_id, "summary.json")
    assert json.loads(Path(artifact).read_text())["final_accuracy"] == summary["final_accuracy"]


def test_a_custom_sink_from_a_plugin_module_gets_every_round(reported_run):
    result, rows = reported_run
    lines = (result.run_dir / "rounds.csv").read_text().splitlines()
    assert lines == [f"{r['round']},{r['accuracy']},{r['loss']}" for r in rows]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["tensorbord"]', "logging.report_to = 'tensorbord' is not a known sink (did you mean "),
        ('["wandb"]', "allowed: "),
        ('["mlflow", "mlflow"]', "each sink once"),
    ],
)
def test_a_bad_report_to_is_one_line_and_exit_2(capsys, tmp_path, value, message):
    argv = ["run", "--out", str(tmp_path), "--set", f"logging.report_to={value}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "mlflow" in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_sink_whose_library_is_missing_says_what_to_install(tiny_config, tmp_path):
    @SINKS.register("needs_missing_library")
    class NeedsMissing(Sink):
        requires = ("fedfm_no_such_module",)
        install = "fedfm-no-such-package"

        def __init__(self, run_dir, config):
            raise AssertionError("never built: the requirement is checked first")

    config = tiny_config('logging.report_to=["needs_missing_library"]')
    with pytest.raises(ConfigError) as e:
        fedfm.run(config, out=tmp_path)
    assert str(e.value) == (
        "logging.report_to = 'needs_missing_library' needs the fedfm_no_such_module package, "
        "which is not installed; pip install fedfm-no-such-package"
    )
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_standalone_run_reports_its_mean_and_worst_client(tiny_config, tmp_path):
    """``federation.mode = "standalone"`` writes its rows after the clients train alone: the
    report_to sinks get those rows (the mean and the worst client) and the summary too."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(
        "federation.mode=standalone",
        "federation.rounds=1",
        "partition.clients=2",  # two clients alone, a small test set: seconds
        "federation.clients_per_round=1",
        "data.test_rows=100",
        "data.eval_rows=50",
        'logging.report_to=["tensorboard"]',
    )
    result = fedfm.run(config, out=tmp_path)
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    (row,) = result.metrics
    for key in ("accuracy", "accuracy_worst", "loss"):
        (event,) = events.Scalars(key)
        assert event.step == 1 and event.value == pytest.approx(row[key], rel=1e-6), key
    (final,) = events.Scalars("summary/final_accuracy_worst")
    assert final.value == pytest.approx(result.summary["final_accuracy_worst"], rel=1e-6)


def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_curves(tiny_config, tmp_path):
    """Interrupted in round 2, the MLflow run is KILLED; resumed, the same MLflow run finishes
    and both stores hold each round once, with metrics.jsonl's figures."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tests.tasks.test_causal_lm import _Interrupt

    config = tiny_config(
        'logging.report_to=["tensorboard", "mlflow"]',
        "data.test_rows=100",  # what is tested is the stores, not learning: a small test set
        "data.eval_rows=50",
        "federation.local_steps=2",
    )
    with pytest.raises(KeyboardInterrupt):
        fedfm.run(config, out=tmp_path, sinks=[_Interrupt(in_round=2)])
    run_dir = tmp_path / config.name
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == config.name]
    (interrupted,) = client.search_runs([experiment.experiment_id])
    assert interrupted.info.status == "KILLED"

    result = fedfm.run(resume=run_dir)
    rows = result.metrics
    assert [r["round"] for r in rows] == [1, 2]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == interrupted.info.run_id and run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "accuracy"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(r["round"], r["accuracy"]) for r in rows]

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    accuracy = events.Scalars("accuracy")
    assert [e.step for e in accuracy] == [1, 2]
    assert [e.value for e in accuracy] == pytest.approx([r["accuracy"] for r in rows], rel=1e-6)
