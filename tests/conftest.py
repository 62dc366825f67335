"""Shared fixtures: the real data under ../shared/data and a small, fast experiment config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDFM_DATA", ROOT.parent / "shared" / "data")).resolve()
os.environ["FEDFM_DATA"] = str(DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A small slice of AG News: fast on 2 cores, yet real text and labels.
TINY = [
    "data.train_rows=800",
    "data.test_rows=400",
    "data.eval_rows=200",
    "data.max_length=48",
    "partition.clients=4",
    "federation.clients_per_round=2",
    "federation.rounds=2",
    "federation.local_steps=5",
    "federation.batch_size=16",
]


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Token caches go to a temporary folder, not the user's ~/.cache."""
    os.environ["FEDFM_CACHE"] = str(tmp_path_factory.mktemp("fedfm-cache"))


@pytest.fixture(autouse=True, scope="session")
def _config_home(tmp_path_factory):
    """Signing keys (provenance is on by default) go to a temporary folder, not ~/.config."""
    os.environ["FEDFM_CONFIG_HOME"] = str(tmp_path_factory.mktemp("fedfm-config"))


@pytest.fixture
def tiny_config():
    """``tiny_config(*overrides)`` → an ExperimentConfig on a small AG News slice."""
    from fedfm.config import load_config

    def make(*overrides: str):
        return load_config(None, [*TINY, *overrides])

    return make


@pytest.fixture(scope="module")
def tiny_config_module():
    """Module-scoped ``tiny_config`` for fixtures that run an experiment once per module."""
    from fedfm.config import load_config

    def make(*overrides: str):
        return load_config(None, [*TINY, *overrides])

    return make


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished tiny run that learnt (3 rounds of 10 local steps: about 0.64 accuracy), shared
    by the tests of what a run directory is used for: copy it before changing it."""
    import fedfm
    from fedfm.config import load_config

    config = load_config(None, [*TINY, "federation.rounds=3", "federation.local_steps=10"])
    return fedfm.run(config, out=tmp_path_factory.mktemp("runs")).run_dir


# ---- a tiny generative LM with SmolLM2's tokenizer (causal-LM task, generative teachers) ----


def _gguf() -> Path:
    from fedfm.tasks import models

    return Path(models.resolve_model("smollm2"))


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer and chat template, read from the packaged GGUF file (metadata only)."""
    from transformers import AutoTokenizer

    gguf = _gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _save_tiny_lm(tokenizer, out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,  # tied, a random model repeats the prompt's last token ("\n")
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # special tokens never win: greedy answers of the random model are text
        model.get_output_embeddings().weight[:17] = 0  # <|endoftext|> … <empty_output>
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_lm(tokenizer, tmp_path_factory) -> Path:
    """A HF folder: a tiny random Llama with SmolLM2's tokenizer."""
    return _save_tiny_lm(tokenizer, tmp_path_factory.mktemp("tiny-lm"))
