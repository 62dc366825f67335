"""The Task interface and its registry (``[task] type``).

A task is what is learned and how it is scored: it loads its data tables, builds the model
around a method-adapted base, tokenises, computes the training loss and scores. Every runtime
and every entry point (``fedfm run``, ``serve``, ``join``, Ray workers) builds a task through
:data:`TASKS` and the class methods below, so a new task runs everywhere without touching them.

What every task shares: its shared tensors (``self.shared``, the trainable parameters in model
order), their state as a :data:`State`, parameter counts and the precision context.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fedfm.config import CAUSAL_LM_LORA_TARGETS, check
from fedfm.data.tokens import TokenizedText
from fedfm.registry import Registry, spec_name
from fedfm.state import State


class SharedStateTask:
    """Mixin: subclasses set ``self.model``, ``self.shared`` and ``self.precision``."""

    model: torch.nn.Module
    shared: OrderedDict[str, torch.nn.Parameter]
    precision: str
    #: Trainable tensors that stay on each client and never travel (``[personalize]``: e.g. a
    #: local head); not in the state. A personalizer assigns a new dict, never changes this one.
    personal: OrderedDict[str, torch.nn.Parameter] = OrderedDict()
    #: The ``[personalize]`` rule of the run (:class:`fedfm.client.personal.Personalizer`).
    personalizer: Any = None

    def adapt(self, model: torch.nn.Module, method, seed: int) -> None:
        """Freeze ``model``, let ``method`` wrap it (seeded: peft's LoRA A init) and share its
        trainable parameters, in model order."""
        torch.manual_seed(seed)
        for p in model.parameters():
            p.requires_grad_(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model = method.wrap(model)
        self.shared = OrderedDict(
            (n, p) for n, p in self.model.named_parameters() if p.requires_grad
        )

    def get_state(self) -> State:
        return OrderedDict((n, p.detach().clone()) for n, p in self.shared.items())

    @torch.no_grad()
    def set_state(self, state: State) -> None:
        for n, p in self.shared.items():
            p.copy_(state[n])

    def trainable(self) -> list[torch.nn.Parameter]:
        """What a client's optimizer trains: the shared tensors, then the personal ones."""
        return [*self.shared.values(), *self.personal.values()]

    def num_params(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        total = sum(p.numel() for p in self.model.parameters())
        return sum(p.numel() for p in self.shared.values()), total

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()


class Task(SharedStateTask):
    """A registered task. Subclasses implement the class methods (data and construction) and the
    instance methods (compute and export); ``Data`` tables have ``labels`` (int64 groups, for
    partitions and scoring), ``label_names`` and ``columns``, and ``len()``.
    """

    #: The registered name (``task.type``), set by :data:`TASKS`.
    name: ClassVar[str]
    #: True when every client must know the label set before it reads its own rows (the server
    #: sends it as ``data.labels``); False when labels only group rows (e.g. instruction tuning).
    shares_label_set: ClassVar[bool] = True
    #: True when a run's model writes text (``fedfm generate``): see :meth:`generate_text`.
    generates: ClassVar[bool] = False
    #: The name prefix of the classifier head's tensors (``personalize.method = "local_head"``);
    #: empty when the task has no separate head.
    head_prefix: ClassVar[str] = ""
    #: True when each training row is one document whose text :meth:`row_texts` gives (what
    #: cross-client deduplication compares); False when rows are not documents (packed blocks).
    has_row_texts: ClassVar[bool] = False

    # ---- config -------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Refuse settings this task cannot honour (one line naming the key), or fill in its own
        defaults; called once when an experiment config is built."""

    # ---- data ---------------------------------------------------------------------------------
    @classmethod
    def load_splits(cls, config) -> tuple[Any, Any]:
        """(train, test) tables of an experiment, checked; test uses train's label names."""
        raise NotImplementedError

    @classmethod
    def row_texts(cls, table: Any) -> list[str]:
        """The text of each row of a table (tasks with ``has_row_texts``)."""
        raise NotImplementedError

    @classmethod
    def load_test(cls, config) -> Any:
        """The test table alone (a server that holds no training rows)."""
        raise NotImplementedError

    @classmethod
    def empty_table(cls, label_names: tuple[str, ...]) -> Any:
        """A table with no rows (a server that holds no data: the clients evaluate)."""
        raise NotImplementedError

    @classmethod
    def load_client_rows(cls, config, path: Path, field: str) -> Any:
        """One network client's own table, read with the experiment's columns and label set."""
        raise NotImplementedError

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, method, label_names: tuple[str, ...]) -> Task:
        """Load the base model, adapt it with ``method`` and build the task."""
        raise NotImplementedError

    @classmethod
    def test_counts(cls, table: Any) -> dict[str, int]:
        """How big the held-out table is, for ``summary.json`` (``test_rows``: its rows)."""
        return {"test_rows": len(table)}

    def tokenize(self, table: Any) -> TokenizedText:
        """Token ids of a table's rows (cached on disk by content)."""
        raise NotImplementedError

    # ---- compute ------------------------------------------------------------------------------
    def loss(self, tokens: TokenizedText, labels: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(
        self, tokens: TokenizedText, labels: np.ndarray, rows: np.ndarray | None = None
    ) -> dict[str, float]:
        """``accuracy`` and ``loss`` (and any other figure) over ``rows`` (default: all)."""
        raise NotImplementedError

    def export(self, out: Path, label_names: tuple[str, ...]) -> Path:
        """Save what was trained where users load it from."""
        raise NotImplementedError

    @classmethod
    def generate_text(
        cls,
        run_dir: Path,
        config,
        prompts: list[str],
        max_new_tokens: int,
        temperature: float | None,
        seed: int,
    ) -> list[str]:
        """Text written by a finished run's model for each prompt (tasks with ``generates``)."""
        raise NotImplementedError

    @classmethod
    def load_trained(cls, run_dir: Path, config) -> tuple[Any, torch.nn.Module]:
        """A finished run's ``(tokenizer, causal LM)`` in eval mode, any peft adapter applied
        (tasks with ``generates``; ``fedfm export --merged`` saves it as one HF folder)."""
        raise NotImplementedError


class _TaskRegistry(Registry[type[Task]]):
    def register(self, name: str):
        add = super().register(name)

        def named(cls: type[Task]) -> type[Task]:
            cls.name = name
            return add(cls)

        return named


TASKS = _TaskRegistry("task", "task.type")


def check_decoder(config, task: str) -> None:
    """What the decoder tasks (``causal_lm``, ``lm``) share: LoRA's default targets become Llama's
    attention names (q_proj, v_proj); no data attacks and no example-level DP, which assume
    labelled classification rows."""
    method = config.method
    if spec_name(method) == "lora" and method.target_modules == type(method)().target_modules:
        replaced = dataclasses.replace(method, target_modules=CAUSAL_LM_LORA_TARGETS)
        object.__setattr__(config, "method", replaced)
    check(
        config.attack.type not in ("label_flip", "backdoor"),
        "attack.type",
        config.attack.type,
        f"an update attack ('none', 'sign_flip', 'scale', 'noise') with task.type = {task!r}",
    )
    check(
        config.privacy.dp != "local",
        "privacy.dp",
        config.privacy.dp,
        f"'none', 'central' or 'distributed' with task.type = {task!r}",
    )
