"""Kept updates (``[governance] keep_updates``): each round's admitted client updates and the
global state they started from, one safetensors file per round in ``<run_dir>/updates/``.

From them the aggregate of any subset of a round's clients is rebuilt without retraining
(:meth:`KeptRound.aggregate`): the example-weighted mean of the subset's states, which is the
round's own aggregate for FedAvg-style strategies. ``fedfm contrib`` and ``fedfm unlearn
--method replay`` read them; the files hold only safetensors (no pickle) and are written
atomically, so a crash leaves either the whole round or none of it.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedfm.errors import DataError
from fedfm.server.observers import RoundObserver, RoundRecord
from fedfm.state import State

UPDATES = "updates"


@dataclass
class KeptRound:
    """One round as the server saw it: the starting global state, the clients' new states and
    their example counts, and the global state the round ended with."""

    round: int
    before: State
    clients: list[str]  # in selection order
    states: dict[str, State]
    examples: dict[str, int]
    metrics: dict[str, dict[str, float]]
    after: State

    def aggregate(self, subset: Iterable[str], base: State | None = None) -> State:
        """``base`` (default: the round's start) moved by the example-weighted mean of the
        subset's updates (each client's state minus the round's start); the empty subset leaves
        ``base`` as it is. With ``base = before`` and every client it is FedAvg's aggregate."""
        members = [c for c in self.clients if c in set(subset)]
        start = self.before if base is None else base
        if not members:
            return OrderedDict((n, t.clone()) for n, t in start.items())
        total = float(sum(self.examples[c] for c in members))
        out: State = OrderedDict()
        for name, ref in start.items():
            acc = ref.to(torch.float32).clone()
            for c in members:
                delta = self.states[c][name].to(torch.float32) - self.before[name].to(torch.float32)
                acc.add_(delta, alpha=self.examples[c] / total)
            out[name] = acc.to(ref.dtype)
        return out

    def delta(self, client: str) -> State:
        """One client's update: its state minus the round's start, in float32."""
        return OrderedDict(
            (n, self.states[client][n].float() - self.before[n].float()) for n in self.before
        )


def round_path(run_dir: Path, rnd: int) -> Path:
    """Where round ``rnd``'s kept updates are (``updates/round_NNNNN.safetensors``)."""
    return run_dir / UPDATES / f"round_{rnd:05d}.safetensors"


class KeepUpdates(RoundObserver):
    """Writes each round's :class:`KeptRound` (not for secure rounds: the server has no
    individual updates to keep)."""

    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / UPDATES
        self.root.mkdir(parents=True, exist_ok=True)

    def round(self, record: RoundRecord) -> None:
        tensors = {f"before/{n}": t.contiguous() for n, t in record.before.items()}
        tensors.update({f"after/{n}": t.contiguous() for n, t in record.after.items()})
        clients = []
        for i, u in enumerate(record.updates):
            clients.append(
                {"id": u.client_id, "examples": int(u.num_examples), "metrics": u.metrics}
            )
            tensors.update({f"client{i}/{n}": t.contiguous() for n, t in u.state.items()})
        meta = {"round": str(record.round), "clients": json.dumps(clients)}
        final = round_path(self.root.parent, record.round)
        tmp = final.with_name(f".tmp_{final.name}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, final)


def kept_rounds(run_dir: Path) -> list[int]:
    """The rounds whose updates ``run_dir`` kept, in order."""
    root = Path(run_dir) / UPDATES
    if not root.is_dir():
        return []
    return sorted(int(p.stem.split("_")[1]) for p in root.glob("round_*.safetensors"))


def load_round(run_dir: Path, rnd: int) -> KeptRound:
    path = round_path(Path(run_dir), rnd)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            clients = json.loads(meta["clients"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as e:
        raise DataError(f"kept updates {str(path)!r} cannot be read: {e}") from None

    def group(prefix: str) -> State:
        return OrderedDict(
            (k[len(prefix) :], t) for k, t in tensors.items() if k.startswith(prefix)
        )

    before = group("before/")
    order = list(before)
    ids = [c["id"] for c in clients]
    states = {}
    for i, cid in enumerate(ids):
        s = group(f"client{i}/")
        states[cid] = OrderedDict((n, s[n]) for n in order)
    after = group("after/")
    return KeptRound(
        rnd,
        before,
        ids,
        states,
        {c["id"]: int(c["examples"]) for c in clients},
        {c["id"]: c.get("metrics", {}) for c in clients},
        OrderedDict((n, after[n]) for n in order),
    )


def iter_rounds(run_dir: Path, rounds: Sequence[int] | None = None) -> Iterator[KeptRound]:
    """The kept rounds of ``run_dir`` (all, or ``rounds``), loaded one at a time."""
    for rnd in kept_rounds(run_dir) if rounds is None else rounds:
        yield load_round(run_dir, rnd)


def require_kept(run_dir: Path) -> list[int]:
    """The kept rounds, or a :class:`DataError` that says which option keeps them."""
    rounds = kept_rounds(run_dir)
    if not rounds:
        raise DataError(
            f"{str(run_dir)!r} kept no client updates: run it with [governance] keep_updates = "
            "true (--set governance.keep_updates=true)"
        )
    return rounds
