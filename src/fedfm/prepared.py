"""What an experiment holds once it is prepared (built by :func:`fedfm.assemble.prepare`).

A plain record, in a module of its own so that plug-ins that work on it (fm4fl's warm-up and
scarce labels, the privacy audit) need not import the assembly that builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedfm.client.app import ClientData
from fedfm.config import ExperimentConfig
from fedfm.data.partition import Partition
from fedfm.data.tokens import TokenizedText
from fedfm.tasks import Task


@dataclass
class Prepared:
    """Everything built from a config before the first round."""

    config: ExperimentConfig
    train: Any  # the task's table: LabelledText, Instructions, ...
    test: Any
    train_tokens: TokenizedText  # PromptedTokens for causal_lm
    test_tokens: TokenizedText
    partition: Partition
    task: Task
    eval_rows: np.ndarray
    startup_seconds: float
    model_loaded_at: float = 0.0  # wall-clock time.time() when the base model was in memory
    attack: Any = None  # an Attack, when [attack] type is set
    malicious: list[str] = field(default_factory=list)
    poisoned: dict[str, ClientData] = field(default_factory=dict)  # data attacks: client → rows
    triggered: tuple[TokenizedText, np.ndarray] | None = None  # backdoor: test rows with trigger
    fm4fl: dict[str, Any] = field(default_factory=dict)  # scarce-label and warm-up reports
    dedup: dict[str, Any] | None = None  # [governance] dedup: the report for dedup.json
    all_rows: Partition | None = None  # scarce labels: every row the clients hold
    labelled_rows: list[np.ndarray] | None = None  # scarce labels: the rows with a true label
    client_task: Task | None = None  # offsite: the clients' emulator (None: the clients train task)
    offsite: dict[str, Any] | None = None  # offsite: the sizes of the full model and emulator
    stages: Any = None  # [continual]: a fedfm.data.stages.Stages (None: no stages)
