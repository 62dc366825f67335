"""The one round loop, identical for every runtime:

select → configure → encode (down) → dispatch → decode + validate → aggregate → evaluate →
checkpoint → log.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfm.client.app import ClientTask, read_view_round, view_meta
from fedfm.client.personal import personal_figures
from fedfm.client.secure import secure_round_metrics
from fedfm.codecs import CodecContext, Pipeline, evaluation, peer_seed
from fedfm.codecs.wire import pack_groups
from fedfm.config import LimitsConfig
from fedfm.errors import ConfigError, FedFMError, ProtocolError
from fedfm.metrics.memory import peak_rss_mb
from fedfm.metrics.sinks import Sink
from fedfm.server import admission
from fedfm.server.checkpoint import Checkpoint, save_checkpoint
from fedfm.server.observers import RoundObserver, RoundRecord
from fedfm.state import FitInstructions, State, Update, clone_state
from fedfm.strategies.base import Strategy

log = logging.getLogger(__name__)


class Federation:
    """Runs rounds: the server's whole job, whatever moves the bytes."""

    def __init__(
        self,
        *,
        strategy: Strategy,
        runtime,
        client_ids: Sequence[str],
        clients_per_round: int,
        rounds: int,
        evaluate: Callable[[State, int], dict[str, float]] | None,
        eval_every: int = 1,
        evaluate_on_clients: bool = False,
        down: Pipeline | None = None,
        up: Pipeline | None = None,
        seed: int = 0,
        sinks: Sequence[Sink] = (),
        run_dir: Path | None = None,
        name: str = "run",
        dropout: float = 0.0,
        limits: LimitsConfig | None = None,
        observers: Sequence[RoundObserver] = (),
        keep_checkpoints: int = 2,
    ) -> None:
        self.strategy = strategy
        self.runtime = runtime
        self.client_ids = list(client_ids)
        self.clients_per_round = clients_per_round
        self.rounds = rounds
        self.evaluate = evaluate  # the server's own test set; None: it has none
        self.eval_every = eval_every
        self.evaluate_on_clients = evaluate_on_clients
        self.down = down or Pipeline(())
        self.up = up or Pipeline(())
        self.seed = seed
        self.sinks = list(sinks)
        self.run_dir = run_dir
        self.name = name
        self.dropout = dropout
        self.limits = limits or LimitsConfig()
        self.observers = list(observers)  # see each round after its checkpoint
        self.keep_checkpoints = keep_checkpoints  # the newest N are kept (0: every round's)
        # Clients never selected, whatever the strategy draws (a run retrained without them):
        # the others keep the rounds and seeds they had.
        self.excluded: frozenset[str] = frozenset()
        self.holding = lambda rnd, ids: ids  # [continual]: who holds rows of rnd's stage
        self._before: State | None = None  # this round's starting global state
        self._payloads: dict[str, bytes] = {}  # this round's admitted uploads
        self.start_info: dict[str, Any] = {}  # extra fields of the sinks' start event
        self.rows: list[dict[str, Any]] = []
        self.totals: dict[str, Any] = {"bytes_up": 0, "bytes_down": 0, "seconds": 0.0}
        self.rejected: list[dict[str, Any]] = []
        # Codec state that must survive across rounds (and resumes):
        self.client_view: State | None = None  # the global state as clients decoded it last round
        self.view_round: int | None = 0  # the round of client_view (None: an old checkpoint's)
        self.down_memory: dict[str, torch.Tensor] = {}  # downlink encoder
        self.view_memory: dict[str, torch.Tensor] = {}  # our copy of the clients' downlink decoder
        self.up_memory: dict[str, dict[str, torch.Tensor]] = {}  # uplink decoder, per client

    def run(self, state: State, start_round: int = 1) -> State:
        """Rounds ``start_round … rounds`` from ``state``; returns the final global state."""
        template = clone_state(state)
        info = {
            "name": self.name,
            "rounds": self.rounds,
            "start_round": start_round,
            "clients": len(self.client_ids),
            **self.start_info,
        }
        for sink in self.sinks:
            sink.start(info)
        for rnd in range(start_round, self.rounds + 1):
            state = self.round(rnd, state, template)
        return state

    def round(self, rnd: int, state: State, template: State) -> State:
        t0 = time.perf_counter()
        self._before, self._payloads = state, {}
        rng = np.random.default_rng([self.seed, rnd, 0x5E1EC7])
        candidates = self.holding(rnd, self.runtime.available(self.client_ids))
        k = min(self.clients_per_round, len(candidates))
        selected = self.strategy.select(rnd, candidates, k, rng)
        selected = [c for c in selected if c not in self.excluded]
        seed = peer_seed(self.seed, "server")
        self.runtime.prepare_round(rnd, self._sync_source() if self.down.stateful else None)
        reference = self.view_round
        down_ctx = CodecContext(
            rnd, self.client_view, self.down_memory, seed, reference_round=reference
        )
        down_payload = self.down.encode(state, down_ctx, {"kind": "global"})
        # What every client holds after decoding: the reference for uplink deltas and next round.
        view_ctx = CodecContext(
            rnd, self.client_view, self.view_memory, seed, reference_round=reference
        )
        self.client_view, _ = self.down.decode(down_payload, view_ctx, template)
        self.view_round = rnd
        # Simulated faults: a share of the selected clients drop out and never answer.
        dropped = []
        if self.dropout > 0:
            n_drop = int(round(self.dropout * len(selected)))
            dropped = sorted(
                selected[i] for i in rng.choice(len(selected), size=n_drop, replace=False)
            )
        tasks = [
            ClientTask(cid, down_payload, self._fit_instructions(rnd, cid))
            for cid in selected
            if cid not in dropped
        ]
        if self.strategy.masks_updates:  # one driver: the runtime's clients are the parties
            return self._secure_round(rnd, state, template, selected, dropped, tasks, t0)

        updates: list[Update] = []
        bytes_up = 0
        for done, (cid, result) in enumerate(self.runtime.dispatch(tasks), start=1):
            for sink in self.sinks:
                sink.client_done(rnd, done, len(tasks))
            if isinstance(result, Exception):
                self._reject(rnd, cid, result)
                continue
            bytes_up += len(result)
            update = self._admit(rnd, cid, result, template)
            if update is not None:
                updates.append(update)

        # Aggregate in selection order, whatever order the network delivered them in: float sums
        # then do not depend on timing, and a network run reproduces the simulated one exactly.
        order = {cid: i for i, cid in enumerate(selected)}
        updates.sort(key=lambda u: order[u.client_id])
        strategy_metrics: dict[str, float] = {}
        secagg_down = 0
        updates = admission.cap_weights(updates, self.limits.max_client_weight)
        if updates:
            self.strategy.dropped(rnd, dropped)
            aggregate = self.strategy.aggregate(rnd, state, updates)
            if admission.finite_state(aggregate):
                state = aggregate
            else:  # never let one round's overflow poison every later one
                log.error(
                    "round %d: the aggregate is not finite; the global state is unchanged", rnd
                )
            strategy_metrics = self.strategy.round_metrics()
            if "secagg_bytes_up" in strategy_metrics:  # under secure aggregation the uplink is
                bytes_up = int(strategy_metrics["secagg_bytes_up"])  # the protocol's messages
                secagg_down = int(strategy_metrics["secagg_bytes_down"])
        else:
            log.warning("round %d: no valid update arrived; the global state is unchanged", rnd)

        bytes_down = len(down_payload) * len(tasks) + secagg_down + self.runtime.take_extra_bytes()
        extra = {"dropped": dropped, **strategy_metrics}
        # Under secure aggregation the loss, too, is what the server may learn: the summed one.
        loss = strategy_metrics.get("secagg_loss")
        self._log_round(rnd, state, updates, bytes_up, bytes_down, t0, extra, loss=loss)
        return state

    def _secure_round(self, rnd, state, template, selected, dropped, tasks, t0) -> State:
        """A round whose clients mask their updates: the runtime carries the protocol (its
        clients are the parties, in this process or over the network), the strategy gets only
        the sum. ``dropped`` clients share keys, then vanish (as simulated)."""
        if not self.runtime.carries_secure_aggregation:
            raise ConfigError(
                f"secagg.enabled = true: the {type(self.runtime).__name__} runtime does not "
                "carry secure aggregation"
            )
        dimension = sum(t.numel() for t in template.values()) + 2  # + w·loss, w
        protocol = self.strategy.secagg_server(rnd, len(selected), dimension, secrets.token_hex(8))

        def progress(done: int, total: int) -> None:
            for sink in self.sinks:
                sink.client_done(rnd, done, total)

        outcome = self.runtime.secure_dispatch(rnd, tasks, selected, protocol, progress)
        for cid, error in outcome.failures:
            self._reject(rnd, cid, error)
        metrics = secure_round_metrics(outcome.bytes_up, outcome.bytes_down, outcome.seconds)
        metrics["secagg_survivors"] = float(len(outcome.survivors))
        reference = self.client_view if self.client_view is not None else state
        state = self.strategy.aggregate_secure(
            rnd, state, reference, outcome.sum, metrics, outcome.reports
        )
        strategy_metrics = self.strategy.round_metrics()
        bytes_down = len(tasks[0].payload) * len(tasks) if tasks else 0
        bytes_down += outcome.bytes_down + self.runtime.take_extra_bytes()
        extra = {"dropped": dropped, **strategy_metrics}
        loss = strategy_metrics.get("secagg_loss", float("nan"))
        self._log_round(
            rnd, state, [], outcome.bytes_up, bytes_down, t0, extra, outcome.survivors, loss
        )
        return state

    def _log_round(
        self,
        rnd: int,
        state: State,
        updates: list[Update],
        bytes_up: int,
        bytes_down: int,
        t0: float,
        extra: dict[str, Any],
        clients: list[str] | None = None,
        loss: float | None = None,
    ) -> None:
        """Evaluate (when due), write the round's row to the sinks, then checkpoint.

        ``clients`` and ``loss`` default to the updates' ids and their weighted mean loss (a
        secure round has no updates, only the sum)."""
        metrics: dict[str, float] = {}
        client_eval: dict[str, Any] = {}
        if rnd % self.eval_every == 0 or rnd == self.rounds:
            if self.evaluate is not None:
                metrics = self.evaluate(state, rnd)
            if self.evaluate_on_clients:
                client_eval = self.client_evaluation(rnd, state, everyone=rnd == self.rounds)
                if self.evaluate is None:  # the clients' figures (own models' if no global one)
                    glob = client_eval.get("client_accuracy") is not None
                    key = "client_" if glob else "client_personal_"
                    metrics = {m: client_eval.get(key + m) for m in ("accuracy", "loss")}
        self.totals["bytes_up"] += bytes_up
        self.totals["bytes_down"] += bytes_down
        tokens = self._count_tokens(updates)
        weights = [u.num_examples for u in updates]
        if loss is None:
            loss = (
                float(np.average([u.metrics.get("loss", np.nan) for u in updates], weights=weights))
                if updates
                else float("nan")
            )
        row = {
            "round": rnd,
            "accuracy": metrics.get("accuracy"),
            "loss": loss,
            "eval_loss": metrics.get("loss"),
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "tokens": tokens,
            "clients": [u.client_id for u in updates] if clients is None else list(clients),
            "rejected": [
                r["client"] for r in self.rejected if r["round"] == rnd and "what" not in r
            ],
            **{k: v for k, v in metrics.items() if k not in ("accuracy", "loss")},
            **client_eval,
            **extra,
        }
        row["round_seconds"] = time.perf_counter() - t0
        row["peak_rss_mb"] = peak_rss_mb()
        self.totals["seconds"] += row["round_seconds"]
        self.rows.append(row)
        for sink in self.sinks:
            sink.round(row)
        # After the row is logged: a resume redoes any round whose checkpoint is missing.
        path = None
        if self.run_dir is not None:
            memory = {**self.memory_state(), **self.runtime.state_dict()}
            ckpt = Checkpoint(rnd, state, self.strategy.state_dict(), memory, dict(self.totals))
            path = save_checkpoint(self.run_dir, ckpt, self.keep_checkpoints)
        if self.observers:
            before = self._before if self._before is not None else state
            payloads = {u.client_id: self._payloads.get(u.client_id, b"") for u in updates}
            signed = self.runtime.upload_signatures(payloads)
            record = RoundRecord(rnd, before, state, list(updates), payloads, row, path, signed)
            for observer in self.observers:
                observer.round(record)

    def _count_tokens(self, updates: list[Update]) -> int:
        """The tokens this round's clients trained on (their reported ``tokens``), added to the
        run's totals, overall and per client."""
        per_client = self.totals.setdefault("tokens_per_client", {})
        counts = [(u.client_id, int(u.metrics.get("tokens", 0))) for u in updates]
        for cid, n in counts:
            per_client[cid] = per_client.get(cid, 0) + n
        total = sum(n for _, n in counts)
        self.totals["tokens"] = self.totals.get("tokens", 0) + total
        return total

    def client_evaluation(self, rnd: int, state: State, everyone: bool) -> dict[str, Any]:
        """Federated evaluation: clients score ``state`` on their own held-out rows; the figures
        are example-weighted means (``client_accuracy``, ``client_loss``, ...) and each client's
        own (``client_eval``). ``clients_per_round`` clients drawn afresh, or every available
        client (``everyone``, the last round). Bytes are counted apart from training's."""
        candidates = self.runtime.available(self.client_ids)
        if everyone:
            chosen = list(candidates)
        else:
            rng = np.random.default_rng([self.seed, rnd, 0xE7A1])
            k = min(self.clients_per_round, len(candidates))
            chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), k, replace=False))]
        payload = evaluation.pack_request(state, rnd)
        asked = FitInstructions(round=rnd, local_steps=0, lr=0.0, batch_size=1, evaluate=True)
        results: dict[str, tuple[int, dict[str, float]]] = {}
        bytes_up = 0
        tasks = [ClientTask(cid, payload, asked) for cid in chosen]
        for cid, reply in self.runtime.evaluate(tasks):
            if isinstance(reply, Exception):
                self._reject(rnd, cid, reply, "evaluation")
                continue
            bytes_up += len(reply)
            try:
                results[cid] = evaluation.unpack_result(reply, cid, rnd)
            except ProtocolError as e:
                self._reject(rnd, cid, e, "evaluation")
        out: dict[str, Any] = {
            "client_eval_bytes_down": len(payload) * len(tasks),
            "client_eval_bytes_up": bytes_up,
        }
        if not results:
            log.warning("round %d: no client returned an evaluation", rnd)
            return {**out, "client_accuracy": None, "client_loss": None, "client_eval": {}}
        ordered = [results[c] for c in chosen if c in results]
        weights = np.array([n for n, _ in ordered], dtype=np.float64)
        shared = set.intersection(*(set(m) for _, m in ordered))
        for key in sorted(shared):
            mean = float(np.average([m[key] for _, m in ordered], weights=weights))
            out[f"client_{key}"] = mean
        out["client_eval_examples"] = int(weights.sum())
        out["client_eval"] = {
            c: {**results[c][1], "examples": results[c][0]} for c in chosen if c in results
        }
        out.update(personal_figures({c: m for c, (_, m) in results.items()}))
        return out

    def _sync_source(self):
        """What a client that missed rounds needs before this round's downlink: the view and
        decoder memory every up-to-date client holds (packed lazily, only if asked)."""
        view = None if self.client_view is None else dict(self.client_view)
        memory = dict(self.view_memory)  # codecs replace memory tensors, never write into them
        meta = view_meta(self.view_round)

        def pack() -> bytes:
            groups = {"client.view_memory": memory, **meta}
            if view is not None:
                groups["client.view"] = view
            return pack_groups(groups)

        return pack

    def _admit(self, rnd: int, cid: str, payload: bytes, template: State) -> Update | None:
        """Decode and check one upload; a bad one is rejected and logged, never raised: the
        round goes on. Only an admitted update is stored by the runtime (for a resume)."""
        try:
            update = self._decode(rnd, cid, payload, template)
        except ProtocolError as e:
            self._reject(rnd, cid, e)
            return None
        except Exception as e:  # a decoder bug must not let one client stop the server
            log.debug("round %d: decoding client %s's upload failed", rnd, cid, exc_info=True)
            self._reject(rnd, cid, ProtocolError(f"undecodable upload ({type(e).__name__}: {e})"))
            return None
        self.runtime.keep(rnd, cid, payload)
        self._payloads[cid] = payload
        return update

    def _fit_instructions(self, rnd: int, cid: str) -> FitInstructions:
        """The strategy's instructions, plus how many of ``cid``'s uplink payloads the server
        decoded (a stateful uplink codec re-bases when its count differs: a lost upload)."""
        instructions = self.strategy.configure_fit(rnd, cid)
        if self.strategy.masks_updates:  # no per-client decoder on this side
            return instructions
        decoded = self.up.acknowledged(self.up_memory.get(cid, {}))
        if decoded is None:
            return instructions
        return dataclasses.replace(instructions, uplink_decoded=decoded)

    def _decode(
        self, rnd: int, cid: str, payload: bytes, template: State, reference: State | None = None
    ) -> Update:
        """Decode and validate one uplink payload; ``reference`` defaults to this round's view."""
        memory = dict(self.up_memory.get(cid, {}))  # kept only if the payload decodes
        view = self.client_view if reference is None else reference
        ctx = CodecContext(rnd, view, memory, peer_seed(self.seed, cid))
        new_state, header = self.up.decode(payload, ctx, template)
        self.up_memory[cid] = memory  # decoded: the sender's encoder moved on alike
        if header.get("client") != cid:
            raise ProtocolError(
                f"payload names client {str(header.get('client'))[:80]!r}, it came from {cid!r}"
            )
        n = admission.check_examples(header.get("num_examples"), self.limits)
        metrics = admission.check_metrics(header.get("metrics"))
        admission.check_values(new_state, view, self.limits)
        return Update(cid, rnd, new_state, n, metrics)

    def memory_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The server's codec state, by group, for checkpoints."""
        groups = {"server.down": self.down_memory, "server.view_memory": self.view_memory}
        if self.view_round is not None:
            groups["server.meta"] = view_meta(self.view_round)["client.meta"]
        if self.client_view is not None:
            groups["server.view"] = dict(self.client_view)
        groups.update({f"server.up.{cid}": mem for cid, mem in self.up_memory.items()})
        return groups

    def load_memory_state(
        self, groups: dict[str, dict[str, torch.Tensor]], template: State
    ) -> None:
        """Restore :meth:`memory_state` (and the runtime's client-side part) from a checkpoint."""
        self.down_memory = dict(groups.get("server.down", {}))
        self.view_memory = dict(groups.get("server.view_memory", {}))
        view = groups.get("server.view")
        self.client_view = None if view is None else OrderedDict((n, view[n]) for n in template)
        self.view_round = read_view_round(groups, "server.meta")
        prefix = "server.up."
        self.up_memory = {
            k[len(prefix) :]: dict(v) for k, v in groups.items() if k.startswith(prefix)
        }
        self.runtime.load_state_dict({k: v for k, v in groups.items() if k.startswith("client.")})

    def _reject(self, rnd: int, cid: str, error: Exception, what: str = "update") -> None:
        reason = str(error) if isinstance(error, FedFMError) else f"{type(error).__name__}: {error}"
        log.warning("round %d: rejected client %s (%s): %s", rnd, cid, what, reason)
        entry = {"round": rnd, "client": cid, "reason": reason}
        if what != "update":
            entry["what"] = what
        self.rejected.append(entry)
