"""Predictions of a finished run's classifier: ``fedfm.predict(run_dir, texts)`` and
``fedfm predict RUN_DIR --text ...``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fedfm.config import load_config
from fedfm.errors import ConfigError, ModelError

__all__ = ["predict"]


def predict(run_dir: str | Path, texts: Sequence[str], batch_size: int = 32) -> list[str]:
    """The label the run's exported classifier gives each text, in order.

    Texts are tokenised as in training (truncated to the run's ``data.max_length`` tokens).
    """
    from fedfm.tasks.classification import load_exported

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ModelError(f"{str(run_dir)!r} is not a run directory: it has no config.toml")
    if not (run_dir / "summary.json").is_file():
        raise ModelError(
            f"{str(run_dir)!r} has not finished, so it has no exported model yet; "
            f"finish it with `fedfm run --resume {run_dir}`"
        )
    config = load_config(run_dir / "config.toml")
    if config.task.type != "classification":
        raise ConfigError(
            f"task.type = {config.task.type!r} of {str(run_dir)!r} has no labels to predict; "
            "allowed: 'classification' (use `fedfm generate` for a causal_lm run)"
        )
    tokenizer, model, labels = load_exported(run_dir)
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]),
                truncation=True,
                max_length=config.data.max_length,
                padding=True,
                return_tensors="pt",
            )
            out += [labels[i] for i in model(**batch).argmax(-1).tolist()]
    return out
