"""Instruction tuning of a generative (causal) language model, scored by exact match and perplexity.

The task has the interface the federation uses for every task (``model``, ``method``,
``shared``, ``get_state``/``set_state``, ``loss(tokens, labels, rows)``, ``per_example``,
``evaluate``, ``export``). Its tokens are :class:`~fedfm.data.instructions.PromptedTokens`:
prompt + response per row, with the prompt's length, so the loss is next-token cross-entropy on
the response tokens only; ``labels`` (the rows' answer classes) serve partitioning and are not
used here.

Scoring (:meth:`CausalLMTask.evaluate`):

* ``accuracy``: exact match of the greedy answer (at most ``task.max_new_tokens`` tokens)
  against the reference, by :func:`exact_match`;
* ``loss`` and ``perplexity``: mean next-token NLL over the reference responses, and its exp.
"""

from __future__ import annotations

import math
import string
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from torch import nn
from torch.nn import functional as F
from transformers import AutoTokenizer

from fedfm.config import check, load_config, resolve_path
from fedfm.data.instructions import (
    IGNORE_INDEX,
    ChatEncoder,
    Instructions,
    PromptedTokens,
    labelled_as_instructions,
    left_padded,
    load_instructions,
    tokenize_instructions,
)
from fedfm.data.table import load_labelled_text
from fedfm.errors import ConfigError
from fedfm.methods.base import Method
from fedfm.registry import spec_name
from fedfm.tasks.base import TASKS, Task, check_decoder
from fedfm.tasks.classification import load_labelled
from fedfm.tasks.models import load_causal_lm, tokenizer_key

_PUNCTUATION = string.punctuation + "“”‘’«»…"


def normalize_answer(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.lower().split())


def exact_match(prediction: str, reference: str) -> bool:
    """Whether a generated answer matches the reference, ignoring case and whitespace.

    A one-word reference is compared with the prediction's first word (so "Sports." and
    "Sports, since ..." match "sports"); otherwise the whole answers are compared. Punctuation
    at either end of what is compared is ignored ("Sci/Tech." matches "Sci/Tech").
    """
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if " " not in ref:
        pred = pred.split(" ", 1)[0]
    return bool(ref.strip(_PUNCTUATION)) and pred.strip(_PUNCTUATION) == ref.strip(_PUNCTUATION)


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end a generated answer: EOS and the chat template's end-of-turn token."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    encoder = ChatEncoder(tokenizer)
    end = encoder.encode_text(encoder.end_of_turn)
    if len(end) == 1:
        ids.add(int(end[0]))
    return sorted(ids)


