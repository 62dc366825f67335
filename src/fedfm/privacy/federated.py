"""Privacy in the round loop: DP-FedAvg (central or distributed), local DP-SGD, secure aggregation.

:class:`ProtectedAggregation` wraps the configured strategy. It turns the round's updates into
one mean delta — clipped and noised (central DP), summed under secure aggregation (only the sum
is revealed), or both in the distributed setting — and hands the inner strategy a single
synthetic update ``global + mean delta``, so FedAvg returns it as is and the FedOpt family
treats it as their pseudo-gradient (post-processing does not spend privacy). With local DP
(``privacy.dp = "local"``, :mod:`fedfm.privacy.local`) the clients' updates are already private:
the wrapper only averages them (FedAvg weights) and keeps each client's example-level accountant.

The order on a client in distributed DP is clip → quantise → noise → mask
(:func:`client_transform`, then :func:`fedfm.privacy.secagg.secure_sum`), see
``fedfm/privacy/dp.py`` and the ``fedfm/privacy/secagg/`` package.

Accounting: the accountant treats each round as one subsampled Gaussian step with
q = clients_per_round / clients. fedfm draws exactly ``clients_per_round`` clients per round
(sampling without replacement), for which that is the usual approximation, not a proof: the
summary says so.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedfm.client.secure import secure_weight, unflatten
from fedfm.client.trainer import derive_seed
from fedfm.errors import ConfigError, ProtocolError
from fedfm.privacy.accounting import PrivacyAccountant, client_sample_rate, resolve_noise_multiplier
from fedfm.privacy.dp import (
    AdaptiveClipper,
    clip,
    distributed_noise_share,
    dp_fedavg_central,
    effective_noise_multiplier,
    l2_norm,
    quantization_norm_slack,
)
from fedfm.privacy.mechanisms import mechanism
from fedfm.privacy.noise import SecureGaussian
from fedfm.privacy.secagg import SecAggServer, resolve_threshold, secagg_ring
from fedfm.state import State, Update
from fedfm.strategies.base import Strategy, WrappedStrategy

if TYPE_CHECKING:  # fedfm.privacy.local imports opacus: only dp = 'local' runs load it
    from fedfm.privacy.local import LocalAccountant, LocalDP

log = logging.getLogger(__name__)

ACCOUNTING_NOTE = (
    "each round is accounted as a Poisson-subsampled Gaussian step with q = clients_per_round / "
    "clients; fedfm samples exactly clients_per_round clients without replacement, for which "
    "this is the usual approximation"
)


class ProtectedAggregation(WrappedStrategy):
    """The configured strategy behind DP-FedAvg and/or secure aggregation."""

    def summary(self) -> dict[str, object]:
        return {**self.inner.summary(), **noise_summary(self)}

    def __init__(
        self, inner: Strategy, config, num_clients: int, local_dp: LocalDP | None = None
    ) -> None:
        """``local_dp``: the clients' :class:`~fedfm.privacy.local.LocalDP` when dp = 'local'."""
        super().__init__(inner)
        self.privacy = config.privacy
        self.secagg = config.secagg
        self.config = config
        self.masks_updates = config.secagg.enabled  # the server sees only the masked sum
        self.seed = config.seed
        self.clients_per_round = config.federation.clients_per_round
        self.dp = config.privacy.dp
        self.mechanism = mechanism(config)
        self.sample_rate = 0.0  # client-level DP: the chance that a client takes part
        self.noise_multiplier = 0.0
        self.accountant: PrivacyAccountant | None = None
        self.clipper: AdaptiveClipper | None = None
        self.local: LocalAccountant | None = None
        if self.mechanism.example_level:
            if local_dp is None:
                raise ValueError("privacy.dp = 'local' needs the clients' LocalDP")
            from fedfm.privacy.local import LocalAccountant

            self.noise_multiplier = local_dp.noise_multiplier
            self.local = LocalAccountant(
                self.privacy.accountant, self.noise_multiplier, inner.federation.batch_size
            )
        elif self.mechanism.protects:
            self.sample_rate = client_sample_rate(self.clients_per_round, num_clients)
            self.noise_multiplier = resolve_noise_multiplier(
                self.privacy, self.sample_rate, config.federation.rounds
            )
            self.accountant = PrivacyAccountant(
                self.privacy.accountant, self.noise_multiplier, self.sample_rate
            )
            if self.privacy.clip == "adaptive":
                if not self.mechanism.server_noise:
                    raise ConfigError(
                        "privacy.clip = 'adaptive' needs privacy.dp = 'central' (the server sees the norms)"
                    )
                self.clipper = AdaptiveClipper.from_config(self.privacy)

    @property
    def clip_norm(self) -> float:
        return self.clipper.clip_norm if self.clipper is not None else self.privacy.clip_norm

    def _generator(self, rnd: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, rnd, 0xD9))

    @property
    def uniform_weights(self) -> bool:
        """Distributed DP weighs every client alike (its noise share assumes it); otherwise
        updates are weighted by their example counts."""
        return self.mechanism.uniform_weights

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        metrics: dict[str, float] = {}
        if self.secagg.enabled:
            raise ProtocolError(
                "secure aggregation never sees individual updates: the round loop asks the "
                "runtime for a secure round (Federation._secure_round → aggregate_secure)"
            )
        deltas = [
            OrderedDict((n, u.state[n].float() - global_state[n].float()) for n in global_state)
            for u in updates
        ]
        if self.mechanism.server_noise:
            norms = [l2_norm(d) for d in deltas]
            clip_norm = self.clip_norm
            metrics["dp_clipped"] = float(sum(n > clip_norm for n in norms))
            metrics["dp_clip_norm"] = clip_norm
            sigma = self.noise_multiplier
            mean = dp_fedavg_central(
                deltas, clip_norm, sigma, self._generator(round), denominator=self.clients_per_round
            )
            if self.clipper is not None:
                self.clipper.update(norms, self._generator(round + 1_000_003))
        else:
            weights = [secure_weight(self.uniform_weights, u.num_examples) for u in updates]
            total = sum(weights)
            mean = OrderedDict(
                (n, sum(w * d[n] for w, d in zip(weights, deltas, strict=True)) / total)
                for n in global_state
            )
        return self._finish(round, global_state, global_state, mean, len(updates), metrics, updates)

    def aggregate_secure(
        self,
        round: int,
        global_state: State,
        reference: State,
        total: np.ndarray,
        metrics: dict[str, float],
        updates: list[Update] = (),
    ) -> State:
        """Finish a round from the secure sum ``[Σ wΔ, Σ w·loss, Σ w]`` (:func:`secure_vector`)
        of the deltas against ``reference``, the state the clients trained from.

        ``metrics`` carries the protocol's figures (``secagg_survivors`` is the number of
        clients in the sum). ``updates`` are the summed clients' public reports (updates without
        state: rows and steps, which local DP accounting needs); a network run has none.
        """
        weight = float(total[-1])
        if not weight > 0:
            raise ProtocolError(f"secure aggregation: the summed weight is {weight}, not positive")
        metrics["secagg_loss"] = float(total[-2]) / weight
        mean = unflatten(total[:-2] / weight, reference)
        summed = int(metrics["secagg_survivors"])
        return self._finish(round, global_state, reference, mean, summed, metrics, updates)

    def _finish(self, round, global_state, reference, mean, summed, metrics, updates) -> State:
        """Noise bookkeeping and the accountants, then the inner strategy on reference + mean."""
        if self.mechanism.client_noise:
            # clients added noise for clients_per_round shares; fewer summed shares → less noise
            mean = OrderedDict((n, t * summed / self.clients_per_round) for n, t in mean.items())
            metrics["dp_noise_multiplier_effective"] = effective_noise_multiplier(
                self.noise_multiplier, self.clients_per_round, summed
            )
        if self.accountant is not None:
            self.accountant.step()
            metrics["epsilon"] = self.accountant.epsilon(self.privacy.delta)
            metrics["dp_noise_multiplier"] = self.noise_multiplier
        if self.local is not None:
            for u in updates:  # the DP-SGD steps each client reports having taken
                if "steps" not in u.metrics:
                    raise ProtocolError(
                        f"client {u.client_id} sent no 'steps' metric, which local DP "
                        "accounting needs"
                    )
                self.local.record(u.client_id, u.num_examples, int(u.metrics["steps"]))
            metrics["epsilon"] = self.local.epsilon(self.privacy.delta)
            metrics["dp_noise_multiplier"] = self.noise_multiplier
        self._metrics = metrics
        synthetic = OrderedDict(
            (n, (reference[n].float() + mean[n]).to(t.dtype)) for n, t in global_state.items()
        )
        return self.inner.aggregate(
            round, global_state, [Update("protected-mean", round, synthetic, 1)]
        )

    def session(self, rnd: int, nonce: str) -> str:
        """The secure-aggregation session of round ``rnd``: domain separation for its keys and
        messages. ``nonce`` is 16 hex digits (random over the network, seeded in simulation)."""
        return f"secagg/round-{rnd}/{nonce}"

    def secagg_server(self, rnd: int, clients: int, dimension: int, nonce: str):
        """The server's side of one round's protocol among ``clients`` key holders."""
        ring = secagg_ring(self.config, dimension - 2)  # (k, f); the vector ends in w·loss, w
        return SecAggServer(
            dimension,
            resolve_threshold(self.secagg.threshold, clients),
            fraction_bits=ring[1],
            modulus_bits=ring[0],
            session=self.session(rnd, nonce),
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"inner/{k}": v for k, v in self.inner.state_dict().items()}
        if self.accountant is not None:
            out["dp/steps"] = torch.tensor(self.accountant.state_dict()["steps"], dtype=torch.int64)
        if self.local is not None:
            out.update({f"dp/local/{k}": v for k, v in self.local.state_dict().items()})
        if self.clipper is not None:
            out["dp/clip_norm"] = torch.tensor(
                self.clipper.state_dict()["clip_norm"], dtype=torch.float64
            )
        return out

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("inner/")})
        if self.accountant is not None and "dp/steps" in tensors:
            self.accountant.load_state_dict({"steps": int(tensors["dp/steps"])})
        if self.local is not None:
            prefix = "dp/local/"
            self.local.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
        if self.clipper is not None and "dp/clip_norm" in tensors:
            self.clipper.load_state_dict({"clip_norm": float(tensors["dp/clip_norm"])})


