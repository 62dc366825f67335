"""STRIP for text classifiers (Gao et al. 2019, "STRIP: A Defence Against Trojan Attacks on Deep
Neural Networks"; the word-level variant follows Gao et al. 2021, STRIP-ViTA): is a model
backdoored, and which inputs carry its trigger? ``fedfm screen RUN_DIR``.

**Why it works.** Superimpose an input with random clean texts: a clean input's words are
partly replaced by another text's, so the model's prediction wanders and its entropy is high.
An input carrying a backdoor trigger keeps predicting the target class as long as the trigger
survives, because the trigger dominates whatever text surrounds it: its entropy stays low.

**The test.** Each input is perturbed ``copies`` times: a share ``replace`` of its words, at
random positions, is replaced by the words at the same positions of a random text of a clean
pool (cycled when shorter). Its STRIP entropy is the mean Shannon entropy (bits) of the
model's class probabilities over the copies. The threshold is the ``fpr``-quantile of the
entropies of clean calibration inputs (half the clean texts); an input below it is flagged.
The other half, the check inputs, give the observed false-positive rate.

**The model-level verdict.** A model is flagged *poisoned* when more of the screened inputs are
flagged than clean inputs would be at the calibrated rate: more than the 99.9% quantile of
Binomial(n, fpr). STRIP therefore needs screened inputs that carry the trigger: the inputs the
model will be given (the texts a teacher will label, a deployment's traffic), or a suspected
trigger inserted into clean texts (``--trigger``). A model whose trigger appears in none of the
screened inputs passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import binom

from fedfm.attacks.data import insert_trigger
from fedfm.config import load_config
from fedfm.errors import ConfigError, DataError, ModelError
from fedfm.tasks import TASKS
from fedfm.tasks.classification import load_exported

Classify = Callable[[list[str]], np.ndarray]  # texts → (n, classes) probabilities
VERDICT_QUANTILE = 0.999  # the poisoned verdict: flagged inputs beyond this binomial quantile


def entropy_bits(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each row of class probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log2(p)).sum(axis=-1)


def superimpose(text: str, clean: str, rng: np.random.Generator, replace: float) -> str:
    """``text`` with round(replace × words) of its words, at random positions, replaced by the
    words at the same positions of ``clean`` (cycled when shorter)."""
    words, other = text.split(), clean.split() or ["."]
    k = int(round(replace * len(words)))
    for i in rng.choice(len(words), size=k, replace=False) if k else ():
        words[i] = other[i % len(other)]
    return " ".join(words)


def strip_entropy(
    classify: Classify,
    texts: Sequence[str],
    pool: Sequence[str],
    copies: int,
    replace: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Each text's STRIP entropy: the mean entropy (bits) of the model's prediction over
    ``copies`` superimpositions with random texts of the clean ``pool``."""
    perturbed = [
        superimpose(t, pool[int(j)], rng, replace)
        for t in texts
        for j in rng.integers(0, len(pool), size=copies)
    ]
    probs = classify(perturbed)
    return entropy_bits(probs).reshape(len(texts), copies).mean(axis=1)


