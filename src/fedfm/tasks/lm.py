"""Language-model pre-training (``[task] type = "lm"``): next-token prediction on unlabelled text.

The data are any text column (``data.text_column``), packed into blocks of ``data.max_length``
tokens (:mod:`fedfm.data.packing`); the loss is the next-token cross-entropy over every real
position of a block. The model is a causal LM trained from scratch (``model.init = "scratch"``:
``model.name``'s tokenizer and a Llama architecture of ``model.layers`` layers of width
``model.hidden_size``, see :func:`fedfm.tasks.models.scratch_shape`) or continued from its
pre-trained weights (``full`` or ``lora``).

Scoring (:meth:`LanguageModelTask.evaluate`) on held-out blocks: ``loss`` (mean NLL per
predicted token), ``perplexity`` = exp(loss), and ``accuracy`` = top-1 next-token accuracy.
Clients report ``tokens`` (tokens trained on) with every update.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from fedfm.config import check, resolve_path
from fedfm.data.packing import PackedText, TextTable, pack_table, read_texts
from fedfm.data.tokens import TokenizedText
from fedfm.errors import ConfigError, ModelError
from fedfm.methods.base import METHODS, Method
from fedfm.registry import spec_name
from fedfm.tasks.base import TASKS, Task, check_decoder
from fedfm.tasks.models import load_lm, load_lm_tokenizer, tokenizer_key

#: What ``[model] name`` means for ``task.type = "lm"`` when the config leaves the default.
DEFAULT_LM = "smollm2"
EVAL_BATCH = 8


def _grouping(config) -> str:
    """The column whose values a partition keeps together ('' = by label): see packing."""
    return config.partition.column if config.partition.scheme == "column" else ""


@TASKS.register("lm")
class LanguageModelTask(Task):
    """A causal LM trained on packed text blocks; shared tensors = its trainable parameters."""

    shares_label_set = False  # labels (when the file has them) only group blocks for partitions
    generates = True

    # ---- config -------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """LoRA (Llama attention targets by default) or full training; a scratch model trains
        every weight; no data attacks or example-level DP (they assume labelled rows)."""
        if config.model.name == type(config.model)().name:
            object.__setattr__(config, "model", dataclasses.replace(config.model, name=DEFAULT_LM))
        method = spec_name(config.method)
        check(method in ("lora", "full"), "method.type", method, "'lora' or 'full' (task 'lm')")
        m = config.model
        if m.init == "scratch":
            check(
                method == "full",
                "method.type",
                method,
                "'full' with model.init = 'scratch' (every weight of a fresh model must train)",
            )
        else:
            for key in ("layers", "hidden_size"):
                check(
                    getattr(m, key) == 0,
                    f"model.{key}",
                    getattr(m, key),
                    "0 unless model.init = 'scratch' (a pre-trained model keeps its shape)",
                )
        check_decoder(config, "lm")

    # ---- data ---------------------------------------------------------------------------------
    @classmethod
    def _pack(
        cls, config, table: TextTable, grouping: str | None, field: str, tokenizer=None
    ) -> PackedText:
        tokenizer = tokenizer or load_lm_tokenizer(config.model.name)
        key = tokenizer_key(config.model.name, tokenizer)
        return pack_table(table, tokenizer, key, config.data.max_length, grouping, field)

    @classmethod
    def _read(cls, config, path: Path, rows: int, field: str) -> TextTable:
        d = config.data
        return read_texts(path, d.text_column, d.label_column, rows, field)

    @classmethod
    def load_splits(cls, config) -> tuple[PackedText, PackedText]:
        d = config.data
        tokenizer = load_lm_tokenizer(config.model.name)
        train = cls._read(config, resolve_path(d.train), d.train_rows, "data.train")
        packed = cls._pack(config, train, _grouping(config), "data.train", tokenizer)
        return packed, cls.load_test(config, tokenizer)

    @classmethod
    def load_test(cls, config, tokenizer=None) -> PackedText:
        test = cls._read(config, resolve_path(config.data.test), config.data.test_rows, "data.test")
        # file order: eval_rows = the first blocks
        return cls._pack(config, test, None, "data.test", tokenizer)

    @classmethod
    def test_counts(cls, table: PackedText) -> dict[str, int]:
        """``test_rows``: the documents read; ``test_blocks``: the packed blocks evaluated."""
        return {"test_rows": table.documents, "test_blocks": len(table)}

    @classmethod
    def empty_table(cls, label_names: tuple[str, ...]) -> PackedText:
        tokens = TokenizedText(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
        return PackedText(tokens, np.zeros(0, dtype=np.int64), label_names or ("all",), {}, 0)

    @classmethod
    def load_client_rows(cls, config, path: Path, field: str) -> PackedText:
        """A network client's own file, packed as the simulation packs its rows; a file without
        the server's partition column is one group (the client's own text, in file order)."""
        table = cls._read(config, path, 0, field)
        grouping = _grouping(config)
        keep = grouping == "" or grouping in table.columns  # "": by label, when it has labels
        return cls._pack(config, table, grouping if keep else None, field)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, method: Method, label_names: tuple[str, ...] = ()):
        m, precision = config.model, config.federation.precision
        # Trained weights stay float32 (bf16 autocast computes); a frozen base under LoRA may
        # be stored in bfloat16 (half the memory, as for causal_lm).
        frozen_bf16 = method.is_peft and precision == "bf16"
        dtype = torch.bfloat16 if frozen_bf16 else torch.float32
        tokenizer, model = load_lm(m.name, m.init, dtype, m.layers, m.hidden_size, config.seed)
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        if context and config.data.max_length > context:
            raise ConfigError(
                f"data.max_length = {config.data.max_length} is not allowed; allowed: ≤ "
                f"{context} (the context of model.name = {m.name!r}; the block size of task.type "
                "= 'lm')"
            )
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise ModelError(
                f"model.name = {m.name!r}: its tokenizer has {len(tokenizer)} tokens, more than "
                f"the {rows} rows of its embedding"
            )
        task = cls(tokenizer, model, method, config.seed, precision)
        task.tokenizer_key = tokenizer_key(m.name, tokenizer)
        return task

    def tokenize(self, table: PackedText) -> TokenizedText:
        return table.tokens  # packed when loaded (the partition works on blocks)

    def __init__(self, tokenizer, model: nn.Module, method: Method, seed: int, precision: str):
        self.tokenizer = tokenizer
        self.method = method
        self.precision = precision
        self.adapt(model, method, seed)
        self.pad_id = int(tokenizer.pad_token_id)

    # ---- compute ------------------------------------------------------------------------------
    def _next_token(
        self, tokens: TokenizedText, rows: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per predicted position: (logits, targets), and the row each belongs to; the vocabulary
        projection runs on real positions only (no padding)."""
        input_ids, mask = tokens.batch(rows, self.pad_id)
        targets = input_ids[:, 1:]
        keep = mask[:, 1:].bool()
        base = self.model.get_base_model() if self.method.is_peft else self.model
        with self.autocast():
            hidden = base.get_decoder()(
                input_ids=input_ids, attention_mask=mask, use_cache=False
            ).last_hidden_state[:, :-1]
            logits = base.get_output_embeddings()(hidden[keep])
        return logits.float(), targets[keep], keep.nonzero()[:, 0], keep.sum(1)

    def loss(self, tokens: TokenizedText, labels: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """Mean next-token cross-entropy over the batch's real positions."""
        logits, targets, _, _ = self._next_token(tokens, rows)
        return F.cross_entropy(logits, targets)

    @torch.inference_mode()
    def _score(self, tokens: TokenizedText, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per row: summed NLL, predicted positions, correct top-1 predictions."""
        sums = np.zeros(len(rows))
        counts = np.zeros(len(rows), dtype=np.int64)
        correct = np.zeros(len(rows), dtype=np.int64)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), EVAL_BATCH):
                batch = rows[start : start + EVAL_BATCH]
                logits, targets, row_of, n = self._next_token(tokens, batch)
                nll = F.cross_entropy(logits, targets, reduction="none")
                hit = (logits.argmax(-1) == targets).to(torch.float64)
                at = slice(start, start + len(batch))
                sums[at] = (
                    torch.zeros(len(batch), dtype=torch.float64)
                    .index_add(0, row_of, nll.double())
                    .numpy()
                )
                correct[at] = (
                    torch.zeros(len(batch), dtype=torch.float64).index_add(0, row_of, hit).numpy()
                )
                counts[at] = n.numpy()
        finally:
            self.model.train(was_training)
        return sums, counts, correct

    def per_example(
        self, tokens: TokenizedText, labels: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per block of ``rows``: mean next-token NLL, and whether most of its next tokens are
        predicted right."""
        rows = np.arange(len(tokens)) if rows is None else np.asarray(rows)
        sums, counts, correct = self._score(tokens, rows)
        return sums / np.maximum(counts, 1), correct * 2 > counts

    def evaluate(
        self, tokens: TokenizedText, labels: np.ndarray, rows: np.ndarray | None = None
    ) -> dict[str, float]:
        """``loss`` (NLL per predicted token), ``perplexity`` and next-token ``accuracy``."""
        rows = np.arange(len(tokens)) if rows is None else np.asarray(rows)
        sums, counts, correct = self._score(tokens, rows)
        total = max(int(counts.sum()), 1)
        loss = float(sums.sum() / total)
        return {
            "accuracy": float(correct.sum() / total),
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
        }

    # ---- export and generation ----------------------------------------------------------------
    def export(self, out: Path, label_names: tuple[str, ...] = ()) -> Path:
        """``full``: the whole model as a HF folder (``AutoModelForCausalLM.from_pretrained``
        loads it; usable as another run's ``model.name``); ``lora``: the peft adapter. The
        tokenizer is saved beside either."""
        out.mkdir(parents=True, exist_ok=True)
        self.method.save(self.model, out)
        self.tokenizer.save_pretrained(str(out))
        return out

    @classmethod
    def load_trained(cls, run_dir: Path, config):
        """The exported model (``full``), or the base with the adapter merged (``lora``)."""
        return _load_trained(run_dir, config)

    @classmethod
    def generate_text(
        cls,
        run_dir: Path,
        config,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float | None,
        seed: int,
    ) -> list[str]:
        """Continuations of ``prompts`` (plain text; '' starts a new document) sampled from the
        run's model at ``temperature`` (default 0.8, top-p 0.95; 0 = greedy)."""
        tokenizer, model = cls.load_trained(run_dir, config)
        temperature = 0.8 if temperature is None else temperature
        eos = int(tokenizer.eos_token_id)
        texts = []
        for prompt in prompts:
            ids = [eos] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            input_ids = torch.tensor([ids])
            with torch.random.fork_rng(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                torch.manual_seed(seed)
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=0.95 if temperature > 0 else None,
                    pad_token_id=eos,
                    eos_token_id=eos,
                )
            new = out[0, input_ids.shape[1] :].tolist()
            texts.append(prompt + tokenizer.decode(new, skip_special_tokens=True))
        return texts


def _load_trained(run_dir: Path, config):
    """``(tokenizer, model)`` of an ``lm`` run: the exported model (``full``), or the base with
    the run's peft adapter (``lora``), in eval mode."""
    method = METHODS.of(config.method)(config.method)
    export = run_dir / ("adapter" if method.is_peft else "model")
    if not (export / ("adapter_config.json" if method.is_peft else "config.json")).is_file():
        raise ConfigError(f"{str(run_dir)!r} has no exported {export.name}/ (did the run finish?)")
    if method.is_peft:
        m = config.model
        tokenizer, base = load_lm(m.name, m.init, torch.float32, m.layers, m.hidden_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(base, str(export)).merge_and_unload()
    else:
        tokenizer = load_lm_tokenizer(str(export))
        model = AutoModelForCausalLM.from_pretrained(str(export))
    return tokenizer, model.eval()
