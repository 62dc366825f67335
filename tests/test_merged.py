"""``fedfm export RUN --merged OUT``: a folder transformers.pipeline() loads, giving the labels
``fedfm predict`` gives."""

from __future__ import annotations

import pytest

import fedfm
from fedfm.cli import main
from tests.tasks.test_causal_lm import TINY_LM

TEXTS = [
    "Stocks fell sharply as oil prices climbed to a record high.",
    "The striker scored twice as United won the cup final.",
    "A new chip promises faster laptops and longer battery life.",
    "Rebels and government troops clashed near the capital.",
    "Shares of the software maker jumped after earnings beat forecasts.",
    "NASA delays the launch of its new space telescope.",
]


def test_pipeline_on_the_merged_folder_gives_the_same_labels(finished_run, tmp_path, capsys):
    from transformers import pipeline

    out = tmp_path / "merged"
    assert main(["export", str(finished_run), "--merged", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    classify = pipeline("text-classification", model=str(out), trust_remote_code=True)
    got = [r["label"] for r in classify(TEXTS, truncation=True)]
    assert got == fedfm.predict(finished_run, TEXTS)


def test_export_refuses_an_existing_folder(finished_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["export", str(finished_run), "--merged", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty" in err


@pytest.mark.parametrize("missing", ["summary.json"])
def test_export_of_an_unfinished_run_is_one_line(finished_run, tmp_path, capsys, missing):
    (tmp_path / "config.toml").write_text((finished_run / "config.toml").read_text())
    assert main(["export", str(tmp_path), "--merged", str(tmp_path / "out")]) == 2
    assert "not a finished run directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- causal LM: a tiny instruction-tuned Llama, merged, loads in pipeline("text-generation") ----

# the causal-LM tests' tiny instruction run, with a learning rate large enough that the merged
# adapter visibly changes the logits
TINY_CAUSAL_LM = [*TINY_LM, "federation.lr=1e-2"]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_merged_causal_lm_gives_the_adapted_logits_and_generates(
    tiny_lm, tmp_path, capsys, precision
):
    import torch
    from transformers import AutoModelForCausalLM, pipeline

    from fedfm.config import load_config
    from fedfm.tasks.causal_lm import load_exported

    config = load_config(
        None,
        [*TINY_CAUSAL_LM, f"model.name={str(tiny_lm)!r}", f"federation.precision={precision}"],
    )
    run_dir = fedfm.run(config, out=tmp_path / "runs").run_dir
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not {"adapter_config.json", "adapter_model.safetensors"} & names  # a plain model

    tokenizer, adapted = load_exported(run_dir)  # the base with the run's adapter (peft)
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = tokenizer(["Stocks fell sharply as oil prices climbed."], return_tensors="pt")
    with torch.no_grad():
        want = adapted(**ids).logits.float()
        got = merged(**ids).logits.float()
        base = adapted.get_base_model()
        with adapted.disable_adapter():
            without = base(**ids).logits.float()
    assert (
        merged.dtype
        == adapted.dtype
        == getattr(torch, {"bf16": "bfloat16"}.get(precision, "float32"))
    )
    # fp32: equal up to float rounding; bf16: W + B·A rounded once more to bf16 (2⁻⁸ relative)
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    # the adapter did change the model: the merged weights are not the base's
    assert (without - want).abs().max() > 10 * (got - want).abs().max()

    generate = pipeline("text-generation", model=str(out))
    text = generate("Hello", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("Hello") and len(text) > len("Hello")


def test_merged_lm_pretraining_run_with_lora_gives_the_adapted_logits(tiny_lm, tmp_path, capsys):
    """task.type = 'lm' (continued pre-training with LoRA): the merged folder is the base with
    the adapter folded in, and generates through pipeline()."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, pipeline

    from fedfm.config import load_config
    from fedfm.tasks.models import load_lm

    config = load_config(
        None,
        [
            "name=lm",
            "task.type=lm",
            f"model.name={str(tiny_lm)!r}",
            "method.type=lora",
            "data.train=${FEDFM_DATA}/debian/train.tsv",
            "data.test=${FEDFM_DATA}/debian/test.tsv",
            "data.train_rows=120",
            "data.test_rows=24",
            "data.eval_rows=8",
            "data.max_length=64",
            "partition.clients=2",
            "federation.clients_per_round=2",
            "federation.rounds=2",
            "federation.local_steps=2",
            "federation.batch_size=4",
            "federation.lr=1e-2",
            "federation.precision=fp32",
            "runtime.threads=1",
        ],
    )
    run_dir = fedfm.run(config, out=tmp_path / "runs").run_dir
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    capsys.readouterr()

    tokenizer, base = load_lm(str(tiny_lm), "pretrained", torch.float32, 0, 0)
    adapted = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = tokenizer(["Utilities for the GNU system and its packages."], return_tensors="pt")
    with torch.no_grad():
        want = adapted(**ids).logits
        got = merged(**ids).logits
        with adapted.disable_adapter():
            without = adapted(**ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (without - want).abs().max() > 1e-3  # the adapter changed the model

    generate = pipeline("text-generation", model=str(out))
    text = generate("The package", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The package") and len(text) > len("The package")
