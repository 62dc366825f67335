"""``fedfm export RUN_DIR --merged OUT``: a run's model as one standard transformers folder, the
adapter merged into the weights, loadable by ``transformers.pipeline()``."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from fedfm.config import load_config
from fedfm.errors import ConfigError, ModelError
from fedfm.tasks import TASKS

__all__ = ["export_merged"]


def export_merged(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's model, adapter merged, to the new folder ``out``: a sequence classifier
    (``pipeline("text-classification", model=out, trust_remote_code=True)``) or, for a task that
    generates text (``causal_lm``, ``lm``), a causal LM (``pipeline("text-generation", model=out)``)."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "summary.json").is_file():
        raise ModelError(f"{str(run_dir)!r} is not a finished run directory (no summary.json)")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--merged {str(out)!r} exists and is not empty; name a new folder")
    config = load_config(run_dir / "config.toml")
    if config.method.plugin_name == "prompt":
        raise ConfigError(
            "method.type = 'prompt' cannot be merged into the weights (its virtual tokens are "
            "inputs, not weights); allowed: lora, adapter, head, full"
        )
    out.mkdir(parents=True, exist_ok=True)
    task = TASKS.get(config.task.type)
    try:
        if task.generates:  # causal_lm, lm: a causal LM
            _causal_lm(task, run_dir, config, out)
        else:
            _classifier(run_dir, out, config.data.max_length)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    card = run_dir / ("adapter" if (run_dir / "adapter").is_dir() else "model") / "README.md"
    if card.is_file():
        shutil.copyfile(card, out / "README.md")
    return out


def _merged(model):
    """The plain model under a peft wrapper, with the adapter folded into its weights."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.merge_and_unload()
    return model


def _classifier(run_dir: Path, out: Path, max_length: int) -> None:
    from fedfm.hf_classifier import FedFMClassifierConfig, FedFMForSequenceClassification
    from fedfm.tasks.classification import load_exported

    tokenizer, model, labels = load_exported(run_dir)
    encoder = _merged(model.encoder)
    hf_config = FedFMClassifierConfig(
        encoder=encoder.config.to_dict(),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    FedFMClassifierConfig.register_for_auto_class()
    FedFMForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    hf_model = FedFMForSequenceClassification(hf_config)
    hf_model.encoder.load_state_dict(encoder.state_dict())
    hf_model.head.load_state_dict(model.head.state_dict())
    hf_model.save_pretrained(str(out))
    tokenizer.model_max_length = max_length  # pipeline(..., truncation=True) cuts as training did
    tokenizer.save_pretrained(str(out))


def _causal_lm(task, run_dir: Path, config, out: Path) -> None:
    tokenizer, model = task.load_trained(run_dir, config)
    _merged(model).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
