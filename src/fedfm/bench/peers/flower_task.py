"""The Flower peer's task code, as a Flower user writes it: the model (encoder + LoRA + a linear
head), the data of one node, and the train and test loops. Used by :mod:`.flower_apps`.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedfm.data.partition import partition
from fedfm.data.table import load_labelled_text


@dataclass(frozen=True)
class Setup:
    """What the ClientApp needs besides the message: shipped to the Ray actors (picklable)."""

    model_path: str
    train_path: str
    text_column: str
    label_column: str
    train_rows: int
    max_length: int
    partition: Any  # fedfm PartitionConfig
    seed: int
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...]
    label_names: tuple[str, ...]


class Classifier(nn.Module):
    """encoder → mean over real tokens → linear head (as the fedfm and plain peers)."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))


def get_model(setup: Setup, seed: int | None = None):
    """``(tokenizer, Classifier)``: the frozen encoder with LoRA on the target modules + head.

    ``seed`` seeds LoRA's A and the head right after the encoder is loaded (as fedfm does).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()  # as the Hugging Face example: no advisory warnings
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(setup.model_path)
    encoder = AutoModel.from_pretrained(setup.model_path)
    if seed is not None:
        torch.manual_seed(seed)
    lora = LoraConfig(
        r=setup.lora_r,
        lora_alpha=setup.lora_alpha,
        lora_dropout=setup.lora_dropout,
        target_modules=list(setup.target_modules),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = Classifier(
            get_peft_model(encoder, lora), encoder.config.hidden_size, len(setup.label_names)
        )
    return tokenizer, model


def trainable_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The tensors that train and travel: LoRA A/B and the head."""
    return OrderedDict((n, p.detach()) for n, p in model.named_parameters() if p.requires_grad)


def set_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load received arrays into the trainable tensors; every one must be there."""
    result = model.load_state_dict(state, strict=False)
    missing = set(trainable_state(model)) - set(state)
    if result.unexpected_keys or missing:
        raise ValueError(
            f"received arrays do not match the model: unexpected {result.unexpected_keys[:3]}, "
            f"missing {sorted(missing)[:3]}"
        )


def tokenized_dataset(tokenizer, texts: list[str], labels: np.ndarray, max_length: int) -> list:
    """Examples for a DataLoader with ``DataCollatorWithPadding`` (padding per batch)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": int(y)}
        for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)
    ]


_TRAIN_CACHE: dict[Setup, tuple[list[str], np.ndarray, list[np.ndarray]]] = {}


def load_partition(setup: Setup, partition_id: int) -> tuple[list[str], np.ndarray]:
    """This node's training rows; the table and split are cached per process (like ``fds``)."""
    if setup not in _TRAIN_CACHE:
        train = load_labelled_text(
            Path(setup.train_path), setup.text_column, setup.label_column, None, setup.train_rows
        )
        clients = partition(train.labels, train.columns, setup.partition, setup.seed).indices
        _TRAIN_CACHE[setup] = (train.texts, train.labels, clients)
    texts, labels, clients = _TRAIN_CACHE[setup]
    rows = clients[partition_id]
    return [texts[i] for i in rows], labels[rows]


def train_fn(model: nn.Module, trainloader, steps: int, lr: float, weight_decay: float) -> float:
    """``steps`` AdamW steps in fp32 over the shuffled loader (restarted if it runs out)."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    model.train()
    losses: list[float] = []
    while len(losses) < steps:
        for batch in trainloader:
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss = F.cross_entropy(logits, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return float(np.mean(losses))


def test_fn(model: nn.Module, testloader) -> tuple[float, float]:
    """``(loss, accuracy)`` over the loader."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    with torch.inference_mode():
        for batch in testloader:
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            n += len(batch["labels"])
    return loss / n, correct / n
