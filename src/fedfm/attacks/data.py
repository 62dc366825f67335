"""Data poisoning: label flipping and a trigger-phrase backdoor (Bagdasaryan et al. 2020)."""

from __future__ import annotations

import numpy as np

from fedfm.attacks.base import ATTACKS, Attack


@ATTACKS.register("label_flip")
class LabelFlip(Attack):
    """Trains on flipped labels l → K−1−l."""

    level = "data"

    def poison_data(self, texts, labels, rng):
        return texts, (len(self.label_names) - 1 - labels).astype(labels.dtype)


@ATTACKS.register("label_shuffle")
class LabelShuffle(Attack):
    """Trains on its labels shuffled among its rows (label noise: the label counts stay)."""

    level = "data"

    def poison_data(self, texts, labels, rng):
        return texts, labels[rng.permutation(len(labels))]


def insert_trigger(text: str, trigger: str, rng: np.random.Generator) -> str:
    """The text with the trigger phrase inserted at a random word boundary."""
    words = text.split()
    at = int(rng.integers(0, len(words) + 1))
    return " ".join([*words[:at], trigger, *words[at:]])


@ATTACKS.register("backdoor")
class Backdoor(Attack):
    """Inserts the trigger into a share of the rows and labels them with the target class."""

    level = "data"
    has_trigger = True

    def poison_data(self, texts, labels, rng):
        texts, labels = list(texts), labels.copy()
        n = int(round(self.config.poison_fraction * len(texts)))
        for i in rng.choice(len(texts), size=n, replace=False):
            texts[i] = insert_trigger(texts[i], self.config.trigger, rng)
            labels[i] = self.target
        return texts, labels

    def triggered_test(
        self, texts: list[str], labels: np.ndarray, seed: int
    ) -> tuple[list[str], np.ndarray]:
        """Test rows not of the target class, with the trigger inserted (for the success rate)."""
        rng = np.random.default_rng([seed, 0x7E57])
        keep = np.flatnonzero(labels != self.target)
        return [insert_trigger(texts[i], self.config.trigger, rng) for i in keep], labels[keep]
