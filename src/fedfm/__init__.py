"""fedfm: federated learning with foundation models.

The public API::

    import fedfm
    result = fedfm.run()                                  # the built-in default experiment
    result = fedfm.run("configs/sst2_prompt.toml")      # any TOML config
    cfg = fedfm.load_config(None, ["federation.rounds=3"])
    result = fedfm.run(cfg, out="runs")
    result.final_accuracy, result.summary, result.metrics, result.run_dir
    fedfm.predict(result.run_dir, ["Stocks rallied on Friday."])   # one label per text
"""

import os as _os

# oneDNN (used by PyTorch's bf16 CPU matmuls) caches a primitive per tensor shape, each with
# its scratch memory; a bounded cache keeps memory flat over rounds (measured: −420 MB peak on
# the default run). Read when oneDNN first runs; a value set by the user wins.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

from fedfm import governance  # noqa: F401, I001 (registers its round observers)
from fedfm.config import ExperimentConfig, load_config  # noqa: E402
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
from fedfm.predict import predict

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
    "predict",
    "run",
]
