"""Checkpoints survive a damaged newest one (issue #16, finding 7)."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import pytest
import torch

from fedfm.errors import ResumeError
from fedfm.server import checkpoint
from fedfm.server.checkpoint import Checkpoint, latest_checkpoint, save_checkpoint


def save(run_dir, rnd: int) -> None:
    state = OrderedDict(w=torch.full((2, 2), float(rnd)))
    save_checkpoint(run_dir, Checkpoint(rnd, state, {}, {"g": {"m": torch.ones(1)}}, {"s": 1.0}))


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    save(tmp_path, 1)
    save(tmp_path, 2)
    newest = tmp_path / "checkpoints" / "round_00002" / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[:20])  # torn by a disk fault
    with caplog.at_level(logging.WARNING):
        ckpt = latest_checkpoint(tmp_path)
    assert ckpt.round == 1 and torch.equal(ckpt.state["w"], torch.ones(2, 2))
    assert torch.equal(ckpt.memory["g"]["m"], torch.ones(1))
    assert any("round_00002" in r.getMessage() for r in caplog.records)


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    save(tmp_path, 1)
    (tmp_path / "checkpoints" / "round_00001" / "progress.json").write_text("{")
    with pytest.raises(ResumeError, match="no checkpoint .* can be read: round_00001"):
        latest_checkpoint(tmp_path)


def test_every_file_and_folder_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    save(tmp_path, 1)
    assert len(synced) == 4 + 1 + 1  # four files, the folder, and checkpoints/ after the rename