def client_transform(
    config, index: dict[str, int], num_clients: int, num_params: int, secure_noise: bool = False
):
    """Distributed DP on the client: clip its delta, then add its share of the noise.

    ``index`` maps each client this process holds to its index (which seeds its noise in a
    simulation); ``num_clients`` is the federation's size, for σ when it is calibrated to a
    target ε (a network client receives σ resolved by the server). ``secure_noise``: draw the
    noise from a CSPRNG keyed in this process (:class:`~fedfm.privacy.noise.SecureGaussian`)
    instead of the experiment's seed, which the server knows. With secure aggregation, the clip
    leaves room for the fixed-point rounding and the noise lands on the fixed-point grid, so
    quantisation adds no further error.
    """
    privacy = config.privacy
    per_round = config.federation.clients_per_round
    sample_rate = client_sample_rate(per_round, num_clients)
    sigma = resolve_noise_multiplier(privacy, sample_rate, config.federation.rounds)
    resolution = 2.0 ** -secagg_ring(config, num_params)[1] if config.secagg.enabled else 0.0
    clip_norm = privacy.clip_norm - (
        quantization_norm_slack(num_params, resolution) if resolution else 0.0
    )
    if clip_norm <= 0:
        raise ConfigError(
            f"privacy.clip_norm = {privacy.clip_norm} leaves no room for the fixed-point rounding of "
            f"{num_params} parameters; raise it or the fixed-point resolution (secagg)"
        )

    secure = SecureGaussian() if secure_noise else None

    def transform(client_id: str, rnd: int, trained: State, received: State) -> State:
        delta = OrderedDict((n, trained[n].float() - received[n].float()) for n in received)
        clipped, _ = clip(delta, clip_norm)
        generator = secure or torch.Generator().manual_seed(
            derive_seed(config.seed, rnd, index[client_id], 0xD1)
        )
        noisy = distributed_noise_share(
            clipped, privacy.clip_norm, sigma, per_round, generator, resolution=resolution
        )
        return OrderedDict(
            (n, (received[n].float() + noisy[n]).to(t.dtype)) for n, t in received.items()
        )

    return transform


def noise_summary(strategy: ProtectedAggregation) -> dict[str, object]:
    """The privacy figures of summary.json."""
    out: dict[str, object] = {}
    if strategy.local is not None:
        from fedfm.privacy.local import ACCOUNTING_NOTE as LOCAL_ACCOUNTING_NOTE

        delta = strategy.privacy.delta
        out["epsilon"] = strategy.local.epsilon(delta)
        out["epsilon_per_client"] = strategy.local.epsilons(delta)
        out["delta"] = delta
        out["noise_multiplier"] = strategy.noise_multiplier
        out["clip_norm"] = strategy.privacy.clip_norm
        out["accountant"] = strategy.privacy.accountant
        out["accounting_note"] = LOCAL_ACCOUNTING_NOTE
    if strategy.accountant is not None:
        out["epsilon"] = strategy.accountant.epsilon(strategy.privacy.delta)
        out["delta"] = strategy.privacy.delta
        out["noise_multiplier"] = strategy.noise_multiplier
        out["accountant"] = strategy.privacy.accountant
        out["accounting_note"] = ACCOUNTING_NOTE
    if math.isinf(out.get("epsilon", 0.0)):
        log.warning("the privacy budget is infinite: the noise multiplier is too small")
    return out
