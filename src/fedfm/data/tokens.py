"""Tokenise a text column once, cache it under ``~/.cache/fedfm``, and cut padded batches.

Token ids are stored flat (one int32 array plus row offsets) so that a batch is a few numpy
slices; each batch is padded to its own longest row, not to a global maximum.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

PAD_MULTIPLE = 8  # batch widths are rounded up to a multiple of this


def cache_dir() -> Path:
    """fedfm's cache folder: ``$FEDFM_CACHE``, else ``$XDG_CACHE_HOME/fedfm``, else ``~/.cache/fedfm``."""
    if "FEDFM_CACHE" in os.environ:
        return Path(os.environ["FEDFM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fedfm"


@dataclass(frozen=True)
class TokenizedText:
    """Token ids of many texts: row ``i`` is ``ids[offsets[i]:offsets[i+1]]``."""

    ids: np.ndarray  # int32, all rows concatenated
    offsets: np.ndarray  # int64, len = rows + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(
        self, rows: np.ndarray, pad_id: int, multiple: int = PAD_MULTIPLE
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of shape (len(rows), longest row rounded up to
        ``multiple``), right-padded. Few distinct widths keep the allocator and oneDNN's
        primitive cache from growing with every new shape (flat memory over rounds)."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        width = -(-int((ends - starts).max()) // multiple) * multiple
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            input_ids[i, : e - s] = self.ids[s:e]
            mask[i, : e - s] = 1
        return torch.from_numpy(input_ids), torch.from_numpy(mask)


def _digest(texts: list[str], tokenizer_key: str, max_length: int, special: bool = True) -> str:
    h = hashlib.sha256()
    h.update(f"{tokenizer_key}\0{max_length}\0{len(texts)}\0".encode())
    if not special:
        h.update(b"no special tokens\0")
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:32]


def tokenize(
    texts: list[str],
    tokenizer,
    tokenizer_key: str,
    max_length: int,
    use_cache: bool = True,
    add_special_tokens: bool = True,
) -> TokenizedText:
    """Tokenise ``texts`` (truncated to ``max_length`` tokens), reading/writing the cache;
    ``add_special_tokens = False`` leaves out the tokenizer's BOS/CLS/SEP additions."""
    from safetensors.numpy import load_file, save_file

    digest = _digest(texts, tokenizer_key, max_length, add_special_tokens)
    path = cache_dir() / "tokens" / f"{digest}.safetensors"
    if use_cache and path.is_file():
        try:
            arrays = load_file(str(path))
            return TokenizedText(arrays["ids"], arrays["offsets"])
        except Exception as e:  # a corrupt cache entry is rebuilt, never trusted
            log.warning("ignoring unreadable token cache %s: %s", path, e)
    encoded = tokenizer(
        texts, truncation=True, max_length=max_length, add_special_tokens=add_special_tokens
    )["input_ids"]
    lengths = np.fromiter((len(x) for x in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.fromiter((t for row in encoded for t in row), dtype=np.int32, count=int(offsets[-1]))
    result = TokenizedText(ids, offsets)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({"ids": ids, "offsets": offsets}, str(tmp))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not write the token cache %s: %s", path, e)
    return result
