"""GPT-FL synthetic data: a generative FM writes a labelled training set from label-conditioned
prompts, with no client data involved (Zhang et al., "GPT-FL", 2023).

For each label, ``synthetic.per_label`` samples are drawn from the chat model
(``synthetic.model``, default the packaged SmolLM2-135M-Instruct) with the prompt
``synthetic.prompt`` (``{label}`` and ``{description}`` filled in from ``data.descriptions``),
by nucleus sampling under a seed derived from the run's seed, the label and the batch. The set is
cached as JSONL under ``<cache>/synthetic/`` (generation takes minutes on a CPU); the same config
reads it back. ``synthetic.file`` names a set generated elsewhere instead (e.g. by a larger FM
behind an API). Verification before use is :mod:`fedfm.fm4fl.verify`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedfm.client.trainer import derive_seed
from fedfm.config import ExperimentConfig, resolve_path
from fedfm.data.tokens import cache_dir
from fedfm.errors import DataError
from fedfm.fm4fl.teacher import descriptions
from fedfm.fm4fl.verify import verify
from fedfm.tasks import models
from fedfm.tasks.models import model_stamp, resolve_model

log = logging.getLogger(__name__)

# Bump when generation changes in a way that makes cached sets stale.
GENERATOR_VERSION = 1


@dataclass
class SyntheticSet:
    texts: list[str]
    labels: list[int]  # indices into the run's label names
    path: Path  # the cached JSONL


def prompts(config: ExperimentConfig, label_names: Sequence[str]) -> list[str]:
    """The prompt of each label, in label order."""

    texts = descriptions(config, label_names)
    return [
        config.synthetic.prompt.format(label=label, description=text)
        for label, text in zip(label_names, texts, strict=True)
    ]


def _clean(reply: str) -> str:
    """One line of text: markdown marks, a leading 'Title:'-like tag and quotes removed."""
    text = re.sub(r"[#*_`]+", " ", reply)
    text = re.sub(r"^\s*(title|headline|article)\s*:\s*", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    return text.strip("\"' ")


def _key(config: ExperimentConfig, where: str, texts: list[str]) -> str:

    s = config.synthetic
    identity = {
        "version": GENERATOR_VERSION,
        "model": model_stamp(where),
        "prompts": texts,
        "per_label": s.per_label,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_new_tokens": s.max_new_tokens,
        "batch_size": s.batch_size,
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def generate(
    config: ExperimentConfig,
    label_names: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticSet:
    """The synthetic labelled set of ``config`` (generated once, then read from the cache)."""

    s = config.synthetic
    if s.file:
        path = resolve_path(s.file)
        if not path.is_file():
            raise DataError(f"synthetic.file = {s.file!r} does not exist")
        return read_set(path, label_names)
    where = resolve_model(s.model, "synthetic.model")
    label_prompts = prompts(config, label_names)
    path = cache_dir() / "synthetic" / f"{_key(config, where, label_prompts)}.jsonl"
    if path.is_file():
        return read_set(path, label_names)
    tokenizer, model = models.load_causal_lm(s.model, "bf16", key="synthetic.model")
    model.eval()
    tokenizer.padding_side = "left"
    rows: list[dict] = []
    total, done = s.per_label * len(label_names), 0
    log.warning(
        "generating %d synthetic samples with %s (once; cached in %s)", total, s.model, path
    )
    for index, (label, prompt) in enumerate(zip(label_names, label_prompts, strict=True)):
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        for batch_index, start in enumerate(range(0, s.per_label, s.batch_size)):
            n = min(s.batch_size, s.per_label - start)
            batch = tokenizer([chat] * n, return_tensors="pt", add_special_tokens=False)
            torch.manual_seed(derive_seed(config.seed, 0x5E7, index, batch_index))
            with torch.inference_mode():
                out = model.generate(
                    **batch,
                    do_sample=True,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    max_new_tokens=s.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )
            replies = tokenizer.batch_decode(
                out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )
            rows.extend({"text": _clean(r), "label": label} for r in replies)
            done += n
            if progress is not None:
                progress(done, total)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)
    return read_set(path, label_names)


def read_set(path: Path, label_names: Sequence[str]) -> SyntheticSet:
    """A synthetic JSONL set (``text`` and ``label`` per line); labels must be known ones."""
    texts, labels = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"synthetic set {str(path)!r} cannot be read as UTF-8 JSONL: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = row["text"], row["label"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{number}: not a JSON object with 'text' and 'label'") from None
        if label not in label_names:
            raise DataError(f"{path}:{number}: label {label!r} is not one of {list(label_names)}")
        texts.append(str(text))
        labels.append(list(label_names).index(label))
    return SyntheticSet(texts, labels, path)


def verified(
    config: ExperimentConfig,
    train,
    partition,
    progress: Callable[[int, int], None] | None = None,
    labelled=None,
):
    """``(SyntheticSet, Verified | None)``: the set of ``config``, checked against all the
    clients' rows (``partition`` of ``train``) by :func:`fedfm.fm4fl.verify.verify` unless
    ``synthetic.verify`` is off. ``labelled`` (per client, the rows whose label it knows; default
    all) gives the label histograms the set is balanced against."""
    import numpy as np

    s = config.synthetic
    generated = generate(config, train.label_names, progress)
    if not s.verify:
        return generated, None
    ids = partition.client_ids
    clients = {cid: [train.texts[i] for i in partition.indices[k]] for k, cid in enumerate(ids)}
    known = partition.indices if labelled is None else labelled
    histograms = {
        cid: np.bincount(train.labels[known[k]], minlength=len(train.label_names))
        for k, cid in enumerate(ids)
    }
    checked = verify(
        generated.texts,
        np.asarray(generated.labels, dtype=np.int64),
        prompts(config, train.label_names),
        clients,
        histograms,
        near_duplicate=s.near_duplicate,
        min_words=s.min_words,
        max_words=s.max_words,
        balance=s.balance,
    )
    return generated, checked
