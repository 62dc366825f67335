"""Text classification: an encoder (adapted by a Method), mean pooling and a linear head."""

from __future__ import annotations

import json
import logging
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from fedfm.config import check, load_config, resolve_path
from fedfm.data.table import LabelledText, hold_out, load_labelled_text
from fedfm.data.tokens import TokenizedText, tokenize
from fedfm.errors import DataError
from fedfm.methods.base import METHODS, Method
from fedfm.tasks.base import TASKS, Task
from fedfm.tasks.models import load_encoder, tokenizer_key

log = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
LABELS_FILE = "labels.json"


class TextClassifier(nn.Module):
    """encoder → mean over real tokens → dropout → linear head → logits (batch, num_labels)."""

    def __init__(
        self, encoder: nn.Module, hidden_size: int, num_labels: int, prefix_tokens: int = 0
    ):
        super().__init__()
        self.encoder = encoder
        self.prefix_tokens = prefix_tokens  # positions a soft prompt prepends to the output
        self.head = nn.Linear(hidden_size, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(batch, num_labels)``; takes what a HF tokenizer returns:
        ``model(**tokenizer(texts, padding=True, return_tensors="pt"))``.

        ``token_type_ids`` are accepted and not used: fedfm trains on single texts, whose type
        ids are all 0, the encoder's default (and a soft prompt has no type ids to prepend)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden[:, self.prefix_tokens :]  # (batch, tokens, hidden)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return self.head(pooled.float())


def check_labels(train: LabelledText) -> None:
    """Every named class has training rows, and there are at least two classes."""
    counts = np.bincount(train.labels, minlength=len(train.label_names))
    empty = [train.label_names[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        raise DataError(
            f"data.labels names the class {empty[0]!r}, which has no training rows; "
            f"classes with rows: {[n for n, c in zip(train.label_names, counts, strict=True) if c]}"
        )
    if len(train.label_names) < 2:
        raise DataError(
            f"the training data have a single class {train.label_names!r}; at least 2 are needed"
        )


def load_labelled(config) -> tuple[LabelledText, LabelledText]:
    """The classification data of ``config``: (train, test), checked, test in train's labels."""
    d = config.data
    train = load_labelled_text(
        resolve_path(d.train), d.text_column, d.label_column, d.labels or None, d.train_rows
    )
    check_labels(train)
    if not d.test:  # no test file: a seeded held-out share of the training rows
        train, test = hold_out(train, d.test_fraction, config.seed)
        log.warning(
            "data.test is empty: holding out %d of %d rows of data.train (data.test_fraction = "
            "%g, seed %d) as the test set",
            len(test),
            len(train) + len(test),
            d.test_fraction,
            config.seed,
        )
        n = d.test_rows or len(test)  # the first N held-out rows, as with a test file
        return train, LabelledText(test.texts[:n], test.labels[:n], test.label_names, {})
    test = load_labelled_text(
        resolve_path(d.test),
        d.text_column,
        d.label_column,
        train.label_names,
        d.test_rows,
        "data.test",
    )
    return train, test


@TASKS.register("classification")
class ClassificationTask(Task):
    """Builds the classifier around a method-adapted encoder; computes loss and accuracy."""

    has_row_texts = True
    head_prefix = "head."

    @classmethod
    def load_splits(cls, config) -> tuple[LabelledText, LabelledText]:
        return load_labelled(config)

    @classmethod
    def row_texts(cls, table: LabelledText) -> list[str]:
        return table.texts

    @classmethod
    def load_test(cls, config) -> LabelledText:
        d = config.data
        if not d.test:  # the held-out share of data.train
            return load_labelled(config)[1]
        path = resolve_path(d.test)
        return load_labelled_text(
            path, d.text_column, d.label_column, d.labels or None, d.test_rows, "data.test"
        )

    @classmethod
    def check_config(cls, config) -> None:
        """A scratch encoder keeps its architecture's width (``model.hidden_size`` is for 'lm')."""
        check(
            config.model.hidden_size == 0,
            "model.hidden_size",
            config.model.hidden_size,
            "0 with task.type = 'classification' (a scratch width is for task.type = 'lm')",
        )

    @classmethod
    def empty_table(cls, label_names: tuple[str, ...]) -> LabelledText:
        return LabelledText([], np.zeros(0, dtype=np.int64), label_names, {})

    @classmethod
    def load_client_rows(cls, config, path: Path, field: str) -> LabelledText:
        d = config.data
        if not d.labels:
            raise DataError("the server's experiment names no label set (data.labels is empty)")
        return load_labelled_text(path, d.text_column, d.label_column, d.labels, 0, field)

    @classmethod
    def from_config(cls, config, method: Method, label_names: tuple[str, ...]):
        m = config.model
        tokenizer, encoder = load_encoder(m.name, m.init, m.layers, config.seed)
        task = cls(
            tokenizer, encoder, method, len(label_names), config.seed, config.federation.precision
        )
        task.tokenizer_key = tokenizer_key(m.name, tokenizer)
        task.max_length = config.data.max_length
        return task

    def tokenize(self, table: LabelledText) -> TokenizedText:
        return tokenize(table.texts, self.tokenizer, self.tokenizer_key, self.max_length)

    def __init__(
        self,
        tokenizer,
        encoder: nn.Module,
        method: Method,
        num_labels: int,
        seed: int,
        precision: str,
    ):
        torch.manual_seed(seed)  # peft's LoRA A init and the head init
        self.tokenizer = tokenizer
        self.method = method
        self.precision = precision
        hidden = encoder.config.hidden_size
        for p in encoder.parameters():
            p.requires_grad_(False)
        with warnings.catch_warnings():  # peft/transformers deprecation chatter, not the user's
            warnings.simplefilter("ignore", FutureWarning)
            wrapped = method.wrap(encoder)
        self.model = TextClassifier(wrapped, hidden, num_labels, method.prefix_tokens())
        self.pad_id = int(tokenizer.pad_token_id)
        self.temperature = 1.0  # of the distillation loss on soft targets
        # The shared tensors: exactly the trainable parameters, in model order.
        self.shared = OrderedDict(
            (n, p) for n, p in self.model.named_parameters() if p.requires_grad
        )

    # ---- compute ------------------------------------------------------------------------------
    def loss(self, tokens: TokenizedText, labels: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """Cross-entropy against class indices (``labels`` 1-D), or knowledge distillation
        against a teacher's soft targets (``labels`` 2-D, one probability row per example):
        ``T² · CE(targets, softmax(logits / T))`` with ``T = self.temperature`` (Hinton et al.;
        the targets are already tempered, see :func:`fedfm.fm4fl.warmup.temper`)."""
        input_ids, mask = tokens.batch(rows, self.pad_id)
        with self.autocast():
            logits = self.model(input_ids, mask)
        if labels.ndim == 2:
            t = self.temperature
            log_p = F.log_softmax(logits.float() / t, dim=-1)
            targets = torch.from_numpy(labels[rows]).float()
            return -(targets * log_p).sum(-1).mean() * t * t
        return F.cross_entropy(logits.float(), torch.from_numpy(labels[rows]))

    def _logits(self, tokens: TokenizedText, rows: np.ndarray, batch_size: int):
        """Yield ``(positions, logits)`` over ``rows`` in length-sorted batches (little padding),
        with the model in eval mode; ``positions`` index into ``rows``."""
        order = np.argsort(tokens.lengths()[rows], kind="stable")
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), batch_size):
                at = order[start : start + batch_size]
                input_ids, mask = tokens.batch(rows[at], self.pad_id)
                with self.autocast():
                    yield at, self.model(input_ids, mask).float()
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def probabilities(
        self,
        tokens: TokenizedText,
        rows: np.ndarray,
        temperature: float = 1.0,
        batch_size: int = 64,
    ) -> np.ndarray:
        """``softmax(logits / temperature)`` of the current model for ``rows``, in that order."""
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.model.head.out_features), dtype=np.float32)
        for at, logits in self._logits(tokens, rows, batch_size):
            out[at] = torch.softmax(logits / temperature, dim=-1).numpy()
        return out

    @torch.inference_mode()
    def per_example(
        self,
        tokens: TokenizedText,
        labels: np.ndarray,
        rows: np.ndarray | None = None,
        batch_size: int = 64,  # small batches keep the peak RSS low; speed is the same on CPU
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``rows`` (all rows by default), in that order: the loss and whether the
        prediction is right."""
        rows = np.arange(len(tokens)) if rows is None else np.asarray(rows)
        losses = np.empty(len(rows), dtype=np.float64)
        correct = np.empty(len(rows), dtype=bool)
        for at, logits in self._logits(tokens, rows, batch_size):
            target = torch.from_numpy(labels[rows[at]])
            losses[at] = F.cross_entropy(logits, target, reduction="none").numpy()
            correct[at] = (logits.argmax(-1) == target).numpy()
        return losses, correct

    def evaluate(
        self, tokens: TokenizedText, labels: np.ndarray, rows: np.ndarray | None = None
    ) -> dict[str, float]:
        """Accuracy and mean loss over ``rows`` (all rows by default)."""
        losses, correct = self.per_example(tokens, labels, rows)
        return {"accuracy": float(correct.mean()), "loss": float(losses.mean())}

    # ---- export -----------------------------------------------------------------------------
    def export(self, out: Path, label_names: tuple[str, ...]) -> Path:
        """Save the trained part: the peft adapter (or full encoder), the head, the label names."""
        out.mkdir(parents=True, exist_ok=True)
        self.method.save(self.model.encoder, out)
        if not self.method.is_peft:  # head-only / full: the tokenizer too, so model/ stands alone
            self.tokenizer.save_pretrained(str(out))
        (out / LABELS_FILE).write_text(json.dumps({"labels": list(label_names)}) + "\n")
        head = {k: v.detach().contiguous() for k, v in self.model.head.state_dict().items()}
        save_file(head, str(out / HEAD_FILE))
        return out


def load_exported(run_dir: Path):
    """Reload a run's exported classifier: ``(tokenizer, TextClassifier, label_names)``.

    The encoder comes from the run's ``[model] name``; a peft adapter is applied with
    ``PeftModel.from_pretrained`` (a full fine-tune is loaded from ``model/``), and the head
    from ``head.safetensors``.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.toml")
    method = METHODS.of(config.method)(config.method)
    export = run_dir / ("adapter" if method.is_peft else "model")
    if (export / "config.json").is_file():  # a full fine-tune: the encoder as trained
        tokenizer, encoder = load_encoder(str(export))
    else:  # the same base the run adapted (a scratch base is re-drawn from the run's seed)
        m = config.model
        tokenizer, encoder = load_encoder(m.name, m.init, m.layers, config.seed)
    if method.is_peft:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            encoder = PeftModel.from_pretrained(encoder, str(export))
    head = load_file(str(export / HEAD_FILE))
    labels = tuple(json.loads((export / LABELS_FILE).read_text())["labels"])
    model = TextClassifier(encoder, encoder.config.hidden_size, len(labels), method.prefix_tokens())
    model.head.load_state_dict(head)
    return tokenizer, model.eval(), labels
