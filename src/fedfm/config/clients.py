"""``[personalize]``: clients that differ. Which part of the model each client keeps for itself,
and how its personal model is trained beside the global one (see ``docs/clients.md``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedfm.config.checks import check, check_choice, registry


@dataclass(frozen=True)
class PersonalizeConfig:
    """Personalised federated learning. ``method``:

    * ``none``: every client uses the global model;
    * ``local_head`` (FedPer): the classifier head is trained and kept by each client, never sent;
    * ``ditto`` (Li et al. 2021): each client also trains a whole personal copy of the shared
      tensors, pulled towards the global model with strength ``ditto_lambda``;
    * ``local_norm`` (FedBN): the encoder's normalisation layers train and stay on each client;
    * ``private_lora`` (FedDPA-style): a second LoRA of rank ``private_r`` beside the shared one
      trains and stays on each client.

    What stays on a client is kept per client: in a simulated run on disk in
    ``<run_dir>/personal/`` (one small file per client, never all in memory), so it survives
    ``--resume``. Personalised figures need each client's held-out rows:
    ``[evaluation] where = "clients"`` (or ``"both"``) and ``client_split > 0``."""

    method: str = "none"  # none | local_head | ditto | local_norm | private_lora
    ditto_lambda: float = 0.1  # ditto: pull of each personal model towards the global one
    private_r: int = 4  # private_lora: rank of each client's private LoRA

    def __post_init__(self) -> None:
        check_choice("personalize.method", self.method, registry("personalizer").names())
        check(
            self.ditto_lambda >= 0 and math.isfinite(self.ditto_lambda),
            "personalize.ditto_lambda",
            self.ditto_lambda,
            "≥ 0 (0 = each personal model trains alone from its last state)",
        )
        check(
            isinstance(self.private_r, int) and 1 <= self.private_r <= 4096,
            "personalize.private_r",
            self.private_r,
            "an integer 1 … 4096",
        )
