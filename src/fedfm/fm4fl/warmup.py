"""Server-side training of the global model before round 1, on what a foundation model provides.

``warmup.source = "transfer"``
    Knowledge distillation: an unlabelled public table (``warmup.data``) is labelled by the
    [teacher]. White-box: the student learns the teacher's soft labels, tempered by
    ``teacher.temperature`` (loss ``T² · CE(p_teacher^(1/T), softmax(z/T))``); black-box: its
    hard labels (rows where it abstained are dropped).
``warmup.source = "synthetic"``
    GPT-FL: the generated set of :mod:`fedfm.fm4fl.synthetic`, verified by
    :mod:`fedfm.fm4fl.verify` against the clients' data (``synthetic.verify``), trained on with its
    prompt labels.

The server trains ``warmup.steps`` steps of the run's optimizer on the run's shared tensors (the
method's: LoRA + head, all weights for ``full``, ...), then federation starts from that state.
The warmed state is cached under ``<cache>/warmup/`` by everything that determines it, so a
resumed run or a Ray actor (which runs :func:`fedfm.assemble.prepare` itself) reads it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from fedfm.client.app import ClientData
from fedfm.client.trainer import Trainer
from fedfm.config import resolve_path
from fedfm.data.table import read_table
from fedfm.data.tokens import cache_dir, tokenize
from fedfm.errors import DataError
from fedfm.fm4fl.synthetic import verified
from fedfm.fm4fl.teacher import build_teacher, teach
from fedfm.state import FitInstructions

if TYPE_CHECKING:
    from fedfm.prepared import Prepared

log = logging.getLogger(__name__)


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``p^(1/T)`` renormalised: the teacher's distribution at temperature ``T``."""
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logp -= logp.max(1, keepdims=True)
    out = np.exp(logp)
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def _cache_key(p: Prepared) -> str:
    c = p.config
    f = c.federation
    identity = {
        "version": 1,
        "seed": c.seed,
        **{s: dataclasses.asdict(getattr(c, s)) for s in ("model", "data", "partition")},
        **{s: dataclasses.asdict(getattr(c, s)) for s in ("teacher", "warmup", "synthetic")},
        "method": [type(c.method).__name__, dataclasses.asdict(c.method)],
        "train": [f.lr, f.optimizer, f.weight_decay, f.precision, f.length_grouping],
    }
    identity["files"] = [_stamp(x) for x in (c.data.train, c.data.test, c.warmup.data)]
    identity["files"] += [_stamp(x) for x in (c.synthetic.file, c.teacher.model)]
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _stamp(path: str) -> list:
    """A configured path as the cache key sees it: resolved, with size and modification time
    (the same config over other data, or a changed file, warms up anew)."""

    if not path:
        return []
    resolved = resolve_path(path)
    if resolved.is_dir():  # a teacher run directory: its summary marks when it finished
        resolved = resolved / "summary.json"
    if not resolved.exists():
        return [str(resolved)]
    stat = resolved.stat()
    return [str(resolved.resolve()), stat.st_size, stat.st_mtime_ns]


def transfer_texts(config) -> list[str]:
    """The unlabelled transfer table's texts: ``warmup.data``, rows offset … offset + rows."""

    w = config.warmup
    table = read_table(resolve_path(w.data), "warmup.data")
    if w.text_column not in table:
        raise DataError(
            f"warmup.text_column = {w.text_column!r} is not a column of {w.data!r}; "
            f"columns: {sorted(table)}"
        )
    texts = [str(t) for t in table[w.text_column][w.offset : w.offset + w.rows]]
    if not texts:
        raise DataError(f"warmup.data = {w.data!r} has no rows after warmup.offset = {w.offset}")
    return texts


