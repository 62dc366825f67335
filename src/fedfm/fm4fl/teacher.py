"""A foundation model as teacher for federated learning: it labels texts the clients or the server
hold, either with class probabilities (white-box: its logits are readable) or with labels only
(black-box: an API that answers text → label).

Teachers, chosen by ``[teacher] type``:

``embedding``
    Zero-shot by meaning: the cosine similarity between a text and each label's description
    (``data.descriptions``), both embedded by a sentence-embedding FM (default: the packaged
    all-MiniLM-L6-v2), scaled by :data:`SIMILARITY_SCALE` and soft-maxed.
``generative``
    A chat LM (default: the packaged SmolLM2-135M-Instruct) asked ``instruction`` + the text.
    White-box reads the next-token probabilities of each label's answer word; black-box
    generates a short answer and parses it (an answer naming no label abstains).
``run``
    A finished fedfm classification run (``model`` = its directory), e.g. a large FM fine-tuned
    federatedly and now distilled into a smaller student.
``function``
    ``model = "module:callable"``: any black-box ``list[str] -> list[str]`` returning label names
    (a hosted model behind an API, a rule system, humans).

Every teacher returns an ``(n, labels)`` array: probabilities, one-hot rows for black-box access,
and all-zero rows where it abstained. Predictions are cached under ``<cache>/teacher/`` by the
teacher's identity and the texts, so a resumed run or a Ray actor does not ask again.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fedfm.config import ExperimentConfig, TeacherConfig, resolve_path
from fedfm.data.tokens import cache_dir
from fedfm.errors import ConfigError, ModelError
from fedfm.tasks.classification import load_exported
from fedfm.tasks.models import load_causal_lm, load_encoder, model_stamp, resolve_model

log = logging.getLogger(__name__)

# cosine similarities lie in [-1, 1]; scaled by this before the softmax (a temperature of 0.05)
SIMILARITY_SCALE = 20.0
BATCH = 32


def parse_pairs(items: Sequence[str], label_names: Sequence[str], key: str) -> dict[str, str]:
    """``["LABEL=text", ...]`` → ``{label: text}``; every LABEL must be a known label."""
    out: dict[str, str] = {}
    for item in items:
        label, text = (x.strip() for x in item.split("=", 1))
        if label not in label_names:
            raise ConfigError(
                f"{key} names the label {label!r}, which the data do not have; "
                f"labels: {list(label_names)}"
            )
        out[label] = text
    return out


def descriptions(config: ExperimentConfig, label_names: Sequence[str]) -> list[str]:
    """Each label's description (``data.descriptions``), the label itself where none is given."""
    given = parse_pairs(config.data.descriptions, label_names, "data.descriptions")
    return [given.get(label, label) for label in label_names]


