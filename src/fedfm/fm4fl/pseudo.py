"""Scarce labels: clients whose rows are mostly unlabelled, helped by FM pseudo-labels.

``data.labelled_fraction = f`` keeps the labels of a seeded share ``f`` of each client's rows (at
least one row); the rest are unlabelled. Without a teacher, clients train on their labelled rows
only. With ``teacher.pseudo_label_threshold = τ > 0``, each client runs the teacher (the FM it
holds) on its unlabelled rows and adds those whose teacher confidence is ≥ τ, with the teacher's
label.

White-box teachers are calibrated with the mean of their predictions over all clients'
unlabelled rows: in a deployment each client sends the sum of its teacher probability vectors
and its row count (one vector, no rows), and the server divides; here the same mean is computed
in one place. The mean is global, not per client: under label skew a client's own mean is its
skewed label distribution, which a per-client correction would wrongly flatten.

With black-box access every answered row has confidence 1: the threshold then keeps every row
the teacher answered and drops the ones it abstained on.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from fedfm.fm4fl.teacher import build_teacher, confidence, teach

if TYPE_CHECKING:
    from fedfm.prepared import Prepared

log = logging.getLogger(__name__)


def labelled_rows(
    indices: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per client: (labelled rows, unlabelled rows), a seeded split of its rows."""
    labelled, unlabelled = [], []
    for i, rows in enumerate(indices):
        rng = np.random.default_rng([seed, 0x5CA7, i])
        n = max(1, int(round(fraction * len(rows))))
        chosen = np.zeros(len(rows), dtype=bool)
        chosen[rng.choice(len(rows), size=min(n, len(rows)), replace=False)] = True
        labelled.append(np.sort(rows[chosen]))
        unlabelled.append(np.sort(rows[~chosen]))
    return labelled, unlabelled


def apply_scarce_labels(p: Prepared) -> dict[str, Any]:
    """Reduce every client to its labelled rows, plus confident pseudo-labelled ones when a
    teacher and a threshold are configured; returns the report (``fm4fl.json``)."""

    c = p.config
    labelled, unlabelled = labelled_rows(p.partition.indices, c.data.labelled_fraction, c.seed)
    p.all_rows, p.labelled_rows = p.partition, labelled
    report: dict[str, Any] = {
        "labelled_fraction": c.data.labelled_fraction,
        "labelled_rows": int(sum(len(r) for r in labelled)),
        "unlabelled_rows": int(sum(len(r) for r in unlabelled)),
    }
    threshold = c.teacher.pseudo_label_threshold
    if threshold <= 0:
        p.partition = dataclasses.replace(p.partition, indices=labelled)
        return report
    rows = np.concatenate(unlabelled) if unlabelled else np.zeros(0, dtype=np.int64)
    teacher = build_teacher(c, p.train.label_names)
    probs = teach(teacher, [p.train.texts[i] for i in rows], c.teacher.calibrate)
    conf = confidence(probs)
    answered = probs.sum(1) > 0 if len(probs) else np.zeros(0, dtype=bool)
    pseudo = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    confident = answered & (conf >= threshold)
    chosen = rows[confident]
    original = p.train.labels
    true = original[chosen]
    labels = original.copy()
    labels[chosen] = pseudo[confident]
    chosen_set = set(chosen.tolist())
    indices = [
        np.sort(
            np.concatenate([lab, np.array([r for r in unl if r in chosen_set], dtype=np.int64)])
        )
        for lab, unl in zip(labelled, unlabelled, strict=True)
    ]
    p.partition = dataclasses.replace(p.partition, indices=indices)
    p.train = dataclasses.replace(p.train, labels=labels)
    report.update(
        {
            "teacher": c.teacher.type,
            "access": c.teacher.access,
            "pseudo_label_threshold": threshold,
            "pseudo_labelled_rows": int(len(chosen)),
            # a diagnostic the benchmark data allow (their rows are all labelled really)
            "pseudo_label_accuracy": float((pseudo[confident] == true).mean())
            if len(chosen)
            else None,
            "teacher_accuracy_unlabelled": float((pseudo == original[rows])[answered].mean())
            if answered.any()
            else None,
            "teacher_abstained": int((~answered).sum()),
        }
    )
    return report
