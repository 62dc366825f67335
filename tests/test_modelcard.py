"""The exported model names its base by hub id, not by a local path, and carries a filled card."""

from __future__ import annotations

import json

from fedfm.tasks.models import resolve_model


def test_adapter_records_the_hub_id_and_the_packaged_copy_still_loads(finished_run):
    config = json.loads((finished_run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    # the hub id finds the installed packaged copy: no download (HF_HUB_OFFLINE=1 in tests)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == resolve_model("minilm")


def test_model_card_says_data_method_rounds_clients_and_accuracy(finished_run):
    card = (finished_run / "adapter" / "README.md").read_text()
    summary = json.loads((finished_run / "summary.json").read_text())
    assert card.startswith("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n")
    assert "adapted with **lora**" in card
    assert "`train.tsv`, split over 4 clients by dirichlet (α = 0.5)" in card
    assert "3 rounds (federated), 2 clients per round, 10 local steps" in card
    assert f"accuracy {summary['final_accuracy']:.4f} on 400 test rows (test.tsv)" in card
    assert "labels Business, Sci/Tech, Sports, World" in card
    assert "none (no differential privacy)" in card
    assert "{{" not in card  # not peft's empty template