@torch.inference_mode()
def generate_ids(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    stop: Sequence[int],
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (lists of ids), each cut before its first stop id."""
    input_ids, mask = left_padded(prompts, pad_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # generation-config chatter
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=list(stop),
        )
    answers = []
    for row in out[:, input_ids.shape[1] :].tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        answers.append(row[:cut])
    return answers


@TASKS.register("causal_lm")
class CausalLMTask(Task):
    """A method-adapted causal LM; the shared tensors are exactly its trainable parameters.

    Data: instruction JSONL files, or labelled tables turned into instructions with
    ``task.instruction`` (see :mod:`fedfm.data.instructions`).
    """

    shares_label_set = False  # labels only group rows for partitions
    generates = True
    has_row_texts = True

    @classmethod
    def check_config(cls, config) -> None:
        """LoRA only (the default targets become q_proj, v_proj) on the pre-trained model; no
        data attacks and no example-level DP, which assume labelled classification rows."""
        method = spec_name(config.method)
        check(method == "lora", "method.type", method, "'lora' with task.type = 'causal_lm'")
        m = config.model
        check(
            m.init == "pretrained",
            "model.init",
            m.init,
            "'pretrained' with task.type = 'causal_lm'",
        )
        for key in ("layers", "hidden_size"):
            value = getattr(m, key)
            check(value == 0, f"model.{key}", value, "0 with task.type = 'causal_lm'")
        check_decoder(config, "causal_lm")

    @classmethod
    def load_splits(cls, config) -> tuple[Instructions, Instructions]:
        d, instruction = config.data, config.task.instruction
        if not instruction:
            return (
                load_instructions(resolve_path(d.train), d.train_rows, d.label_column),
                load_instructions(resolve_path(d.test), d.test_rows, d.label_column, "data.test"),
            )
        train, test = load_labelled(config)
        return (
            labelled_as_instructions(train, instruction),
            labelled_as_instructions(test, instruction),
        )

    @classmethod
    def row_texts(cls, table: Instructions) -> list[str]:
        """A row's text: its messages' contents and its response, one per line."""
        return [
            "\n".join([*(m["content"] for m in messages), response])
            for messages, response in zip(table.messages, table.responses, strict=True)
        ]

    @classmethod
    def load_test(cls, config) -> Instructions:
        return cls._load_one(
            config, resolve_path(config.data.test), config.data.test_rows, "data.test"
        )

    @classmethod
    def empty_table(cls, label_names: tuple[str, ...]) -> Instructions:
        return Instructions([], [], np.zeros(0, dtype=np.int64), label_names or ("all",), {})

    @classmethod
    def load_client_rows(cls, config, path: Path, field: str) -> Instructions:
        return cls._load_one(config, path, 0, field)

    @classmethod
    def _load_one(cls, config, path: Path, rows: int, field: str) -> Instructions:
        d, instruction = config.data, config.task.instruction
        if not instruction:
            return load_instructions(path, rows, d.label_column, field)
        table = load_labelled_text(
            path, d.text_column, d.label_column, d.labels or None, rows, field
        )
        return labelled_as_instructions(table, instruction)

    @classmethod
    def from_config(cls, config, method: Method, label_names: tuple[str, ...] = ()):
        tokenizer, model = load_causal_lm(config.model.name, config.federation.precision)
        task = cls(
            tokenizer,
            model,
            method,
            config.seed,
            config.federation.precision,
            config.task.max_new_tokens,
        )
        task.tokenizer_key = tokenizer_key(config.model.name, tokenizer)
        task.max_length = config.data.max_length
        return task

    def tokenize(self, table: Instructions) -> PromptedTokens:
        return tokenize_instructions(table, self.tokenizer, self.tokenizer_key, self.max_length)

    def __init__(
        self,
        tokenizer,
        model: nn.Module,
        method: Method,
        seed: int,
        precision: str,
        max_new_tokens: int = 8,
    ):
        self.tokenizer = tokenizer
        self.method = method
        self.precision = precision
        self.max_new_tokens = max_new_tokens
        self.adapt(model, method, seed)
        self.pad_id = int(tokenizer.pad_token_id)
        self.stop = stop_ids(tokenizer)

    # ---- compute ------------------------------------------------------------------------------
    def _response_nll(
        self, tokens: PromptedTokens, rows: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the summed NLL of its response tokens and how many there are.

        The vocabulary projection runs on the response positions only: over every position, a
        49k-token vocabulary makes it a fifth of the forward's compute and logits of
        batch × width × vocab floats.
        """
        input_ids, mask = tokens.batch(rows, self.pad_id)  # (batch, width), right-padded
        targets = tokens.targets(rows, input_ids.shape[1])[:, 1:]  # position t predicts t + 1
        keep = targets != IGNORE_INDEX  # (batch, width - 1)
        base = self.model.get_base_model()  # LoRA layers are injected in place
        with self.autocast():
            hidden = base.get_decoder()(
                input_ids=input_ids, attention_mask=mask, use_cache=False
            ).last_hidden_state[:, :-1]
            logits = base.get_output_embeddings()(hidden[keep])  # (response tokens, vocab)
        nll = F.cross_entropy(logits.float(), targets[keep], reduction="none")
        row_of = keep.nonzero()[:, 0]
        sums = torch.zeros(len(rows), dtype=nll.dtype).index_add(0, row_of, nll)
        return sums, keep.sum(1)

    def loss(self, tokens: PromptedTokens, labels: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """Mean next-token cross-entropy over the batch's response tokens."""
        sums, counts = self._response_nll(tokens, rows)
        return sums.sum() / counts.sum().clamp_min(1)

    @torch.inference_mode()
    def _score(
        self, tokens: PromptedTokens, rows: np.ndarray, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: response NLL sum, response token count, exact match of the greedy answer.
        Length-sorted batches (little padding)."""
        order = np.argsort(tokens.lengths()[rows], kind="stable")
        sums = np.zeros(len(rows))
        counts = np.zeros(len(rows), dtype=np.int64)
        correct = np.zeros(len(rows), dtype=bool)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), batch_size):
                at = order[start : start + batch_size]
                batch = rows[at]
                s, c = self._response_nll(tokens, batch)
                sums[at], counts[at] = s.numpy(), c.numpy()
                with self.autocast():
                    answers = generate_ids(
                        self.model.get_base_model(),
                        [tokens.prompt_ids(r) for r in batch],
                        self.max_new_tokens,
                        self.pad_id,
                        self.stop,
                    )
                for i, (r, answer) in enumerate(zip(batch, answers, strict=True)):
                    reference = self.decode(tokens.response_ids(r))
                    correct[at[i]] = exact_match(self.decode(answer), reference)
        finally:
            self.model.train(was_training)
        return sums, counts, correct

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=True).strip()

    def per_example(
        self,
        tokens: PromptedTokens,
        labels: np.ndarray,
        rows: np.ndarray | None = None,
        batch_size: int = 16,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``rows`` (all rows by default), in that order: the mean NLL of its
        response tokens and whether the greedy answer is an exact match."""
        rows = np.arange(len(tokens)) if rows is None else np.asarray(rows)
        sums, counts, correct = self._score(tokens, rows, batch_size)
        return sums / np.maximum(counts, 1), correct

    def evaluate(
        self, tokens: PromptedTokens, labels: np.ndarray, rows: np.ndarray | None = None
    ) -> dict[str, float]:
        """Exact match (``accuracy``), token-level mean NLL (``loss``) and ``perplexity``."""
        rows = np.arange(len(tokens)) if rows is None else np.asarray(rows)
        sums, counts, correct = self._score(tokens, rows, 16)
        loss = float(sums.sum() / max(int(counts.sum()), 1))
        return {"accuracy": float(correct.mean()), "loss": loss, "perplexity": math.exp(loss)}

    # ---- export -----------------------------------------------------------------------------
    @classmethod
    def generate_text(cls, run_dir, config, prompts, max_new_tokens, temperature, seed):
        """Greedy answers through the chat template (see :func:`generate`)."""
        if temperature:
            raise ConfigError(
                f"--temperature = {temperature} is not allowed for a task.type = 'causal_lm' "
                "run, which answers greedily; allowed: 0 (sampling is for task.type = 'lm')"
            )
        tokenizer, model = load_exported(run_dir)
        return generate_with(tokenizer, model, list(prompts), max_new_tokens)

    @classmethod
    def load_trained(cls, run_dir, config):
        """The base with the run's peft adapter (see :func:`load_exported`)."""
        return load_exported(run_dir)

    def export(self, out: Path, label_names: tuple[str, ...] = ()) -> Path:
        """Save the peft adapter and the tokenizer (with its chat template) to ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        self.method.save(self.model, out)
        self.tokenizer.save_pretrained(str(out))
        return out


# ---- the trained model, reloaded -----------------------------------------------------------------


def load_exported(run_dir: str | Path):
    """Reload a causal-LM run: ``(tokenizer, model)``, the base with the run's peft adapter
    (``adapter/``) applied by ``PeftModel.from_pretrained``, in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory: it has no config.toml")
    config = load_config(run_dir / "config.toml")
    if config.task.type != "causal_lm":
        raise ConfigError(
            f"{str(run_dir)!r} is a task.type = {config.task.type!r} run; generating text needs "
            "a task.type = 'causal_lm' run"
        )
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{str(run_dir)!r} has no exported adapter/ (did the run finish?)")
    tokenizer, base = load_causal_lm(config.model.name, config.federation.precision)
    if (adapter / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(adapter))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(base, str(adapter))
    return tokenizer, model.eval()


def generate(
    run_dir: str | Path, prompt: str | Sequence[str], max_new_tokens: int = 64
) -> str | list[str]:
    """Greedy answer(s) of a causal-LM run's tuned model to ``prompt`` (a user message, or a list
    of them), through the model's chat template."""
    tokenizer, model = load_exported(run_dir)
    return generate_with(tokenizer, model, prompt, max_new_tokens)


def generate_with(
    tokenizer, model: nn.Module, prompt: str | Sequence[str], max_new_tokens: int = 64
) -> str | list[str]:
    """Greedy answer(s) of a loaded model (see :func:`load_exported`) to user message(s); under
    bf16 autocast when the model's weights are bfloat16."""
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    encoder = ChatEncoder(tokenizer)
    ids = [encoder.prompt_ids([{"role": "user", "content": p}]) for p in prompts]
    bf16 = next(model.parameters()).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        answers = generate_ids(
            getattr(model, "get_base_model", lambda: model)(),  # peft injects layers in place
            ids,
            max_new_tokens,
            int(tokenizer.pad_token_id),
            stop_ids(tokenizer),
        )
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    return texts[0] if single else texts
