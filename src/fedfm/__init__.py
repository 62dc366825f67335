"""fedfm: federated learning with foundation models.

The public API::

    import fedfm
    result = fedfm.run()                                  # the built-in default experiment
    result = fedfm.run("configs/agnews_prompt.toml")      # any TOML config
    cfg = fedfm.load_config(None, ["federation.rounds=3"])
    result = fedfm.run(cfg, out="runs")
    result.final_accuracy, result.summary, result.metrics, result.run_dir
"""

from fedfm.config import ExperimentConfig, load_config
from fedfm.errors import (
    ConfigError,
    DataError,
    FedFMError,
    ModelError,
    ProtocolError,
    ResumeError,
    TrainingError,
)
from fedfm.experiment import RunResult, run

__all__ = [
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "FedFMError",
    "ModelError",
    "ProtocolError",
    "ResumeError",
    "RunResult",
    "TrainingError",
    "load_config",
    "run",
]
