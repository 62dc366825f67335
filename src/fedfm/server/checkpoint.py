"""Checkpoints after every round: global state, strategy state, client codec memory, progress.

Written to a temporary folder, every file and the folder fsynced, then renamed into place (and
the parent fsynced), so a crash or power loss never leaves a half-written checkpoint; the last
``keep`` are kept. Read back with safetensors only; a newest checkpoint that cannot be read
(a disk fault) is skipped with a warning for the one before it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedfm.errors import ResumeError
from fedfm.state import State

CHECKPOINTS = "checkpoints"

log = logging.getLogger(__name__)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data and entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    round: int
    state: State
    strategy: dict[str, torch.Tensor]
    memory: dict[str, dict[str, torch.Tensor]] = field(
        default_factory=dict
    )  # codec state: group → tensors
    progress: dict[str, Any] = field(default_factory=dict)  # totals so far (bytes, seconds)


def save_checkpoint(run_dir: Path, ckpt: Checkpoint, keep: int = 2) -> Path:
    """Write ``ckpt``; keep the newest ``keep`` checkpoints (0: every one)."""
    from safetensors.torch import save_file

    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round_{ckpt.round:05d}"
    tmp = root / f".tmp_round_{ckpt.round:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in ckpt.state.items()}, str(tmp / "state.safetensors"))
    save_file(
        {k: v.contiguous() for k, v in ckpt.strategy.items()}, str(tmp / "strategy.safetensors")
    )
    memory = {
        f"{group}::{k}": v.contiguous()
        for group, tensors in ckpt.memory.items()
        for k, v in tensors.items()
    }
    save_file(memory, str(tmp / "memory.safetensors"))
    (tmp / "progress.json").write_text(json.dumps({"round": ckpt.round, **ckpt.progress}))
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(root)
    if keep > 0:
        for old in sorted(p for p in root.glob("round_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_of_round(run_dir: Path, rnd: int) -> Checkpoint | None:
    """The checkpoint written after round ``rnd``, or None when the run no longer keeps it."""
    path = run_dir / CHECKPOINTS / f"round_{rnd:05d}"
    if not path.is_dir():
        return None
    return _read([path], run_dir / CHECKPOINTS)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint of a run directory, or None if it has none."""
    root = run_dir / CHECKPOINTS
    candidates = (
        sorted((p for p in root.glob("round_*") if p.is_dir()), reverse=True)
        if root.is_dir()
        else []
    )
    return _read(candidates, root)


def _read(candidates: list[Path], root: Path) -> Checkpoint | None:
    """The first of ``candidates`` that reads (a warning for each one that does not)."""
    from safetensors.torch import load_file

    problems = []
    for path in candidates:
        try:
            progress = json.loads((path / "progress.json").read_text())
            state = load_file(str(path / "state.safetensors"))
            strategy = load_file(str(path / "strategy.safetensors"))
            flat = load_file(str(path / "memory.safetensors"))
            int(progress["round"])
        except Exception as e:  # unreadable: try the one before
            problems.append(f"{path.name}: {e}")
            log.warning("checkpoint %s cannot be read (%s); trying the one before", path, e)
            continue
        memory: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in flat.items():
            group, _, name = key.partition("::")
            memory.setdefault(group, {})[name] = t
        return Checkpoint(int(progress.pop("round")), State(state), strategy, memory, progress)
    if problems:
        raise ResumeError(f"no checkpoint of {str(root)!r} can be read: {'; '.join(problems)}")
    return None
