"""Continual learning's stages: which labels (and so which rows) each round trains on.

``[continual] stages`` lists the labels of each stage; round r trains stage
(r − 1) // rounds_per_stage. A client trains on its rows of the stage's labels, plus, with
``mitigation = "replay"``, a buffer of up to ``replay_rows`` of its rows of earlier stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedfm.config.checks import check


@dataclass(frozen=True)
class Stages:
    """The stages of a run, resolved against the data set's labels."""

    labels: tuple[tuple[int, ...], ...]  # label indices of each stage
    rounds_per_stage: int
    replay_rows: int = 0  # 0: no replay
    seed: int = 0

    @classmethod
    def resolve(
        cls, config, label_names: tuple[str, ...], train_labels: np.ndarray, test_labels=None
    ) -> Stages:
        """The stages of ``config.continual`` as label indices; refuses (ConfigError) a label
        the data set does not have, a label in two stages, and a label no training row (or no
        test row, when ``test_labels`` is given) carries."""
        c = config.continual
        stages, seen = [], set()
        for s, stage in enumerate(c.stages):
            ids = []
            for label in stage:
                if isinstance(label, int):
                    known = 0 <= label < len(label_names)
                else:
                    known = label in label_names
                check(
                    known,
                    f"continual.stages[{s}]",
                    label,
                    f"a label of the data set: {' | '.join(label_names)} (or 0 … "
                    f"{len(label_names) - 1})",
                )
                index = label if isinstance(label, int) else label_names.index(label)
                check(
                    index not in seen,
                    f"continual.stages[{s}]",
                    label,
                    "labels in one stage only (it is in an earlier stage too)",
                )
                for what, labels in (("training", train_labels), ("test", test_labels)):
                    check(
                        labels is None or bool((labels == index).any()),
                        f"continual.stages[{s}]",
                        label,
                        f"labels that {what} rows carry (no {what} row has this one)",
                    )
                seen.add(index)
                ids.append(index)
            stages.append(tuple(ids))
        replay = c.replay_rows if c.mitigation == "replay" else 0
        return cls(tuple(stages), c.rounds_per_stage, replay, config.seed)

    def __len__(self) -> int:
        return len(self.labels)

    def stage_of(self, rnd: int) -> int:
        """The stage round ``rnd`` (from 1) trains."""
        return min((rnd - 1) // self.rounds_per_stage, len(self.labels) - 1)

    def in_stage(self, labels: np.ndarray, rows: np.ndarray, stage: int) -> np.ndarray:
        """The rows (indices into ``labels``) whose label belongs to ``stage``."""
        return rows[np.isin(labels[rows], self.labels[stage])]

    def replay(self, labels: np.ndarray, rows: np.ndarray, stage: int, client_index: int):
        """A client's replay buffer at ``stage``: up to ``replay_rows`` of its rows of the
        earlier stages, drawn with (seed, client, stage); sorted. Empty without replay."""
        if self.replay_rows == 0 or stage == 0:
            return rows[:0]
        earlier = [label for s in range(stage) for label in self.labels[s]]
        pool = rows[np.isin(labels[rows], earlier)]
        rng = np.random.default_rng([self.seed, 0xC0471, client_index, stage])
        size = min(self.replay_rows, len(pool))
        return np.sort(rng.choice(pool, size=size, replace=False))

    def training_rows(
        self, labels: np.ndarray, rows: np.ndarray, rnd: int, client_index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(the rows of round ``rnd``'s stage, the replay rows) among a client's ``rows``."""
        stage = self.stage_of(rnd)
        return self.in_stage(labels, rows, stage), self.replay(labels, rows, stage, client_index)
