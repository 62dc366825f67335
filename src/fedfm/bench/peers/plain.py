"""A plain single-process PyTorch FedAvg loop: the floor a researcher writes by hand.

fp32, one shared base model, the HF tokenizer padding every batch to ``max_length``, a fresh
AdamW per client, FedAvg by example counts — no codecs, no serialisation, no bucketing. It
uses fedfm only to read the same rows and the same client split.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedfm.config import resolve_path
from fedfm.data.partition import partition
from fedfm.data.table import load_labelled_text
from fedfm.tasks.models import resolve_model


class Classifier(nn.Module):
    def __init__(self, encoder, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def run(config, recorder) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(config.seed)
    d, f = config.data, config.federation
    train = load_labelled_text(
        resolve_path(d.train), d.text_column, d.label_column, None, d.train_rows
    )
    test = load_labelled_text(
        resolve_path(d.test), d.text_column, d.label_column, train.label_names, d.test_rows
    )
    clients = partition(train.labels, train.columns, config.partition, config.seed).indices

    path = resolve_model(config.model.name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    spec = config.method
    lora = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
    )
    model = Classifier(
        get_peft_model(AutoModel.from_pretrained(path), lora), len(train.label_names)
    )
    recorder.model_loaded()

    def encode(texts):
        return tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=d.max_length,
            return_tensors="pt",
        )

    x_train, y_train = encode(train.texts), torch.from_numpy(train.labels)
    eval_n = d.eval_rows or len(test)
    x_test, y_test = encode(test.texts[:eval_n]), torch.from_numpy(test.labels[:eval_n])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    global_state = {n: p.detach().clone() for n, p in trainable.items()}
    state_bytes = sum(t.numel() * t.element_size() for t in global_state.values())
    recorder.note("bytes: parameter count × 4 (the plain loop serialises nothing)")

    accuracy = 0.0
    for rnd in range(1, f.rounds + 1):
        recorder.round_start(rnd)
        rng = np.random.default_rng([config.seed, rnd])
        selected = rng.choice(len(clients), size=f.clients_per_round, replace=False)
        states, sizes = [], []
        model.train()
        for c in selected:
            with torch.no_grad():
                for n, p in trainable.items():
                    p.copy_(global_state[n])
            opt = torch.optim.AdamW(trainable.values(), lr=f.lr)
            rows = clients[c]
            for _ in range(f.local_steps):
                batch = torch.from_numpy(
                    rng.choice(rows, size=min(f.batch_size, len(rows)), replace=False)
                )
                logits = model(x_train["input_ids"][batch], x_train["attention_mask"][batch])
                loss = F.cross_entropy(logits, y_train[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            states.append({n: p.detach().clone() for n, p in trainable.items()})
            sizes.append(len(rows))
        total = sum(sizes)
        global_state = {
            n: sum(s[n] * (k / total) for s, k in zip(states, sizes, strict=True))
            for n in global_state
        }
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(global_state[n])
        model.eval()
        correct = 0
        with torch.inference_mode():
            for s in range(0, eval_n, 64):
                logits = model(
                    x_test["input_ids"][s : s + 64], x_test["attention_mask"][s : s + 64]
                )
                correct += int((logits.argmax(-1) == y_test[s : s + 64]).sum())
        accuracy = correct / eval_n
        n = len(selected)
        recorder.round_end(rnd, accuracy, n * state_bytes, n * state_bytes)
    recorder.set("finished_at", time.time())
    recorder.finish(accuracy)
