"""causal_lm: GGUF conversion cache, response-only loss, exact match, a federated run + generate.

The fast tests use SmolLM2's real tokenizer (read from the packaged GGUF file) on a tiny,
randomly initialised Llama, and real AG News rows; the slow ones use the real SmolLM2-135M.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fedfm
from fedfm.cli import main as cli
from fedfm.config import load_config
from fedfm.data.instructions import (
    IGNORE_INDEX,
    ChatEncoder,
    PromptedTokens,
    instruction_records,
    load_instructions,
    tokenize_instructions,
    write_jsonl,
)
from fedfm.data.tokens import cache_dir
from fedfm.errors import ConfigError, DataError, ModelError
from fedfm.metrics.sinks import Sink
from fedfm.tasks import models
from fedfm.tasks.causal_lm import CausalLMTask, exact_match, load_exported

QUESTION = (
    "Which topic is this news about? Answer with one word: World, Sports, Business or Sci/Tech."
)

# A few dozen AG News rows as instructions, 2 clients, 2 rounds of 2 steps: seconds on 1 thread.
TINY_LM = [
    "task.type=causal_lm",
    f"task.instruction={QUESTION!r}",
    "task.max_new_tokens=4",
    "data.train_rows=48",
    "data.test_rows=12",
    "data.eval_rows=8",
    "data.max_length=64",
    "partition.clients=2",
    "federation.clients_per_round=2",
    "federation.rounds=2",
    "federation.local_steps=2",
    "federation.batch_size=4",
    "federation.lr=1e-3",
    "runtime.threads=1",
]


# ---- exact match ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Sports", "Sports", True),
        ("  sports\n", "SPORTS", True),  # case and whitespace are ignored
        ("Sports.", "Sports", True),  # punctuation at the ends of the word
        ("Sports, because the article is about football", "Sports", True),  # first word
        ("Sci/Tech", "Sci/Tech", True),
        ("sci/tech.", "Sci/Tech", True),
        ("This news is about Sports", "Sports", False),  # first word only
        ("SportsWorld", "Sports", False),
        ("", "Sports", False),
        ("New  York\tCity", "new york city", True),  # several words: the whole answer
        ("New York", "new york city", False),
        ("new york city is big", "new york city", False),
        ("", "", False),  # an empty reference never matches
    ],
)
def test_exact_match_rules(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


# ---- tokens and loss --------------------------------------------------------------------------


def test_targets_are_ignored_exactly_on_prompt_and_padding():
    # two rows: 3 prompt + 2 response ids, 2 prompt + 4 response ids
    ids = np.array([10, 11, 12, 50, 51, 20, 21, 60, 61, 62, 63], dtype=np.int32)
    tokens = PromptedTokens(ids, np.array([0, 5, 11]), np.array([3, 2]))
    input_ids, mask = tokens.batch(np.array([0, 1]), pad_id=0)
    targets = tokens.targets(np.array([0, 1]), input_ids.shape[1])
    assert input_ids.shape == targets.shape == (2, 8)  # padded to a multiple of 8
    x = IGNORE_INDEX
    assert targets.tolist() == [
        [x, x, x, 50, 51, x, x, x],
        [x, x, 60, 61, 62, 63, x, x],
    ]
    assert tokens.prompt_ids(1).tolist() == [20, 21]
    assert tokens.response_ids(0).tolist() == [50, 51]


def test_chat_encoding_puts_the_template_in_the_prompt_and_truncates_the_text(tokenizer):
    encoder = ChatEncoder(tokenizer)
    assert encoder.end_of_turn == "<|im_end|>"
    text = "Manchester United beat Arsenal 2-0 on Sunday. " * 20
    messages = [{"role": "user", "content": f"{QUESTION}\n\n{text}"}]
    (row,), (prompt_length,) = encoder.encode([messages], ["Sports"], max_length=64)
    assert len(row) == 64  # the news text was cut to fit ...
    prompt, response = row[:prompt_length], row[prompt_length:]
    # ... and the template's framing and the answer were kept
    assert tokenizer.decode(response) == "Sports<|im_end|>"
    assert tokenizer.decode(prompt).startswith("<|im_start|>system\n")
    assert tokenizer.decode(prompt).endswith("<|im_end|>\n<|im_start|>assistant\n")
    # a short row is the full template, the same ids as the untruncated prompt
    short = [{"role": "user", "content": "Hi"}]
    (row,), (prompt_length,) = encoder.encode([short], ["Hello!"], max_length=64)
    assert row[:prompt_length] == encoder.prompt_ids(short)
    assert tokenizer.decode(encoder.prompt_ids(short)) == tokenizer.apply_chat_template(
        short, add_generation_prompt=True, tokenize=False
    )


def test_loss_is_the_causal_lm_loss_of_the_response_tokens_only(tiny_lm):
    from fedfm.methods import METHODS

    config = load_config(None, TINY_LM)
    tok, model = models.load_causal_lm(str(tiny_lm), "fp32")
    task = CausalLMTask(tok, model, METHODS.get("lora")(config.method), 0, "fp32")
    records = instruction_records(
        ["Stocks fell.", "A late goal won the cup final."], ["Business", "Sports"], QUESTION
    )
    path = write_jsonl(records, tiny_lm.parent / "two.jsonl")
    tokens = tokenize_instructions(load_instructions(path), tok, "tiny", 64, use_cache=False)
    rows = np.array([0, 1])
    input_ids, mask = tokens.batch(rows, task.pad_id)
    targets = tokens.targets(rows, input_ids.shape[1])
    assert (targets != IGNORE_INDEX).sum(1).tolist() == [len(tokens.response_ids(r)) for r in rows]

    ours = task.loss(tokens, np.zeros(2), rows)
    hf = model(
        input_ids=input_ids, attention_mask=mask, labels=targets
    ).loss  # same -100 convention
    torch.testing.assert_close(ours, hf)
    ours.backward()  # gradients reach LoRA (B) only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.shared.values())
    assert all(not p.requires_grad for n, p in task.model.named_parameters() if "lora" not in n)

    # padding is never a target: another pad id leaves the loss unchanged (rows differ in length)
    assert len(set(tokens.lengths().tolist())) == 2
    with torch.no_grad():
        before = task.loss(tokens, None, rows)
        task.pad_id = 7
        assert torch.equal(task.loss(tokens, None, rows), before)


# ---- data -------------------------------------------------------------------------------------


def test_jsonl_instructions_and_chats(tmp_path):
    path = write_jsonl(
        [
            {"instruction": "Add.", "input": "2 + 2", "output": "4", "label": "maths"},
            {"instruction": "Greet.", "output": "Hello!", "label": "chat"},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris"},
                ],
                "label": "chat",
            },
        ],
        tmp_path / "mixed.jsonl",
    )
    data = load_instructions(path)
    assert data.messages[0] == [{"role": "user", "content": "Add.\n\n2 + 2"}]
    assert data.messages[1] == [{"role": "user", "content": "Greet."}]
    assert data.messages[2][0] == {"role": "system", "content": "Be brief."}
    assert data.responses == ["4", "Hello!", "Paris"]
    assert data.label_names == ("chat", "maths") and data.labels.tolist() == [1, 0, 0]

    write_jsonl([{"instruction": "Add.", "input": "2 + 2"}], tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="'instruction' and 'output'"):
        load_instructions(tmp_path / "bad.jsonl")
    write_jsonl([{"messages": [{"role": "user", "content": "Hi"}]}], tmp_path / "chat.jsonl")
    with pytest.raises(DataError, match="ending with the assistant's answer"):
        load_instructions(tmp_path / "chat.jsonl")
    with pytest.raises(DataError, match="set task.instruction"):
        load_instructions(tmp_path / "table.tsv")


def test_config_defaults_llama_targets_and_refuses_what_does_not_apply():
    config = load_config(None, ["task.type=causal_lm", "model.name=smollm2"])
    assert config.method.target_modules == ("q_proj", "v_proj")
    kept = load_config(None, ["task.type=causal_lm", "method.target_modules=['q_proj','k_proj']"])
    assert kept.method.target_modules == ("q_proj", "k_proj")
    assert load_config(None).method.target_modules == ("query", "value")  # classification
    with pytest.raises(ConfigError, match="method.type = 'prompt'.*'lora'"):
        load_config(None, ["task.type=causal_lm", "method.type=prompt"])
    with pytest.raises(ConfigError, match="attack.type = 'backdoor'"):
        load_config(None, ["task.type=causal_lm", "attack.type=backdoor"])
    with pytest.raises(ConfigError, match="task.instruction"):
        load_config(None, ["task.instruction=Which topic?"])
    shipped = load_config(Path(__file__).parents[2] / "configs" / "agnews_instruct.toml")
    assert shipped.task.type == "causal_lm" and shipped.model.name == "smollm2"


# ---- model conversion -------------------------------------------------------------------------


def test_gguf_conversion_is_cached_and_reused(tiny_lm, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("FEDFM_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    calls = []

    def convert(source: Path, out: Path) -> None:  # stands in for the ~1 minute conversion
        calls.append(source)
        shutil.copytree(tiny_lm, out, dirs_exist_ok=True)

    monkeypatch.setattr(models, "_convert_gguf", convert)
    _, first = models.load_causal_lm(str(gguf))
    _, second = models.load_causal_lm(str(gguf))
    assert calls == [gguf]  # converted once, then loaded from the cache
    folders = list((tmp_path / "cache" / "models").iterdir())
    assert [f.name for f in folders] == [models.gguf_cache_key(gguf)]  # no temporary left over
    assert (folders[0] / "config.json").is_file()
    assert first.dtype == torch.bfloat16
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)

    def broken(source: Path, out: Path) -> None:
        (out / "partial").write_text("half-written")
        raise OSError("disk full")

    gguf.write_bytes(b"another GGUF stand-in")  # a new size: a new cache entry
    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(ModelError, match="disk full"):
        models.load_causal_lm(str(gguf))
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1  # nothing half-written


# ---- a federated run --------------------------------------------------------------------------


class _Interrupt(Sink):
    def __init__(self, in_round: int) -> None:
        self.in_round = in_round

    def client_done(self, round, done, total):
        if round == self.in_round and done == 1:
            raise KeyboardInterrupt


def _check_run_directory(result, rounds: int) -> None:
    d = result.run_dir
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["perplexity"] > 1.0
        assert r["perplexity"] == pytest.approx(np.exp(r["eval_loss"]))
    summary = json.loads((d / "summary.json").read_text())
    assert 0.0 <= summary["final_accuracy"] <= 1.0 and summary["final_perplexity"] > 1.0
    assert (d / "adapter" / "adapter_config.json").is_file()
    assert (d / "adapter" / "adapter_model.safetensors").is_file()


def test_tiny_federated_run_writes_scores_adapter_and_generates(tiny_lm, tmp_path, capsys):
    from peft import PeftModel

    config = load_config(None, [*TINY_LM, f"model.name={str(tiny_lm)!r}"])
    result = fedfm.run(config, out=tmp_path)
    _check_run_directory(result, 2)
    # LoRA r=8 on q (32→32) and v (32→16, two key-value heads) in 2 layers: A is 8×in, B out×8
    assert result.summary["trainable_params"] == 2 * ((8 * 32 + 32 * 8) + (8 * 32 + 16 * 8))

    tokenizer, model = load_exported(result.run_dir)
    assert isinstance(model, PeftModel)
    state = {n: p for n, p in model.named_parameters() if "lora" in n}
    from safetensors.torch import load_file

    final = load_file(str(result.run_dir / "checkpoints/round_00002/state.safetensors"))
    assert state.keys() == final.keys()
    for n, p in state.items():
        torch.testing.assert_close(p.float(), final[n].float())

    assert cli(["generate", str(result.run_dir), "--prompt", "Hello", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip()
    assert cli(["generate", str(tmp_path), "--prompt", "Hello"]) == 2


def test_tiny_causal_lm_run_resumes_to_the_same_state(tiny_lm, tmp_path):
    from safetensors.torch import load_file

    config = load_config(None, [*TINY_LM, f"model.name={str(tiny_lm)!r}"])
    full = fedfm.run(config, out=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        fedfm.run(config, out=tmp_path / "b", sinks=[_Interrupt(in_round=2)])
    resumed = fedfm.run(resume=tmp_path / "b" / config.name)
    a = load_file(str(full.run_dir / "checkpoints/round_00002/state.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints/round_00002/state.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["final_accuracy"] == full.summary["final_accuracy"]
    assert resumed.summary["final_perplexity"] == full.summary["final_perplexity"]


# ---- the real SmolLM2 (slow: converts the GGUF file, about a minute) ----------------------------


@pytest.mark.slow
def test_smollm2_converts_once_then_loads_without_gguf_and_tunes(tmp_path, capsys, monkeypatch):
    gguf = Path(models.resolve_model("smollm2"))
    folder = models.gguf_to_folder(gguf)  # the real conversion (the session's cache is empty)
    assert folder.parent.parent == cache_dir()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    import gguf as gguf_package

    monkeypatch.setattr(models, "_convert_gguf", no_gguf)
    monkeypatch.setattr(gguf_package.GGUFReader, "__init__", no_gguf)
    tokenizer, model = models.load_causal_lm("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("q_proj"))

    config = load_config(None, [*TINY_LM, "model.name=smollm2", "data.eval_rows=4"])
    result = fedfm.run(config, out=tmp_path)
    _check_run_directory(result, 2)
    assert (
        cli(["generate", str(result.run_dir), "--prompt", f"{QUESTION}\n\nThe Yankees won."]) == 0
    )
    assert capsys.readouterr().out.strip()