@dataclass
class StripReport:
    """What the screen found: the threshold, the rates and the verdict."""

    threshold: float  # STRIP entropy (bits) below which an input is flagged
    fpr: float  # the false-positive rate the threshold was calibrated for
    clean_fpr: float  # the share of clean check inputs flagged (observed FPR)
    flagged_rate: float  # the share of screened inputs flagged (TPR when they carry a trigger)
    flagged: int  # screened inputs flagged
    screened: int  # screened inputs
    allowed: int  # flagged inputs a clean model stays under (binomial quantile)
    poisoned: bool  # the model-level verdict
    clean_entropy: float  # mean STRIP entropy of the clean check inputs
    screened_entropy: float  # mean STRIP entropy of the screened inputs
    check_entropies: list[float] = field(default_factory=list, repr=False)  # per clean input
    screened_entropies: list[float] = field(default_factory=list, repr=False)  # per input

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def screen(
    classify: Classify,
    clean: Sequence[str],
    suspects: Sequence[str],
    copies: int = 16,
    replace: float = 0.5,
    fpr: float = 0.01,
    seed: int = 0,
) -> StripReport:
    """STRIP on ``suspects``; ``clean`` texts are the superimposition pool, and split in half:
    calibration inputs (the threshold) and check inputs (the observed FPR)."""
    if len(clean) < 30 or not suspects:
        raise ValueError(f"STRIP needs ≥ 30 clean texts and some to screen; got {len(clean)}")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr = {fpr!r}; allowed: 0 < fpr < 1")
    rng = np.random.default_rng([seed, 0x5791])
    order = rng.permutation(len(clean))
    half = len(clean) // 2
    pool = list(clean)  # a source of words: superimposing a text on itself is rare (1/len)
    calibration = [clean[i] for i in order[:half]]
    check = [clean[i] for i in order[half:]]
    calibrated = strip_entropy(classify, calibration, pool, copies, replace, rng)
    threshold = float(np.quantile(calibrated, fpr))
    clean_h = strip_entropy(classify, check, pool, copies, replace, rng)
    suspect_h = strip_entropy(classify, list(suspects), pool, copies, replace, rng)
    flagged = int((suspect_h < threshold).sum())
    allowed = int(binom.ppf(VERDICT_QUANTILE, len(suspect_h), fpr))
    return StripReport(
        threshold=threshold,
        fpr=fpr,
        clean_fpr=float((clean_h < threshold).mean()),
        flagged_rate=flagged / len(suspect_h),
        flagged=flagged,
        screened=len(suspect_h),
        allowed=allowed,
        poisoned=flagged > allowed,
        clean_entropy=float(clean_h.mean()),
        screened_entropy=float(suspect_h.mean()),
        check_entropies=clean_h.tolist(),
        screened_entropies=suspect_h.tolist(),
    )


def run_classifier(run_dir: str | Path, batch_size: int = 64) -> Classify:
    """The class probabilities of a finished classification run's exported model (a base
    or teacher to screen), with the run's ``data.max_length``."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file() or not (run_dir / "summary.json").is_file():
        raise ModelError(f"{str(run_dir)!r} is not a finished run directory (config, summary)")
    config = load_config(run_dir / "config.toml")
    if config.task.type != "classification":
        raise ConfigError(
            f"task.type = {config.task.type!r} of {str(run_dir)!r}; allowed: 'classification'"
        )
    tokenizer, model, _ = load_exported(run_dir)

    @torch.inference_mode()
    def classify(texts: list[str]) -> np.ndarray:
        out = []
        for at in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[at : at + batch_size],
                truncation=True,
                max_length=config.data.max_length,
                padding=True,
                return_tensors="pt",
            )
            out.append(torch.softmax(model(**batch).float(), dim=-1).numpy())
        return np.concatenate(out)

    return classify


def screen_run(
    run_dir: str | Path,
    texts: Sequence[str] | None = None,
    trigger: str | None = None,
    rows: int = 300,
    copies: int = 16,
    replace: float = 0.5,
    fpr: float = 0.01,
    seed: int = 0,
) -> StripReport:
    """STRIP on a finished run's classifier. Clean texts: the first ``rows`` test rows of the
    run's data. Screened: ``texts``, or (``trigger``) the next ``rows`` test rows with the
    phrase inserted at a random word boundary (to test a suspected trigger)."""
    if (texts is None) == (trigger is None):
        raise ConfigError("screen: give the texts to screen or a --trigger to test, not both")
    if rows < 30:
        raise ConfigError(f"--rows = {rows!r} is not allowed; allowed: ≥ 30")
    classify = run_classifier(run_dir)
    config = load_config(Path(run_dir) / "config.toml")
    test = TASKS.get(config.task.type).load_test(config)
    needed = 2 * rows if trigger is not None else rows
    if len(test) < needed:
        raise DataError(
            f"--rows = {rows}: the run's test data have {len(test)} rows, {needed} are needed "
            "(clean rows, and as many to insert the trigger into); lower --rows"
        )
    clean = list(test.texts[:rows])
    if trigger is not None:
        rng = np.random.default_rng([seed, 0x7E57])
        texts = [insert_trigger(t, trigger, rng) for t in test.texts[rows : 2 * rows]]
    return screen(classify, clean, list(texts), copies, replace, fpr, seed)
