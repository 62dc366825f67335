"""Attacks for robustness experiments: malicious clients that poison their update or their data.

``[attack] type`` names one; ``fraction`` of all clients (a fixed set drawn with the run seed,
rounded to the nearest client) behave maliciously in every round they are selected.

| type         | level  | what a malicious client does                                            |
|--------------|--------|-------------------------------------------------------------------------|
| `sign_flip`  | update | sends reference − scale·(honest − reference)                            |
| `scale`      | update | sends reference + scale·(honest − reference) (model replacement)        |
| `noise`      | update | sends reference + N(0, noise_std²) per coordinate                       |
| `label_flip` | data   | trains on labels l → K−1−l                                              |
| `backdoor`   | data   | inserts `trigger` into `poison_fraction` of its rows, labelled `target_label` |

The backdoor's success is measured on the test rows whose label is not the target: the share
of them, with the trigger inserted, that the global model classifies as the target.
"""

from fedfm.attacks import data, update  # noqa: F401  (registration)
from fedfm.attacks.base import ATTACKS, Attack, malicious_clients

__all__ = ["ATTACKS", "Attack", "malicious_clients"]