class Teacher:
    """Labels texts: :meth:`predict` returns ``(len(texts), len(label_names))`` probabilities."""

    def __init__(self, label_names: Sequence[str], access: str) -> None:
        self.label_names = list(label_names)
        self.access = access

    def identity(self) -> dict:
        """What determines the predictions (the cache key)."""
        raise NotImplementedError

    def _predict(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def predict(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        texts = list(texts)
        parts = []
        for start in range(0, len(texts), BATCH):
            parts.append(self._predict(texts[start : start + BATCH]))
            if progress is not None:
                progress(min(start + BATCH, len(texts)))
        if not parts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32)


def one_hot(index: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``index`` as one-hot vectors; an index of −1 (abstained) gives a zero row."""
    out = np.zeros((len(index), n), dtype=np.float32)
    known = index >= 0
    out[np.flatnonzero(known), index[known]] = 1.0
    return out


class EmbeddingTeacher(Teacher):
    """Zero-shot: softmax over the scaled cosine similarities to the labels' descriptions."""

    def __init__(self, model: str, label_names, label_texts, access: str, max_length: int):
        super().__init__(label_names, access)

        self.model_name, self.where = model, resolve_model(model, "teacher.model")
        self.max_length = max_length
        self.label_texts = list(label_texts)
        self.encoder = None  # loaded on the first prediction: a cache hit never loads it

    def _load(self) -> None:

        self.tokenizer, self.encoder = load_encoder(self.model_name, key="teacher.model")
        self.encoder.eval()
        self.label_vectors = self._embed(self.label_texts)

    def identity(self) -> dict:

        return {
            "type": "embedding",
            "model": model_stamp(self.where),
            "labels": self.label_names,
            "descriptions": self.label_texts,
            "max_length": self.max_length,
        }

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        )
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def _predict(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            self._load()
        scores = self._embed(texts) @ self.label_vectors.T
        return torch.softmax(scores * SIMILARITY_SCALE, dim=-1).numpy()


class GenerativeTeacher(Teacher):
    """A chat LM asked about each text: answer-word probabilities, or its parsed answer."""

    def __init__(self, model: str, label_names, answers, instruction, access, max_length):
        super().__init__(label_names, access)

        self.where = resolve_model(model, "teacher.model")
        self.tokenizer, self.model = load_causal_lm(model, "bf16", key="teacher.model")
        self.model.eval()
        self.tokenizer.padding_side = "left"  # the answer position is the last one of every row
        self.answers = list(answers)
        self.instruction = instruction or (
            "Which of these labels fits the text best: "
            + ", ".join(self.answers)
            + "? Answer with one word."
        )
        self.max_length = max_length
        ids = [self.tokenizer(a, add_special_tokens=False).input_ids for a in self.answers]
        first = [i[0] if i else -1 for i in ids]
        if access == "white_box" and (-1 in first or len(set(first)) < len(first)):
            raise ConfigError(
                f"teacher.answers {self.answers} must start with distinct tokens for the "
                "white-box generative teacher (pick answer words that differ in their first "
                "token, e.g. with teacher.answers = ['Sci/Tech=Science'])"
            )
        self.answer_ids = first

    def identity(self) -> dict:

        return {
            "type": "generative",
            "model": model_stamp(self.where),
            "labels": self.label_names,
            "answers": self.answers,
            "instruction": self.instruction,
            "access": self.access,
            "max_length": self.max_length,
        }

    def _prompts(self, texts: list[str]) -> dict:
        prompts = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids[: self.max_length]
            content = f"{self.instruction}\n\n{self.tokenizer.decode(ids)}"
            prompts.append(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            )
        return self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)

    @torch.inference_mode()
    def _predict(self, texts: list[str]) -> np.ndarray:
        batch = self._prompts(texts)
        if self.access == "white_box":
            logits = self.model(**batch).logits[:, -1, :].float()
            return torch.softmax(logits[:, self.answer_ids], dim=-1).numpy()
        out = self.model.generate(
            **batch,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        replies = self.tokenizer.batch_decode(
            out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return one_hot(np.array([self.parse(r) for r in replies]), len(self.label_names))

    def parse(self, reply: str) -> int:
        """The label a generated reply names (its first word, else anywhere), or −1."""
        words = re.findall(r"[\w/]+", reply.lower())
        keys = [a.lower() for a in self.answers]
        names = [n.lower() for n in self.label_names]
        if words:
            for options in (keys, names):
                if words[0] in options:
                    return options.index(words[0])
        for i, (a, n) in enumerate(zip(keys, names, strict=True)):
            if a in words or n in words:
                return i
        return -1


class RunTeacher(Teacher):
    """The classifier a finished fedfm run exported (its logits, mapped to this run's labels)."""

    def __init__(self, run_dir: str, label_names, access: str, max_length: int):
        super().__init__(label_names, access)

        self.run_dir = resolve_path(run_dir)
        if not (self.run_dir / "config.toml").is_file():
            raise ConfigError(
                f"teacher.model = {run_dir!r} is not a fedfm run directory (no config.toml)"
            )
        try:
            self.tokenizer, self.model, own = load_exported(self.run_dir)
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(
                f"teacher.model = {run_dir!r}: its exported model could not be loaded ({e})"
            ) from None
        missing = [n for n in label_names if n not in own]
        if missing:
            raise ConfigError(
                f"teacher.model = {run_dir!r} was trained on the labels {list(own)}; it cannot "
                f"score {missing}"
            )
        self.columns = [own.index(n) for n in label_names]
        self.max_length = max_length

    def identity(self) -> dict:
        export = next(
            (self.run_dir / d for d in ("adapter", "model") if (self.run_dir / d).is_dir()), None
        )
        stamp = [
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(export.iterdir() if export else [])
        ]
        return {
            "type": "run",
            "run": str(self.run_dir.resolve()),
            "files": stamp,
            "labels": self.label_names,
            "columns": self.columns,
            "max_length": self.max_length,
        }

    @torch.inference_mode()
    def _predict(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        )
        logits = self.model(batch["input_ids"], batch["attention_mask"]).float()
        return torch.softmax(logits[:, self.columns], dim=-1).numpy()


class FunctionTeacher(Teacher):
    """A black-box callable ``list[str] -> list[str]`` returning label names.

    Its answers are cached by the callable's name and the texts: after changing the function,
    clear ``<cache>/teacher/`` (the cache cannot see inside it)."""

    def __init__(self, spec: str, label_names):
        super().__init__(label_names, "black_box")
        module, _, name = spec.partition(":")
        try:
            self.function = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"teacher.model = {spec!r} could not be imported: {e}") from None
        if not callable(self.function):
            raise ConfigError(f"teacher.model = {spec!r} is not callable")
        self.spec = spec

    def identity(self) -> dict:
        return {"type": "function", "function": self.spec, "labels": self.label_names}

    def _predict(self, texts: list[str]) -> np.ndarray:
        answers = list(self.function(list(texts)))
        if len(answers) != len(texts):
            raise ModelError(
                f"teacher.model = {self.spec!r} returned {len(answers)} labels for "
                f"{len(texts)} texts"
            )
        index = np.array(
            [self.label_names.index(a) if a in self.label_names else -1 for a in answers]
        )
        return one_hot(index, len(self.label_names))


def build_teacher(config: ExperimentConfig, label_names: Sequence[str]) -> Teacher:
    """The teacher ``[teacher]`` describes, for a task with ``label_names``."""
    t: TeacherConfig = config.teacher
    if t.type == "embedding":
        return EmbeddingTeacher(
            t.model or "minilm",
            label_names,
            descriptions(config, label_names),
            t.access,
            t.max_length,
        )
    if t.type == "generative":
        given = parse_pairs(t.answers, label_names, "teacher.answers")
        answers = [given.get(n, n.replace("/", " ").split()[0]) for n in label_names]
        return GenerativeTeacher(
            t.model or "smollm2", label_names, answers, t.instruction, t.access, t.max_length
        )
    if t.type == "run":
        return RunTeacher(t.model, label_names, t.access, t.max_length)
    if t.type == "function":
        return FunctionTeacher(t.model, label_names)
    raise ConfigError("teacher.type = 'none': this step needs a [teacher]")


def teach(
    teacher: Teacher,
    texts: Sequence[str],
    calibrate: bool = True,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The teacher's labels for ``texts`` as ``(n, labels)`` rows, cached on disk.

    White-box rows are probabilities; with ``calibrate`` they are divided by their mean over
    ``texts`` and renormalised (an unsupervised fix of the teacher's label prior, which zero-shot
    FMs often skew towards a few labels). Black-box rows are one-hot (the teacher's argmax for
    teachers that could give more), all-zero where it abstained.
    """

    texts = list(texts)
    digest = hashlib.sha256(json.dumps(teacher.identity(), sort_keys=True).encode())
    for text in texts:  # each text with its length: no two lists of texts share a key
        raw = text.encode()
        digest.update(len(raw).to_bytes(8, "little") + raw)
    path = cache_dir() / "teacher" / f"{digest.hexdigest()[:24]}.npy"
    probs = None
    if path.is_file():
        try:
            probs = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:  # an unreadable entry is rebuilt, never trusted
            log.warning("ignoring unreadable teacher cache %s: %s", path, e)
    if probs is None or probs.shape != (len(texts), len(teacher.label_names)):
        say = log.warning if len(texts) >= 1000 else log.info  # minutes on a CPU: say so
        say("teacher: labelling %d texts (cached afterwards in %s)", len(texts), path.parent)
        probs = teacher.predict(texts, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, probs, allow_pickle=False)
        os.replace(tmp, path)
    if teacher.access == "black_box":  # only the predicted label leaves the teacher
        known = probs.sum(1) > 0
        index = np.where(known, probs.argmax(1), -1)
        return one_hot(index, probs.shape[1])
    if calibrate and len(probs):
        prior = probs.mean(0).clip(min=1e-6)
        probs = probs / prior
        probs = probs / probs.sum(1, keepdims=True)
    return probs


def confidence(rows: np.ndarray) -> np.ndarray:
    """The largest probability of each row (0 where the teacher abstained)."""
    return rows.max(1) if len(rows) else np.zeros(0)
