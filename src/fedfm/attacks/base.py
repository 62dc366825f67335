"""The Attack interface, its registry, and the choice of the malicious clients."""

from __future__ import annotations

import numpy as np

from fedfm.errors import ConfigError
from fedfm.registry import Registry
from fedfm.state import State


class Attack:
    """A malicious behaviour: poison a client's data once, or its update every round."""

    level: str = "update"  # "data": poison_data is applied once; "update": poison_update each round
    #: Plants a trigger: ``triggered_test`` gives test rows with it, to score attack success.
    has_trigger: bool = False

    def __init__(self, config, label_names: tuple[str, ...]) -> None:
        self.config = config  # AttackConfig
        self.label_names = label_names
        target = config.target_label or label_names[0]
        if target not in label_names:
            raise ConfigError(
                f"attack.target_label = {target!r} is not a label; allowed: {', '.join(label_names)}"
            )
        self.target = label_names.index(target)

    def poison_data(
        self, texts: list[str], labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[str], np.ndarray]:
        """A malicious client's training rows (data attacks); honest by default."""
        return texts, labels

    def poison_update(self, trained: State, reference: State, generator) -> State:
        """What a malicious client sends instead of ``trained`` (update attacks)."""
        return trained


ATTACKS: Registry[type[Attack]] = Registry("attack", "attack.type")


def malicious_clients(client_ids: list[str], fraction: float, seed: int) -> list[str]:
    """A fixed set of round(fraction × clients) client ids, drawn with the run seed."""
    k = int(round(fraction * len(client_ids)))
    rng = np.random.default_rng([seed, 0xBAD])
    return sorted(client_ids[i] for i in rng.choice(len(client_ids), size=k, replace=False))
