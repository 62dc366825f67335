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


#: Continual-learning mitigations this path has (``lwf`` and ``ewc`` are not built yet).
MITIGATIONS = ("none", "replay")


@dataclass(frozen=True)
class ContinualConfig:
    """Continual federated learning: the clients' data arrive in ``stages`` (by label), one
    after another, ``rounds_per_stage`` rounds each (see ``docs/clients.md``). Round r trains
    stage (r − 1) // rounds_per_stage on its labels only; a client holding no row of the stage
    sits the round out. ``mitigation = "replay"`` mixes up to ``replay_rows`` of each client's
    rows of earlier stages (drawn seeded) into its batches. The server scores every stage seen
    so far (``stage_accuracy`` per round; ``average_accuracy`` and ``forgetting`` in the
    summary). Empty ``stages``: off."""

    stages: tuple[tuple[str | int, ...], ...] = ()  # label names (or indices) of each stage
    rounds_per_stage: int = 1  # federation.rounds must be len(stages) × rounds_per_stage
    mitigation: str = "none"  # none | replay
    replay_rows: int = 64  # replay: each client's buffer of rows from earlier stages

    @property
    def on(self) -> bool:
        return bool(self.stages)

    def __post_init__(self) -> None:
        check(
            all(len(stage) > 0 for stage in self.stages) and len(self.stages) != 1,
            "continual.stages",
            self.stages,
            "[] (off) or ≥ 2 non-empty lists of label names or indices",
        )
        check(
            self.mitigation in MITIGATIONS,
            "continual.mitigation",
            self.mitigation,
            "'none' | 'replay' (lwf and ewc are not built yet)",
        )
        check(
            isinstance(self.rounds_per_stage, int) and self.rounds_per_stage >= 1,
            "continual.rounds_per_stage",
            self.rounds_per_stage,
            "an integer ≥ 1",
        )
        check(
            isinstance(self.replay_rows, int) and 1 <= self.replay_rows <= 1_000_000,
            "continual.replay_rows",
            self.replay_rows,
            "an integer 1 … 1,000,000",
        )
