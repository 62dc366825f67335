"""Example-level DP-SGD on each client (``privacy.dp = "local"``), through opacus.

Each client trains with DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"):
opacus' ``GradSampleModule`` hooks compute per-example gradients of the trainable parameters,
and its ``DPOptimizer`` clips each example's gradient to ``privacy.clip_norm`` (L2, over all
trainable tensors together), adds N(0, σ²·clip_norm²) to their sum and divides by the batch size
before the client's own optimizer (AdamW, Adam or SGD) steps. The unit of privacy is one training
example of one client; the adversary may see every update a client sends, so no amplification by
client sampling or by secure aggregation is claimed.

Which methods work (checked against per-example gradients computed one example at a time):

* ``lora`` (peft LoRA on linear layers, with or without ``freeze_a``) and ``head``: the
  trainable tensors live in ``nn.Linear`` layers, for which opacus has exact per-example rules.
* ``adapter`` (peft IA3): the scaling vectors sit in an ``nn.ParameterDict`` that is never
  called as a module, so opacus' hooks never see them.
* ``prompt`` (peft prompt tuning): peft embeds the soft prompt once and broadcasts it over the
  batch, so opacus sees a batch of one.
* ``full``: BERT's position embeddings are broadcast over the batch the same way, its pooler
  gets no gradient, and per-example gradients of every encoder weight would take batch × the
  model's size in memory.

Precision: under ``federation.precision = "bf16"`` the hooks work, but the per-example gradients
of autocast layers come out in bfloat16 and opacus would compute their norms — hence the clip
factors — in bfloat16, so a clipped example can exceed ``clip_norm`` (by up to 0.7% measured
with MiniLM + LoRA). The optimizer
below casts them to float32 first: the clipping bound (what the guarantee rests on) is then
exact, and only the gradients themselves carry bf16's rounding, as in non-private training.

Accounting: each client's ε is that of the Poisson-subsampled Gaussian mechanism at rate
``q = batch_size / client rows``, composed over every DP-SGD step the client took, in all rounds
it took part in (opacus' RDP or PRV accountant). fedfm draws fixed-size batches from a shuffled
permutation of the client's rows (``ClientData.batches``); accounting them as Poisson sampling at
rate q is common practice, not a proof. A run reports the worst client's ε.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.module_utils import trainable_modules
from torch import nn

from fedfm.client.trainer import derive_seed
from fedfm.errors import ConfigError, ResumeError, TrainingError
from fedfm.privacy.accounting import noise_for_target_epsilon
from fedfm.privacy.dp import local_dp_epsilon
from fedfm.registry import spec_name

if TYPE_CHECKING:
    from fedfm.client.app import ClientData

log = logging.getLogger(__name__)

SUPPORTED_METHODS = ("lora", "head")
"""Methods whose trainable tensors opacus gives exact per-example gradients for."""

_UNSUPPORTED_REASONS = {
    "adapter": "peft IA3 keeps its vectors in a ParameterDict that opacus' hooks never see",
    "prompt": "peft embeds the soft prompt once for the whole batch, so per-example gradients "
    "of the prompt do not exist",
    "full": "BERT's position embeddings are shared across the batch, so opacus cannot split "
    "their gradient per example (and per-example gradients of every weight are too big)",
}

ACCOUNTING_NOTE = (
    "example-level DP-SGD on each client; each client's steps are accounted as a "
    "Poisson-subsampled Gaussian mechanism with q = batch_size / client rows over all rounds it "
    "took part in; fedfm draws fixed-size batches from a shuffled permutation, for which this is "
    "the usual approximation; epsilon is the worst client's"
)


def check_local(config) -> None:
    """Refuse ``privacy.dp = "local"`` settings that cannot keep their promise."""

    method = spec_name(config.method)
    if method not in SUPPORTED_METHODS:
        reason = _UNSUPPORTED_REASONS.get(method, "opacus cannot compute its per-example gradients")
        raise ConfigError(
            f"privacy.dp = 'local' does not support method.type = {method!r}: {reason}; "
            f"allowed with privacy.dp = 'local': method.type = "
            f"{' | '.join(repr(m) for m in SUPPORTED_METHODS)}"
        )
    if config.federation.mode == "standalone":
        raise ConfigError(
            "privacy.dp = 'local' reports epsilon only for federation.mode = 'federated' or "
            "'centralized'; allowed: one of those"
        )


def batch_sample_rate(batch_size: int, rows: int) -> float:
    """q = size of a batch / client rows (a batch never exceeds the client's rows)."""
    return min(batch_size, rows) / rows


def local_noise_multiplier(privacy, plans: Mapping[str, tuple[float, int]], rounds: int) -> float:
    """``privacy.noise_multiplier`` if set, else the σ that keeps every client within
    ``privacy.target_epsilon``.

    ``plans`` maps each client to (batch sample rate q, DP-SGD steps per round). ε grows with q
    and with the steps, so σ is calibrated once, with opacus' ``get_noise_multiplier``, for the
    largest q and ``rounds ×`` the most steps: a client selected in every round stays within the
    target, and one selected less often spends less. (Calibrating to the *expected*
    participation, rounds × clients_per_round / clients, would let the clients drawn more
    often than average exceed it.)

    Assumption, as in common practice: the accountant treats each client's fixed-size batches,
    drawn from a shuffled permutation of its rows, as Poisson sampling at rate q = batch / rows.
    """
    if privacy.noise_multiplier > 0:
        return float(privacy.noise_multiplier)

    q = max(rate for rate, _ in plans.values())
    steps = rounds * max(steps for _, steps in plans.values())
    try:
        return noise_for_target_epsilon(
            privacy.target_epsilon, privacy.delta, q, steps, privacy.accountant
        )
    except ConfigError:
        raise ConfigError(
            f"privacy.target_epsilon = {privacy.target_epsilon!r} is not allowed: no noise "
            f"multiplier ≤ 1e6 reaches it at delta = {privacy.delta} over {steps} DP-SGD steps "
            f"at batch sample rate {q:.4g}; allowed: a larger target_epsilon or delta, fewer "
            "rounds or local steps, or more rows per client"
        ) from None


class ClientDPOptimizer(DPOptimizer):
    """opacus' DPOptimizer, with two additions for fedfm's clients.

    Before clipping, it checks that every trainable tensor got one gradient per example and casts
    them to the parameter's dtype (float32), so clipping is exact under bf16 autocast. After the
    noise, it adds FedProx's proximal gradient ``mu·(w − anchor)``: that term depends only on
    public state, and opacus replaces ``p.grad`` by the noisy sum of per-example gradients.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        names: list[str],
        proximal: tuple[list[torch.Tensor], float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.names = names
        self.proximal = proximal

    def pre_step(self, closure=None) -> bool:
        for name, p in zip(self.names, self.params, strict=True):
            sample = getattr(p, "grad_sample", None)
            if not isinstance(sample, torch.Tensor) or sample.shape[0] != self.expected_batch_size:
                got = "no" if sample is None else f"{len(sample)} (not one per example)"
                raise TrainingError(
                    f"privacy.dp = 'local': opacus computed {got} per-example gradients for "
                    f"{name!r}, expected {self.expected_batch_size}; this model cannot be "
                    "trained with example-level DP (supported methods: "
                    f"{', '.join(SUPPORTED_METHODS)})"
                )
            p.grad_sample = sample.to(p.dtype)
        if not super().pre_step(closure):
            return False
        if self.proximal is not None:
            anchor, mu = self.proximal
            for p, a in zip(self.params, anchor, strict=True):
                p.grad.add_(p.detach() - a, alpha=mu)
        return True


@dataclass(frozen=True)
class LocalDP:
    """DP-SGD for one client's fit: σ (``noise_multiplier``) and the per-example clip norm."""

    noise_multiplier: float
    clip_norm: float

    @classmethod
    def for_clients(cls, privacy, federation, data: Mapping[str, ClientData]) -> LocalDP:
        """σ from ``privacy`` (given, or calibrated over every client's planned steps, see
        :func:`local_noise_multiplier`) for clients holding ``data`` and training as
        ``federation`` says (``local_steps``, or ``local_epochs`` of ``batch_size``)."""
        batch = federation.batch_size
        plans = {
            cid: (
                batch_sample_rate(batch, len(d)),
                d.steps_for_epochs(federation.local_epochs, batch)
                if federation.local_epochs > 0
                else federation.local_steps,
            )
            for cid, d in data.items()
        }
        sigma = local_noise_multiplier(privacy, plans, federation.rounds)
        log.info("local DP: noise multiplier %.4g, clip norm %g", sigma, privacy.clip_norm)
        return cls(noise_multiplier=sigma, clip_norm=privacy.clip_norm)

    @contextlib.contextmanager
    def training(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        batch_size: int,
        seed: int,
        proximal: tuple[list[torch.Tensor], float] | None = None,
    ) -> Iterator[torch.optim.Optimizer]:
        """Within the block, ``optimizer`` steps are DP-SGD steps on ``model``'s trainable tensors.

        Yields opacus' ``DPOptimizer`` around ``optimizer`` (``expected_batch_size`` =
        ``batch_size``, the size of every batch), with its noise drawn from a generator seeded by
        ``seed``. Per-example gradient hooks are attached to the shared model on entry and
        removed on exit, with every attribute opacus put on the parameters, so evaluation and
        other clients see the model unchanged. ``proximal = (anchor, mu)`` adds FedProx's
        ``mu·(w − anchor)`` after the noise: it depends only on public state, and opacus would
        otherwise drop it with the rest of the non-private gradient.
        """
        names = {id(p): n for n, p in model.named_parameters()}
        dp_optimizer = ClientDPOptimizer(
            optimizer,
            names=[
                names.get(id(p), "?")
                for group in optimizer.param_groups
                for p in group["params"]
                if p.requires_grad  # the parameters DPOptimizer.params lists
            ],
            proximal=proximal,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.clip_norm,
            expected_batch_size=batch_size,
            generator=torch.Generator().manual_seed(derive_seed(seed, 0xD95)),
        )
        hooked = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        try:
            with warnings.catch_warnings():
                # The first hooked layer's input needs no gradient (frozen embeddings): harmless.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                yield dp_optimizer
        finally:
            hooked.cleanup()  # hooks off, grad_sample & co. deleted from the parameters
            for p in dp_optimizer.params:
                if hasattr(p, "summed_grad"):
                    del p.summed_grad
            for _, module in trainable_modules(model):  # what a forward without backward left
                for attribute in ("activations", "max_batch_len"):
                    if hasattr(module, attribute):
                        delattr(module, attribute)


class LocalAccountant:
    """Each client's example-level ε: opacus' accountant over the DP-SGD steps it took.

    Kept by the server from the updates it aggregates (client, rows, steps the client reports);
    σ is fixed for the run and a client's q = batch_size / rows, so (rows, steps) per client is
    the whole state, saved with the strategy's checkpoint. Updates that never reach aggregation
    (a client that failed, a payload rejected as malformed) are not counted: the guarantee then
    assumes rejected payloads are discarded unread.
    """

    def __init__(self, kind: str, noise_multiplier: float, batch_size: int) -> None:
        self.kind = kind
        self.noise_multiplier = float(noise_multiplier)
        self.batch_size = int(batch_size)
        self.rows: dict[str, int] = {}
        self.steps: dict[str, int] = {}
        self._cache: dict[tuple[int, int, float], float] = {}

    def record(self, client_id: str, rows: int, steps: int) -> None:
        """Account ``steps`` DP-SGD steps of a client that holds ``rows`` training rows."""
        self.rows[client_id] = int(rows)
        self.steps[client_id] = self.steps.get(client_id, 0) + int(steps)

    def client_epsilon(self, client_id: str, delta: float) -> float:

        rows, steps = self.rows[client_id], self.steps[client_id]
        key = (rows, steps, float(delta))
        if key not in self._cache:
            self._cache[key] = local_dp_epsilon(
                self.noise_multiplier,
                batch_sample_rate(self.batch_size, rows),
                steps,
                delta,
                self.kind,
            )
        return self._cache[key]

    def epsilons(self, delta: float) -> dict[str, float]:
        """ε per client that has trained so far, at δ."""
        return {cid: self.client_epsilon(cid, delta) for cid in sorted(self.steps)}

    def epsilon(self, delta: float) -> float:
        """The worst client's ε at δ (0 before any client trained)."""
        return max(self.epsilons(delta).values(), default=0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Per client, ``tensor([rows, steps])``: what a checkpoint must keep."""
        return {
            cid: torch.tensor([self.rows[cid], self.steps[cid]], dtype=torch.int64)
            for cid in self.steps
        }

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` saved."""
        rows, steps = {}, {}
        for cid, t in tensors.items():
            if t.shape != (2,) or t.dtype != torch.int64 or bool((t < 0).any()):
                raise ResumeError(
                    f"local DP accountant state of client {cid!r} is {t!r}; allowed: "
                    "int64 tensor([rows, steps]) ≥ 0"
                )
            rows[cid], steps[cid] = int(t[0]), int(t[1])
        self.rows, self.steps = rows, steps
