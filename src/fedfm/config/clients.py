"""``[personalize]``: clients that differ. Which part of the model each client keeps for itself,
and how its personal model is trained beside the global one (see ``docs/clients.md``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedfm.config.checks import check, check_choice, registry


@dataclass(frozen=True)
class PersonalizeConfig:
    """Personalised federated learning: which part of the model each client keeps for itself
    (``method``; see ``docs/clients.md``). ``local_head`` is FedPer (the head stays), ``ditto``
    trains a personal copy pulled towards the global model by ``ditto_lambda``, ``local_norm`` is
    FedBN (the LayerNorms stay), ``private_lora`` adds a private LoRA of rank ``private_r`` beside
    the shared one. What stays is kept per client, in a simulated run on disk in
    ``<run_dir>/personal/`` (so it survives ``--resume``). Personalised figures need
    ``[evaluation] where = "clients"`` and ``client_split > 0``."""

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
