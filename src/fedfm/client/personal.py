"""Personalisation: what each client keeps for itself (``[personalize] method``).

A :class:`Personalizer` decides which trainable tensors stay on the clients (``task.personal``:
they train with the shared ones but are never sent, so they are not in the template either),
or keeps a whole personal model beside the global one (Ditto). What a client keeps lives in a
:class:`PersonalStore`, one small safetensors file per client (in memory without a folder), so
that a simulation of a thousand clients never holds a thousand copies and a resumed run finds
each client's state as it was at the checkpoint.

Registered rules live in :mod:`fedfm.client.personalizers`; ``none`` is the absence of one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedfm.errors import FedFMError
from fedfm.registry import Registry
from fedfm.state import FitInstructions, State, Update

log = logging.getLogger(__name__)

#: How many rounds of a client's state the store keeps: the newest and the one before, so that a
#: run resumed from the last checkpoint (every round has one) redoes the interrupted round from
#: the state the client had before it.
GENERATIONS = 2


class PersonalStore:
    """Each client's personal tensors, by round: ``save(cid, round, tensors)`` and
    ``load(cid, before)`` (the newest saved in a round before ``before``). On disk under
    ``root`` when given (written atomically), in memory otherwise."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._memory: dict[str, list[tuple[int, dict[str, torch.Tensor]]]] = {}

    def _path(self, client_id: str, generation: int) -> Path:
        assert self.root is not None
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", client_id)[:64]
        digest = hashlib.sha256(client_id.encode()).hexdigest()[:12]  # distinct after cleaning
        return self.root / f"{safe}-{digest}.{generation}.safetensors"

    def _generations(self, client_id: str) -> list[tuple[int, dict[str, torch.Tensor] | Path]]:
        """(round, tensors or their file), newest first."""
        if self.root is None:
            return list(self._memory.get(client_id, []))
        found = []
        for g in range(GENERATIONS):
            path = self._path(client_id, g)
            if path.exists():
                found.append((self._round_of(path), path))
        return sorted(found, key=lambda x: -x[0])

    @staticmethod
    def _round_of(path: Path) -> int:
        try:
            with safe_open(str(path), "pt") as f:
                return int((f.metadata() or {})["round"])
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise FedFMError(f"personal state {path} cannot be read ({e}); delete it") from None

    def load(self, client_id: str, before: int) -> dict[str, torch.Tensor] | None:
        """The client's tensors saved in the newest round < ``before``; None when it has none."""
        for rnd, item in self._generations(client_id):
            if rnd < before:
                if isinstance(item, Path):
                    try:
                        return load_file(str(item))
                    except (SafetensorError, OSError) as e:
                        raise FedFMError(f"personal state {item} cannot be read ({e})") from None
                return item
        return None

    def save(self, client_id: str, round: int, tensors: dict[str, torch.Tensor]) -> None:
        """Keep ``tensors`` as the client's state after ``round``; a state saved for this round
        or a later one (a round redone after a resume) is replaced."""
        kept = [(r, x) for r, x in self._generations(client_id) if r < round]
        kept = kept[: GENERATIONS - 1]
        tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
        if self.root is None:
            self._memory[client_id] = [(round, tensors), *kept]
            return
        self.root.mkdir(parents=True, exist_ok=True)
        keep_path = kept[0][1] if kept else None
        target = next(
            self._path(client_id, g)
            for g in range(GENERATIONS)
            if self._path(client_id, g) != keep_path
        )
        tmp = target.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"round": str(round)})
        os.replace(tmp, target)

    def clients(self) -> list[str]:
        """The clients with a state in memory (a store on disk does not list its files)."""
        return sorted(self._memory)


