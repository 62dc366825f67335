"""The exported model's card (``README.md`` next to the adapter or model): what it was trained on,
how, and how well; and the hub id of its base model in ``adapter_config.json``.

peft writes an empty template card and the base model's local path (inside a virtualenv, useless
elsewhere); the run knows better.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedfm.config import ExperimentConfig
from fedfm.tasks.models import hub_id

__all__ = ["write_model_card"]


def _privacy_line(summary: dict[str, Any]) -> str:
    if "epsilon" not in summary:
        return "none (no differential privacy)"
    return (
        f"differential privacy: ε = {summary['epsilon']:.3g} at δ = {summary.get('delta')} "
        f"({summary.get('accountant', 'accountant')}, noise multiplier "
        f"{summary.get('noise_multiplier')})"
    )


def _result_line(c: ExperimentConfig, summary: dict[str, Any]) -> str:
    accuracy = summary.get("final_accuracy")
    test = "held out from data.train" if not c.data.test else Path(c.data.test).name
    text = "—" if accuracy is None else f"{accuracy:.4f}"
    line = f"accuracy {text} on {summary.get('test_rows')} test rows ({test})"
    if "final_perplexity" in summary:
        line += f", perplexity {summary['final_perplexity']:.2f}"
    return line


def write_model_card(export_dir: Path, config: ExperimentConfig, summary: dict[str, Any]) -> Path:
    """Write ``export_dir/README.md`` and record the base model's hub id in the adapter config."""
    c = config
    labels_file = export_dir / "labels.json"
    labels = json.loads(labels_file.read_text())["labels"] if labels_file.is_file() else []
    base = hub_id(c.model.name)
    adapter_config = export_dir / "adapter_config.json"
    if adapter_config.is_file():
        data = json.loads(adapter_config.read_text())
        data["base_model_name_or_path"] = base
        adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    pipeline = "text-generation" if c.task.type == "causal_lm" else "text-classification"
    method = c.method.plugin_name
    mb = (summary.get("bytes_up_total", 0) + summary.get("bytes_down_total", 0)) / 1e6
    run_dir = summary.get("run_dir", "RUN_DIR")
    partition = c.partition.scheme + (
        f" (α = {c.partition.alpha})" if c.partition.scheme == "dirichlet" else ""
    )
    lines = [
        "---",
        f"base_model: {base}",
        f"library_name: {'peft' if adapter_config.is_file() else 'transformers'}",
        f"pipeline_tag: {pipeline}",
        f"tags: [fedfm, federated-learning, {method}]",
        "---",
        "",
        f"# {c.name}",
        "",
        f"`{base}` adapted with **{method}** by federated learning with "
        f"[fedfm](https://pypi.org/project/fedfm/): the clients' data never left them; only "
        "the trained tensors travelled.",
        "",
        f"- **Task**: {c.task.type}" + (f", labels {', '.join(labels)}" if labels else ""),
        f"- **Data**: `{Path(c.data.train).name}`, split over {summary.get('clients')} clients "
        f"by {partition}",
        f"- **Training**: {summary.get('rounds')} rounds ({c.federation.mode}), "
        f"{c.federation.clients_per_round} clients per round, {c.federation.local_steps} local "
        f"steps each; strategy {c.strategy.plugin_name}; "
        f"{summary.get('trainable_params', 0):,} trainable parameters",
        f"- **Result**: {_result_line(c, summary)}",
        f"- **Privacy**: {_privacy_line(summary)}",
        f"- **Communication**: {mb:.2f} MB sent in total",
        f"- **Produced by**: fedfm {summary.get('versions', {}).get('fedfm', '?')}, "
        f"seed {c.seed}, {summary.get('finished_at', '')}",
        "",
        "## Use it",
        "",
        "```bash",
        f'fedfm predict {run_dir} --text "..."'
        if pipeline == "text-classification"
        else f'fedfm generate {run_dir} --prompt "..."',
        "```",
        "",
        "The run's `config.toml` (next to this folder) reproduces it.",
        "",
    ]
    path = export_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