def transfer_set(p: Prepared) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """The transfer table's texts and the teacher's targets (soft rows or class indices)."""

    c = p.config
    texts = transfer_texts(c)
    teacher = build_teacher(c, p.train.label_names)
    probs = teach(teacher, texts, c.teacher.calibrate)
    known = probs.sum(1) > 0
    texts = [t for t, k in zip(texts, known, strict=True) if k]
    probs = probs[known]
    info = {"transfer_rows": int(known.sum()), "abstained": int((~known).sum())}
    if c.teacher.access == "white_box":
        return texts, temper(probs, c.teacher.temperature), info
    return texts, probs.argmax(1).astype(np.int64), info


def synthetic_set(p: Prepared) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """The verified synthetic set and its labels."""

    # near-copies are looked for in every row the clients hold, labelled or not
    generated, checked = verified(
        p.config,
        p.train,
        p.all_rows if p.all_rows is not None else p.partition,
        labelled=p.labelled_rows,
    )
    labels = np.asarray(generated.labels, dtype=np.int64)
    info: dict[str, Any] = {"synthetic_file": str(generated.path)}
    if checked is None:
        return generated.texts, labels, {**info, "generated": len(labels), "kept": len(labels)}
    if not len(checked.keep):
        raise DataError(
            f"synthetic data: all {len(labels)} generated samples were dropped by the checks "
            f"({checked.report['dropped']}); raise synthetic.per_label, relax "
            "synthetic.min_words / near_duplicate, or set synthetic.balance = false"
        )
    texts = [generated.texts[i] for i in checked.keep]
    return texts, labels[checked.keep], {**info, **checked.report}


def warm_up(p: Prepared, tokenizer, tokens_key: str) -> dict[str, Any]:
    """Train the global model at the server before round 1 (see the module docstring); the
    task ends in the warmed state. Returns the report (``fm4fl.json``'s ``warmup``)."""
    from safetensors.torch import load_file, save_file

    c, w = p.config, p.config.warmup
    path = cache_dir() / "warmup" / f"{_cache_key(p)}.safetensors"
    if path.is_file() and path.with_suffix(".json").is_file():
        state = load_file(str(path))
        p.task.set_state({n: state[n] for n in p.task.shared})
        return json.loads(path.with_suffix(".json").read_text())
    before = p.task.evaluate(p.test_tokens, p.test.labels, p.eval_rows)["accuracy"]
    t0 = time.perf_counter()
    if w.source == "transfer":
        texts, targets, info = transfer_set(p)
    else:
        texts, targets, info = synthetic_set(p)
    if not texts:
        where = f"warmup.data = {w.data!r}" if w.source == "transfer" else "synthetic.file"
        raise DataError(
            f"warm-up: no training rows are left ({where}: the teacher abstained on every row, "
            "or the set is empty)"
        )
    tokens = tokenize(texts, tokenizer, tokens_key, c.data.max_length)
    data = ClientData(tokens, targets, np.arange(len(texts)))
    f = c.federation
    trainer = Trainer(p.task, f.optimizer, f.weight_decay, c.seed, f.length_grouping)
    instructions = FitInstructions(
        round=0, local_steps=w.steps, lr=w.lr or f.lr, batch_size=w.batch_size
    )
    log.warning("warm-up: %d server steps on %d %s rows", w.steps, len(texts), w.source)
    p.task.temperature = c.teacher.temperature if targets.ndim == 2 else 1.0
    try:
        update = trainer.fit("server", 0, p.task.get_state(), data, instructions)
    finally:
        p.task.temperature = 1.0
    p.task.set_state(update.state)
    after = p.task.evaluate(p.test_tokens, p.test.labels, p.eval_rows)["accuracy"]
    report = {
        "source": w.source,
        "rows": len(texts),
        "soft_targets": bool(targets.ndim == 2),
        "steps": w.steps,
        "loss": update.metrics["loss"],
        "accuracy_before": before,
        "accuracy_after": after,
        "seconds": round(time.perf_counter() - t0, 2),
        **info,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({n: t.contiguous() for n, t in update.state.items()}, str(tmp))
    tmp_json = path.with_suffix(f".{os.getpid()}.tmp.json")
    tmp_json.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp_json, path.with_suffix(".json"))
    os.replace(tmp, path)  # last: the state's presence marks a finished warm-up
    return report