class Personalizer:
    """The base of ``[personalize]`` rules. Subclasses set what stays on a client.

    The default behaviour fits rules that keep a part of the model (``task.personal``): before a
    client trains or is scored, its part is loaded into the model (or the part's initial value,
    for a client that never trained); after training it is saved; afterwards the model gets the
    initial part back, so the server and the next client never see this client's.
    """

    #: The registered name (``personalize.method``), set by :data:`PERSONALIZERS`.
    name: ClassVar[str]
    #: False when a part of the model exists only on clients (no global model to score).
    has_global_model: ClassVar[bool] = True

    def __init__(self, spec) -> None:
        self.spec = spec
        self.initial: dict[str, torch.Tensor] = {}

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse settings this rule cannot honour (one line naming the key)."""

    def attach(self, task) -> None:
        """Move (or add) the tensors that stay on clients into ``task.personal``; every process
        of a run calls it on its task, so the template is the same everywhere."""
        self.initial = {n: p.detach().clone() for n, p in task.personal.items()}

    # ---- one client ---------------------------------------------------------------------------
    def _load(self, task, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in task.personal.items():
                p.copy_(tensors[n])

    def _own(self, store: PersonalStore, client_id: str, before: int):
        own = store.load(client_id, before)
        if own is None:
            return self.initial
        if set(own) != set(self.initial) or any(own[n].shape != self.initial[n].shape for n in own):
            raise FedFMError(
                f"client {client_id}'s personal state does not fit this model "
                f"(personalize.method = {self.name!r}); was the run's config changed?"
            )
        return own

    def fit(
        self, trainer, client_id: str, index: int, start: State, data, instr: FitInstructions, store
    ) -> Update:
        """Train the shared tensors and this client's own part together; save the part."""
        task = trainer.task
        self._load(task, self._own(store, client_id, instr.round))
        try:
            update = trainer.fit(client_id, index, start, data, instr)
            store.save(client_id, instr.round, {n: p for n, p in task.personal.items()})
        finally:
            self._load(task, self.initial)
        return update

    def evaluate(self, task, client_id: str, rnd: int, state: State, rows, store) -> dict:
        """The client's figures on its held-out ``rows``: ``personal_*`` with its own model, and
        the global model's (``accuracy``, ``loss``) when the run has one."""
        task.set_state(state)
        out: dict[str, float] = {}
        if self.has_global_model:
            out.update(task.evaluate(rows.tokens, rows.labels, rows.rows))
        self._load(task, self._own(store, client_id, rnd + 1))
        try:
            personal = task.evaluate(rows.tokens, rows.labels, rows.rows)
        finally:
            self._load(task, self.initial)
        out.update({f"personal_{k}": v for k, v in personal.items() if k in ("accuracy", "loss")})
        return out


class _PersonalizerRegistry(Registry[type[Personalizer]]):
    def register(self, name: str):
        add = super().register(name)

        def named(cls: type[Personalizer]) -> type[Personalizer]:
            cls.name = name
            return add(cls)

        return named


PERSONALIZERS = _PersonalizerRegistry("personalizer", "personalize.method")


def spread(values: list[float]) -> dict[str, float]:
    """``mean``, ``worst10`` (the mean of the worst tenth of clients, at least one) and ``std``
    of per-client figures (each client counts once, whatever its rows)."""
    a = np.sort(np.asarray(values, dtype=np.float64))
    k = max(1, int(np.ceil(0.1 * len(a))))
    return {"mean": float(a.mean()), "worst10": float(a[:k].mean()), "std": float(a.std())}


def personal_figures(per_client: dict[str, dict[str, float]]) -> dict[str, float]:
    """The round's personalisation figures from each client's evaluation: ``global_accuracy_*``
    (the global model on each client's held-out rows) and ``personal_accuracy_*`` (each
    client's own model; without personalisation, the global one)."""
    out: dict[str, float] = {}
    glob = [m["accuracy"] for m in per_client.values() if "accuracy" in m]
    own = [m.get("personal_accuracy", m.get("accuracy")) for m in per_client.values()]
    own = [v for v in own if v is not None]
    for prefix, values in (("global_accuracy", glob), ("personal_accuracy", own)):
        if values:
            out.update({f"{prefix}_{k}": v for k, v in spread(values).items()})
    return out
