"""Instruction data for causal-LM tuning: reading it, and tokenising it (cached) for the loss.

Two sources give the same :class:`Instructions`:

* a JSONL file, one example per line: ``{"instruction": ..., "input": ..., "output": ...}``
  (``input`` optional, Alpaca style) or ``{"messages": [{"role": ..., "content": ...}, ...]}``
  whose last message is the assistant's answer. An optional ``label`` field (``data.label_column``)
  groups rows for label-skewed partitions;
* a labelled table (CSV, TSV, JSONL, Parquet with ``data.text_column`` and ``data.label_column``)
  and ``task.instruction``: row ``text`` becomes the user message ``instruction + "\\n\\n" +
  text`` and its label the answer (:func:`labelled_as_instructions`).

Tokenised rows are the chat template's prompt followed by the response (ended by the template's
end-of-turn token); :class:`PromptedTokens` keeps how many tokens of each row are prompt, so the
loss covers the response only. Truncation to ``data.max_length`` shortens the last user message,
so the template's framing and the answer always fit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedfm.data.table import LabelledText, read_table
from fedfm.data.tokens import PAD_MULTIPLE, TokenizedText, cache_dir
from fedfm.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the target of positions without loss (prompt, padding), as in HF and torch
ROLES = ("system", "user", "assistant")
_MARK = "\ufdd0fedfm\ufdd0"  # a noncharacter placeholder, to find where the template puts content
_FORMAT_VERSION = 1  # bump when the tokenisation below changes: old cache entries are ignored

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Instructions:
    """Prompts (chat messages up to the user's last turn) and their reference responses."""

    messages: list[Messages]
    responses: list[str]
    labels: np.ndarray  # int64 group of each row (its answer class), for partitioning
    label_names: tuple[str, ...]
    columns: dict[str, list]

    def __len__(self) -> int:
        return len(self.responses)


def instruction_records(
    texts: Sequence[str], answers: Sequence[str], instruction: str
) -> list[dict[str, str]]:
    """JSONL records ``{"instruction", "input", "output", "label"}``: one per labelled text."""
    return [
        {"instruction": instruction, "input": text, "output": answer, "label": answer}
        for text, answer in zip(texts, answers, strict=True)
    ]


def write_jsonl(records: Sequence[dict], path: Path) -> Path:
    """Write ``records`` one JSON object a line (UTF-8), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def labelled_as_instructions(table: LabelledText, instruction: str) -> Instructions:
    """A labelled table as instructions: ``instruction``, a blank line and the text; the label
    name is the answer."""
    answers = [table.label_names[i] for i in table.labels]
    return _from_records(
        instruction_records(table.texts, answers, instruction),
        table.labels,
        table.label_names,
        table.columns,
        "table",
    )


def load_instructions(
    path: Path, rows: int = 0, label_column: str = "label", field: str = "data.train"
) -> Instructions:
    """Read an instruction JSONL file (the first ``rows`` examples; 0 = all)."""
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise DataError(
            f"{field} = {str(path)!r} is not a .jsonl file of instructions; for a labelled "
            "table (CSV, TSV, Parquet) set task.instruction, which turns its rows into instructions"
        )
    table = read_table(path, field)
    n = len(next(iter(table.values()), []))
    n = n if rows == 0 else min(rows, n)
    if n == 0:
        raise DataError(f"{field} = {str(path)!r} has no rows")
    records = [{k: v[i] for k, v in table.items() if v[i] is not None} for i in range(n)]
    raw = [r.get(label_column) for r in records]
    if all(isinstance(v, str | int) and not isinstance(v, bool) for v in raw):
        label_names = tuple(sorted({str(v) for v in raw}))
        index = {name: i for i, name in enumerate(label_names)}
        labels = np.fromiter((index[str(v)] for v in raw), dtype=np.int64, count=n)
    else:  # no (complete) label column: one group, for iid or quantity-skewed partitions
        label_names, labels = ("all",), np.zeros(n, dtype=np.int64)
    columns = {k: v[:n] for k, v in table.items()}
    return _from_records(records, labels, label_names, columns, str(path))


def _from_records(
    records: Sequence[dict], labels: np.ndarray, label_names, columns, where: str
) -> Instructions:
    messages, responses = [], []
    for i, record in enumerate(records, start=1):
        prompt, response = parse_record(record, f"{where} row {i}")
        messages.append(prompt)
        responses.append(response)
    return Instructions(messages, responses, labels, tuple(label_names), columns)


def parse_record(record: dict, where: str) -> tuple[Messages, str]:
    """``(prompt messages, response)`` of one instruction or chat record."""
    if "messages" in record:
        msgs = record["messages"]
        ok = isinstance(msgs, list) and all(
            isinstance(m, dict)
            and m.get("role") in ROLES
            and isinstance(m.get("content"), str)
            and set(m) <= {"role", "content"}
            for m in msgs
        )
        if not ok or len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: 'messages' must be a list of {{'role', 'content'}} objects (roles "
                "system, user, assistant) ending with the assistant's answer after a user turn"
            )
        if msgs[-2]["role"] != "user":
            raise DataError(f"{where}: the message before the assistant's answer must be 'user'")
        return [dict(m) for m in msgs[:-1]], msgs[-1]["content"]
    instruction, output = record.get("instruction"), record.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        raise DataError(
            f"{where}: needs the text fields 'instruction' and 'output' (and optionally 'input' "
            "and 'system'), or a chat 'messages' list"
        )
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(f"{where}: 'input' is {extra!r}, not text")
    prompt: Messages = []
    if isinstance(record.get("system"), str) and record["system"]:
        prompt.append({"role": "system", "content": record["system"]})
    prompt.append(
        {"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction}
    )
    return prompt, output


# ---- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptedTokens(TokenizedText):
    """Token ids of prompt + response rows; the first ``prompt_lengths[i]`` ids of row ``i`` are
    its prompt. ``batch`` (right-padded, for the loss) comes from :class:`TokenizedText`."""

    prompt_lengths: np.ndarray  # int64, one per row

    def targets(self, rows: np.ndarray, width: int) -> torch.Tensor:
        """Next-token targets aligned with ``batch(rows)``: each row's response ids at their
        positions, :data:`IGNORE_INDEX` on the prompt and the padding. Shape (len(rows), width)."""
        out = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for i, r in enumerate(rows):
            start, end, p = self.offsets[r], self.offsets[r + 1], self.prompt_lengths[r]
            out[i, p : end - start] = self.ids[start + p : end]
        return torch.from_numpy(out)

    def prompt_ids(self, row: int) -> np.ndarray:
        return self.ids[self.offsets[row] : self.offsets[row] + self.prompt_lengths[row]]

    def response_ids(self, row: int) -> np.ndarray:
        return self.ids[self.offsets[row] + self.prompt_lengths[row] : self.offsets[row + 1]]


def left_padded(
    rows: Sequence[Sequence[int]], pad_id: int, multiple: int = PAD_MULTIPLE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids padded on the left to a common width (a multiple of ``multiple``)."""
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            input_ids[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


class ChatEncoder:
    """Encodes chats with a tokenizer's chat template, piece by piece.

    A prompt is ``head + content + tail``: the template rendered around the last user message
    (``head`` holds the system prompt and earlier turns, ``tail`` e.g. ``<|im_end|>`` and the
    assistant header). Encoding the pieces separately lets truncation shorten the content alone.
    A response is its text followed by the template's end-of-turn marker, so the model learns to
    stop.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._frames: dict[str, tuple[list[int], list[int]]] = {}
        self.end_of_turn = self._end_of_turn()

    def _render(self, messages: Messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _end_of_turn(self) -> str:
        user = [{"role": "user", "content": "Hi"}]
        prompt = self._render(user, True)
        full = self._render([*user, {"role": "assistant", "content": _MARK}], False)
        if full.startswith(prompt) and full.count(_MARK) == 1:
            before, after = full[len(prompt) :].split(_MARK)
            if not before.strip() and after.strip():
                return after.rstrip()
        return self.tokenizer.eos_token or ""

    def frame(self, messages: Messages) -> tuple[list[int], list[int]]:
        """``(head, tail)`` ids around the last message's content."""
        *context, last = messages
        key = json.dumps([context, last["role"]])
        if key not in self._frames:
            text = self._render([*context, {"role": last["role"], "content": _MARK}], True)
            if text.count(_MARK) != 1:
                raise DataError("the model's chat template does not show the user message once")
            head, tail = text.split(_MARK)
            self._frames[key] = (self.encode_text(head), self.encode_text(tail))
        return self._frames[key]

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The prompt of a chat, ending with the assistant header (what generation continues)."""
        head, tail = self.frame(messages)
        return head + self.encode_text(messages[-1]["content"]) + tail

    def encode(
        self, messages: Sequence[Messages], responses: Sequence[str], max_length: int
    ) -> tuple[list[list[int]], list[int]]:
        """Rows of prompt + response ids at most ``max_length`` long, and each row's prompt length."""
        contents = self.tokenizer([m[-1]["content"] for m in messages], add_special_tokens=False)[
            "input_ids"
        ]
        answers = self.tokenizer(
            [r + self.end_of_turn for r in responses], add_special_tokens=False
        )["input_ids"]
        rows, prompt_lengths = [], []
        for msgs, content, answer in zip(messages, contents, answers, strict=True):
            head, tail = self.frame(msgs)
            room = max_length - len(head) - len(tail) - len(answer)
            prompt = head + content[: max(room, 0)] + tail
            rows.append((prompt + answer)[:max_length])
            prompt_lengths.append(min(len(prompt), max_length))
        return rows, prompt_lengths


def _digest(instructions: Instructions, tokenizer_key: str, max_length: int) -> str:
    h = hashlib.sha256(f"{_FORMAT_VERSION}\0{tokenizer_key}\0{max_length}\0".encode())
    for messages, response in zip(instructions.messages, instructions.responses, strict=True):
        h.update(
            json.dumps([messages, response], ensure_ascii=False).encode("utf-8", "surrogatepass")
        )
        h.update(b"\0")
    return h.hexdigest()[:32]


def tokenize_instructions(
    instructions: Instructions,
    tokenizer,
    tokenizer_key: str,
    max_length: int,
    use_cache: bool = True,
) -> PromptedTokens:
    """Tokenise prompt + response rows (see :class:`ChatEncoder`), reading/writing the cache."""
    from safetensors.numpy import load_file, save_file

    path = (
        cache_dir()
        / "tokens"
        / f"lm-{_digest(instructions, tokenizer_key, max_length)}.safetensors"
    )
    if use_cache and path.is_file():
        try:
            a = load_file(str(path))
            return PromptedTokens(a["ids"], a["offsets"], a["prompt_lengths"])
        except Exception as e:  # a corrupt cache entry is rebuilt, never trusted
            log.warning("ignoring unreadable token cache %s: %s", path, e)
    rows, prompt_lengths = ChatEncoder(tokenizer).encode(
        instructions.messages, instructions.responses, max_length
    )
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
    tokens = PromptedTokens(ids, offsets, np.asarray(prompt_lengths, dtype=np.int64))
    silent = int((lengths <= tokens.prompt_lengths).sum())
    if silent:
        log.warning(
            "%d of %d rows have no room for their response at data.max_length = %d; raise it",
            silent,
            len(rows),
            max_length,
        )
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(
                {"ids": ids, "offsets": offsets, "prompt_lengths": tokens.prompt_lengths}, str(tmp)
            )
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not write the token cache %s: %s", path, e)
    return tokens
