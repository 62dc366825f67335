"""The classifier of a merged export as a transformers model: ``fedfm export RUN --merged OUT``
saves this file into OUT (``auto_map``), so that ``AutoModelForSequenceClassification`` and
``pipeline("text-classification", model=OUT, trust_remote_code=True)`` load it without fedfm.

It is fedfm's ``TextClassifier`` (encoder → mean over real tokens → linear head) with the
adapter merged into the encoder. transformers' own ``BertForSequenceClassification`` pools the
[CLS] token through a tanh layer instead, so it cannot hold this head exactly. Only torch and
transformers are imported here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class FedFMClassifierConfig(PretrainedConfig):
    """The encoder's own config (``encoder``, a dict) plus the labels (``id2label``)."""

    model_type = "fedfm_text_classifier"

    def __init__(self, encoder: dict | None = None, **kwargs):
        self.encoder = dict(encoder or {})
        super().__init__(**kwargs)


class FedFMForSequenceClassification(PreTrainedModel):
    """Encoder → mean of the hidden states over real tokens → linear head → logits."""

    config_class = FedFMClassifierConfig
    base_model_prefix = "fedfm"

    def __init__(self, config: FedFMClassifierConfig):
        super().__init__(config)
        encoder_config = AutoConfig.for_model(**config.encoder)
        self.encoder = AutoModel.from_config(encoder_config)
        self.head = nn.Linear(encoder_config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,  # single texts: all 0, the default
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        logits = self.head(pooled.float())
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
