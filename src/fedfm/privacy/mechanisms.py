"""Differential privacy: one mechanism per ``privacy.dp`` value, in the registry
:data:`DP_MECHANISMS`. Each declares who clips and adds noise, and to what unit; the assembly,
the runtimes and the compatibility rules read these declarations instead of the value's name.

| value         | noise added by               | unit    | the server sees                      |
|---------------|------------------------------|---------|--------------------------------------|
| `none`        | nobody                       | —       | each update (or, with secagg, a sum) |
| `central`     | the server (DP-FedAvg)       | client  | each update, then clips and noises   |
| `distributed` | each client, its share       | client  | a sum of clipped, noised updates     |
| `local`       | each client (DP-SGD, opacus) | example | updates that are already private     |
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.registry import Registry


@dataclass(frozen=True)
class DPMechanism:
    """What one ``privacy.dp`` value does, as flags the rest of the system reads."""

    #: Wrap the strategy in :class:`~fedfm.privacy.federated.ProtectedAggregation`.
    protects: bool
    #: Each client weighs 1 in the mean (its noise share assumes it), not its example count.
    uniform_weights: bool = False
    #: The server clips and noises each update: it needs them in the clear.
    server_noise: bool = False
    #: Each client clips its delta and adds its share of the noise before it is sent.
    client_noise: bool = False
    #: DP-SGD on the client; an example-level accountant per client.
    example_level: bool = False
    #: ``fedfm serve`` runs it.
    served: bool = True


DP_MECHANISMS: Registry[DPMechanism] = Registry("dp mechanism", "privacy.dp")

DP_MECHANISMS.register("none")(DPMechanism(protects=False))
DP_MECHANISMS.register("central")(DPMechanism(protects=True, server_noise=True))
DP_MECHANISMS.register("distributed")(
    DPMechanism(protects=True, uniform_weights=True, client_noise=True)
)
DP_MECHANISMS.register("local")(DPMechanism(protects=True, example_level=True, served=False))


def mechanism(config) -> DPMechanism:
    """The mechanism of ``config.privacy.dp``."""
    return DP_MECHANISMS.get(config.privacy.dp)
