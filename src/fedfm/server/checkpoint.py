"""Checkpoints after every round: global state, strategy state, client codec memory, progress.

Written to a temporary folder and renamed into place, so a crash mid-write never leaves a
half-written checkpoint; the last ``keep`` are kept. Read back with safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedfm.errors import ResumeError
from fedfm.state import State

CHECKPOINTS = "checkpoints"


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
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("round_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint of a run directory, or None if it has none."""
    from safetensors.torch import load_file

    root = run_dir / CHECKPOINTS
    candidates = (
        sorted((p for p in root.glob("round_*") if p.is_dir()), reverse=True)
        if root.is_dir()
        else []
    )
    for path in candidates:
        try:
            progress = json.loads((path / "progress.json").read_text())
            state = load_file(str(path / "state.safetensors"))
            strategy = load_file(str(path / "strategy.safetensors"))
            flat = load_file(str(path / "memory.safetensors"))
        except Exception as e:  # unreadable: try the one before
            raise ResumeError(f"checkpoint {str(path)!r} cannot be read: {e}") from None
        memory: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in flat.items():
            group, _, name = key.partition("::")
            memory.setdefault(group, {})[name] = t
        return Checkpoint(int(progress.pop("round")), State(state), strategy, memory, progress)
    return None
