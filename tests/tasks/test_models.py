"""Loading encoders: from the FM's weights or from scratch, whole or truncated to a student."""

from __future__ import annotations

import pytest
import torch

from fedfm.errors import ModelError
from fedfm.tasks.models import load_encoder


def _first_weight(encoder) -> torch.Tensor:
    return encoder.encoder.layer[0].attention.self.query.weight


def test_scratch_is_the_same_architecture_with_fresh_seeded_weights():
    _, pretrained = load_encoder("minilm")
    _, scratch = load_encoder("minilm", init="scratch", seed=3)
    _, again = load_encoder("minilm", init="scratch", seed=3)
    _, other = load_encoder("minilm", init="scratch", seed=4)
    assert sum(p.numel() for p in scratch.parameters()) == sum(
        p.numel() for p in pretrained.parameters()
    )
    assert not torch.equal(_first_weight(scratch), _first_weight(pretrained))
    assert torch.equal(_first_weight(scratch), _first_weight(again))
    assert not torch.equal(_first_weight(scratch), _first_weight(other))


def test_layers_keeps_the_first_layers_of_the_pretrained_encoder():
    _, full = load_encoder("minilm")
    _, student = load_encoder("minilm", layers=2)
    assert len(student.encoder.layer) == student.config.num_hidden_layers == 2
    assert torch.equal(_first_weight(student), _first_weight(full))
    out = student(input_ids=torch.tensor([[101, 2054, 102]])).last_hidden_state
    assert out.shape == (1, 3, 384)
    with pytest.raises(ModelError, match=r"model.layers = 9 is not allowed; allowed: 1 … 6"):
        load_encoder("minilm", layers=9)


def test_layers_needs_a_bert_like_encoder(tiny_lm):
    with pytest.raises(ModelError, match="needs a BERT-like encoder"):
        load_encoder(str(tiny_lm), layers=1)
