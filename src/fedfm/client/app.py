"""What a client does with one message: decode the global state, train, encode the update.

Every runtime (in-process simulation, Ray, gRPC) calls :meth:`ClientApp.handle` with the same
bytes; runtimes only move bytes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from fedfm.client.personal import PersonalStore
from fedfm.client.personalizers import NoPersonalization
from fedfm.client.secure import secure_vector, secure_weight
from fedfm.codecs import CodecContext, Pipeline, evaluation, peer_seed
from fedfm.codecs.wire import validate_state
from fedfm.data.tokens import TokenizedText
from fedfm.errors import DataError, ProtocolError
from fedfm.state import FitInstructions, State, Update


@dataclass(frozen=True)
class ClientData:
    """One client's training rows (token ids and labels), and how to draw batches from them."""

    tokens: TokenizedText
    labels: np.ndarray
    rows: np.ndarray  # indices into tokens/labels

    def __len__(self) -> int:
        return len(self.rows)

    def batches(
        self, batch_size: int, steps: int, rng: np.random.Generator, length_grouping: int = 1
    ):
        """``steps`` batches of row indices, epoch by epoch over a fresh permutation each time.

        With ``length_grouping = g > 1``, each epoch's permutation is cut into windows of g
        batches; rows are sorted by length inside a window and the window's batches shuffled.
        Batches then pad to similar lengths (less compute) while staying random across windows,
        like HF's ``group_by_length`` megabatches.
        """
        size = min(batch_size, len(self.rows))
        per_epoch = len(self.rows) // size
        epoch: list[np.ndarray] = []
        for _ in range(steps):
            if not epoch:
                epoch = self._epoch(size, per_epoch, rng, length_grouping)
            yield epoch.pop()

    def _epoch(
        self, size: int, n_batches: int, rng: np.random.Generator, grouping: int
    ) -> list[np.ndarray]:
        order = rng.permutation(self.rows)[: n_batches * size]
        batches: list[np.ndarray] = []
        if grouping <= 1:
            batches = [order[i * size : (i + 1) * size] for i in range(n_batches)]
        else:
            lengths = self.tokens.lengths()
            for start in range(0, n_batches, grouping):
                window = order[start * size : min(start + grouping, n_batches) * size]
                window = window[np.argsort(lengths[window], kind="stable")]
                chunk = [window[i : i + size] for i in range(0, len(window), size)]
                batches.extend(chunk[i] for i in rng.permutation(len(chunk)))
        batches.reverse()  # consumed with pop(): first batch last
        return batches

    def steps_for_epochs(self, epochs: float, batch_size: int) -> int:
        return max(1, math.ceil(epochs * len(self.rows) / min(batch_size, len(self.rows))))


def stage_data(stages, client_id: str, index: int, rnd: int, data: ClientData) -> ClientData:
    """The rows ``client_id`` trains on in round ``rnd``: its rows of the round's stage, then its
    replay rows of earlier stages (with ``mitigation = "replay"``), in one set to batch from."""
    current, replay = stages.training_rows(data.labels, data.rows, rnd, index)
    if len(current) == 0:  # the server selects only clients holding rows of the stage
        raise DataError(
            f"client {client_id} holds no rows of stage {stages.stage_of(rnd)} (round {rnd})"
        )
    return ClientData(data.tokens, data.labels, np.concatenate([current, replay]))


def view_meta(view_round: int | None) -> dict[str, dict[str, torch.Tensor]]:
    """The round of a downlink view, as a group of a sync blob or checkpoint."""
    if view_round is None:
        return {}
    return {"client.meta": {"view_round": torch.tensor([view_round], dtype=torch.int64)}}


def read_view_round(groups: dict[str, dict[str, torch.Tensor]], key: str) -> int | None:
    """The view round of :func:`view_meta` (received bytes: checked); None when absent."""
    meta = groups.get(key)
    if meta is None:
        return None
    value = meta.get("view_round") if isinstance(meta, dict) else None
    if (
        not isinstance(value, torch.Tensor)
        or value.dtype != torch.int64
        or value.shape != (1,)
        or not 0 <= int(value[0]) < 2**31
    ):
        raise ProtocolError(f"{key} holds no valid view_round")
    return int(value[0])


@dataclass(frozen=True)
class ClientTask:
    """One client's work in one round: the downlink payload and the server's instructions."""

    client_id: str
    payload: bytes
    instructions: FitInstructions


#: The name prefixes of per-client groups in a client app's state (see ``client_groups``).
CLIENT_GROUPS = ("client.up.", "client.secure.", "client.audit.")


