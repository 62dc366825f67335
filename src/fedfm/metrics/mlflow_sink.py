"""``report_to = ["mlflow"]``: an MLflow run with the config, the per-round metrics and the summary.

Written with MLflow's own client (``mlflow-skinny`` is enough) to ``$MLFLOW_TRACKING_URI`` when
set (a tracking server, ``sqlite:///…``), else to a file store in ``<run_dir>/mlruns``
(``mlflow ui --backend-store-uri runs/NAME/mlruns`` shows it). MLflow keeps its file store in
maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set; the sink sets it for
its own store (a value you set wins).

The run is named after the run directory, in the experiment ``config.name`` (or
``$MLFLOW_EXPERIMENT_NAME``); every config key is a param (``federation.rounds``, ...), every
number of a round's row a metric at ``step = round``, the summary's numbers metrics too and
``summary.json`` an artifact. A resumed run directory continues its MLflow run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fedfm.config import ExperimentConfig, config_to_dict
from fedfm.config.toml import toml_value
from fedfm.metrics.sinks import SINKS, Sink, scalars

_RUN_DIR_TAG = "fedfm.run_dir"


def _param(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, the rest as TOML."""
    return value if isinstance(value, str) else toml_value(value)


def flat_params(config: ExperimentConfig) -> dict[str, str]:
    """``{"section.key": "value"}`` for every key of the config, as MLflow params."""
    params: dict[str, str] = {}
    for key, value in config_to_dict(config).items():
        if isinstance(value, dict):
            params.update({f"{key}.{k}": _param(v) for k, v in value.items()})
        else:
            params[key] = _param(value)
    return params


@SINKS.register("mlflow")
class MlflowSink(Sink):
    """Each round's figures as MLflow metrics at ``step = round``; the config as params."""

    requires = ("mlflow",)
    install = "'fedfm[mlflow]' (or mlflow-skinny)"

    def __init__(self, run_dir: Path, config: ExperimentConfig) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        self.config = config
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or config.name
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        run_tag = str(run_dir.resolve())
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{_RUN_DIR_TAG}` = '{run_tag}'", max_results=1
        )
        if found:  # a resumed run directory: the same MLflow run goes on
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                experiment_id, run_name=run_dir.name, tags={_RUN_DIR_TAG: run_tag}
            )
            self.run_id = run.info.run_id
            self._log_params(flat_params(config))
        self.ended = False

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]  # MLflow's value limit
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def round(self, row: dict[str, Any]) -> None:
        values = {k: v for k, v in scalars(row).items() if k != "round"}
        self._log_metrics(values, row["round"])

    def end(self, summary: dict[str, Any]) -> None:
        step = summary.get("rounds", 0)
        self._log_metrics({f"summary/{k}": v for k, v in scalars(summary).items()}, step)
        self.client.log_dict(
            self.run_id, json.loads(json.dumps(summary, default=str)), "summary.json"
        )
        self.client.set_terminated(self.run_id, "FINISHED")
        self.ended = True

    def close(self) -> None:
        if not self.ended:  # failed or interrupted; `fedfm run --resume` continues the run
            self.client.set_terminated(self.run_id, "KILLED")
            self.ended = True
