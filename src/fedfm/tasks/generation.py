"""``fedfm generate``: text from a finished run's model, whatever task wrote it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.tasks.base import TASKS


def generate(
    run_dir: str | Path,
    prompt: str | Sequence[str],
    max_new_tokens: int = 64,
    temperature: float | None = None,
    seed: int = 0,
) -> str | list[str]:
    """The run's answer to ``prompt`` (a string, or a list of them): a ``causal_lm`` run answers
    greedily through the chat template; an ``lm`` run continues the text, sampled at
    ``temperature`` (default 0.8; 0 = greedy) with ``seed``."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory: it has no config.toml")
    config = load_config(run_dir / "config.toml")
    kind = TASKS.get(config.task.type)
    if not kind.generates:
        allowed = ", ".join(repr(n) for n in TASKS.names(lambda t: t.generates))
        raise ConfigError(
            f"{str(run_dir)!r} is a task.type = {config.task.type!r} run; generating text needs "
            f"a run of task.type {allowed}"
        )
    if temperature is not None and temperature < 0:
        raise ConfigError(f"--temperature = {temperature} is not allowed; allowed: ≥ 0")
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    texts = kind.generate_text(run_dir, config, prompts, max_new_tokens, temperature, seed)
    return texts[0] if single else texts