def trained_rows(groups: dict[str, dict[str, torch.Tensor]]) -> np.ndarray:
    """Every row index some client trained on, from a client app's (or runtime's) state."""
    audit = CLIENT_GROUPS[2]
    found = [v["trained_rows"] for k, v in groups.items() if k.startswith(audit)]
    return np.unique(torch.cat(found).numpy()) if found else np.zeros(0, dtype=np.int64)


class ClientApp:
    """Handles fit messages for the clients whose data this process holds.

    The downlink payload of a round is the same for every client, so it is decoded once per
    round. Codec state kept across rounds: the decoded global state (``view``, the reference
    for delta coding), the downlink decoder's memory, and each client's uplink encoder memory
    (e.g. error-feedback residuals).
    """

    def __init__(
        self,
        trainer,
        data: dict[str, ClientData],
        down: Pipeline,
        up: Pipeline,
        template,
        personal=None,
    ) -> None:
        self.trainer = trainer
        self.data = data
        self.index = {cid: i for i, cid in enumerate(data)}
        self.down = down
        self.up = up
        self.template = template  # names, shapes and dtypes of the shared state
        self.view: State | None = None  # the global state as decoded last time
        self.view_round: int | None = 0  # the round of ``view`` (None: unknown, not checked)
        self.view_memory: dict[str, torch.Tensor] = {}
        self.memory: dict[str, dict[str, torch.Tensor]] = {}  # per-client uplink codec memory
        # Under secure aggregation over the network, the server never decodes an update: each
        # client mirrors the server's uplink decoder memory itself (see secure_input).
        self.secure_memory: dict[str, dict[str, torch.Tensor]] = {}
        self.reports: dict[str, Update] = {}  # the last secure round's public reports
        self._decoded: tuple[int, bytes, State] | None = None
        # Applied in order to the received global state before training: (client_id,
        # client_index, round, state) -> the state this client starts from (e.g. the global
        # LoRA factors cut to a weaker client's rank). Return new tensors, never change the
        # received ones: they are the codecs' reference and the other clients' start.
        self.prepare: list = []
        # Applied in order to a trained state before encoding: (client_id, round, trained,
        # received) -> state, where received is the global state as decoded (before prepare).
        # Attacks and client-side privacy plug in here.
        self.transforms: list = []
        # Federated evaluation: each client's held-out rows (``evaluation.client_split``).
        self.held_out: dict[str, ClientData] = {}
        # ``[personalize]``: the rule (attached to the task when it was built; default none) and
        # where each client's own part is kept (in memory unless a run directory gives a folder).
        self.personal = personal or NoPersonalization(None)
        self.store = PersonalStore()
        self.stages = None  # [continual]: a fedfm.data.stages.Stages (None: every row, always)

    def _receive(self, round: int, payload: bytes) -> State:
        # Equal bytes, not only the same object: Ray actors and network clients get copies, and
        # decoding a delta-coded round twice would move the reference twice.
        if self._decoded is not None and self._decoded[0] == round and self._decoded[1] == payload:
            return self._decoded[2]
        seed = peer_seed(self.trainer.seed, "server")
        ctx = CodecContext(
            round, self.view, self.view_memory, seed, reference_round=self.view_round
        )
        state, _header = self.down.decode(payload, ctx, self.template)
        self.view, self.view_round = state, round
        self._decoded = (round, payload, state)
        return state

    def _train(self, task: ClientTask):
        """Decode, prepare, train, transform: (update, the received state, its codec context)."""
        instr = task.instructions
        state = self._receive(instr.round, task.payload)
        index = self.index[task.client_id]
        start = state
        for prepare in self.prepare:
            start = prepare(task.client_id, index, instr.round, start)
        data = self.data[task.client_id]
        if self.stages is not None:  # [continual]: this round's stage (and replay) rows only
            data = stage_data(self.stages, task.client_id, index, instr.round, data)
        update = self.personal.fit(
            self.trainer, task.client_id, index, start, data, instr, self.store
        )
        for transform in self.transforms:
            update.state = transform(task.client_id, instr.round, update.state, state)
        memory = self.memory.setdefault(task.client_id, {})
        ctx = CodecContext(instr.round, state, memory, peer_seed(self.trainer.seed, task.client_id))
        if instr.uplink_decoded >= 0:  # the server's count: a stateful codec re-bases if it differs
            ctx.peer_decoded = instr.uplink_decoded
        header = {
            "client": task.client_id,
            "num_examples": update.num_examples,
            "metrics": update.metrics,
        }
        return update, state, self.up.encode(update.state, ctx, header)

    def handle(self, task: ClientTask) -> bytes:
        """The uplink payload of one task: a trained update, or an evaluation result."""
        if task.instructions.evaluate:
            return self.evaluate(task)
        return self._train(task)[2]

    def evaluate(self, task: ClientTask) -> bytes:
        """Score the state the server sent on this client's held-out rows (no training)."""
        rows = self.held_out.get(task.client_id)
        if rows is None or len(rows) == 0:
            raise ProtocolError(
                f"client {task.client_id} holds no rows for evaluation "
                "(evaluation.client_split is 0 here)"
            )
        rnd = task.instructions.round
        model = self.trainer.task
        state = evaluation.unpack_request(task.payload, self.template, rnd)
        metrics = self.personal.evaluate(model, task.client_id, rnd, state, rows, self.store)
        return evaluation.pack_result(task.client_id, rnd, len(rows), metrics)

    def secure_input(self, task: ClientTask, uniform_weights: bool) -> np.ndarray:
        """What this client feeds into secure aggregation for one fit task (float64 (d + 2,)).

        The update goes through the uplink codecs and back, exactly as the server would decode
        it (with this client's own copy of the server's uplink decoder memory), then becomes
        :func:`~fedfm.client.secure.secure_vector` against the received state: the same
        numbers a simulated run sums.
        """
        update, state, payload = self._train(task)
        memory = self.secure_memory.setdefault(task.client_id, {})
        seed = peer_seed(self.trainer.seed, task.client_id)
        decoded, _ = self.up.decode(
            payload, CodecContext(task.instructions.round, state, memory, seed), self.template
        )
        weight = secure_weight(uniform_weights, update.num_examples)
        # What the client may state in public beside the masked input (local DP accounting
        # needs its rows and steps): an update without state; an in-process driver reads it.
        self.reports[task.client_id] = Update(
            task.client_id,
            task.instructions.round,
            OrderedDict(),
            update.num_examples,
            {k: v for k, v in update.metrics.items() if k == "steps"},
        )
        return secure_vector(decoded, state, weight, float(update.metrics.get("loss", 0.0)))

    def load_view(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Reset the downlink reference and decoder memory to what up-to-date clients hold (the
        server's ``sync`` blob, for a process that missed rounds); uplink memory is kept."""
        unknown = sorted(set(groups) - {"client.view", "client.view_memory", "client.meta"})
        if unknown:
            raise ProtocolError(f"sync payload holds unknown groups {unknown[:3]}")
        view = groups.get("client.view")
        # Received bytes: the view must be the model's tensors (names, shapes, dtypes, finite).
        view = None if view is None else validate_state(view, self.template)
        view_round = read_view_round(groups, "client.meta")
        self.view, self.view_round = view, view_round
        self.view_memory = dict(groups.get("client.view_memory", {}))
        self._decoded = None

    def client_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        """What this process keeps per client across rounds, one group per client and kind
        (names start with one of :data:`CLIENT_GROUPS`): uplink codec memory, the secure
        decoder mirror, and the rows trained on when an audit records them."""
        groups = {f"client.up.{cid}": mem for cid, mem in self.memory.items()}
        groups.update({f"client.secure.{cid}": m for cid, m in self.secure_memory.items()})
        for cid, rows in (self.trainer.seen or {}).items():
            groups[f"client.audit.{cid}"] = {
                "trained_rows": torch.tensor(sorted(rows), dtype=torch.int64)
            }
        return groups

    def load_client_groups(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore what :meth:`client_groups` returned (other groups are ignored)."""
        prefix, mirror, audit = CLIENT_GROUPS
        self.memory = {k[len(prefix) :]: dict(v) for k, v in groups.items() if k.startswith(prefix)}
        self.secure_memory = {
            k[len(mirror) :]: dict(v) for k, v in groups.items() if k.startswith(mirror)
        }
        if self.trainer.seen is not None:
            self.trainer.seen = {
                k[len(audit) :]: set(v["trained_rows"].tolist())
                for k, v in groups.items()
                if k.startswith(audit)
            }

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        groups: dict[str, dict[str, torch.Tensor]] = {
            "client.view_memory": self.view_memory,
            **view_meta(self.view_round),
        }
        if self.view is not None:
            groups["client.view"] = dict(self.view)
        groups.update(self.client_groups())
        return groups

    def load_state_dict(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        self.view_memory = dict(groups.get("client.view_memory", {}))
        view = groups.get("client.view")
        self.view = None if view is None else OrderedDict((n, view[n]) for n in self.template)
        self.view_round = read_view_round(groups, "client.meta")
        self.load_client_groups(groups)
        self._decoded = None
