"""The ``[personalize]`` rules: FedPer's local head, Ditto, FedBN's local norms, a private LoRA.

Each rule states which tensors stay on a client (:meth:`Personalizer.attach` moves them from
``task.shared`` to ``task.personal``, so they leave the template: they are never encoded, never
sent, and the server never aggregates them) or, for Ditto, trains a whole personal model beside
the global one. See :mod:`fedfm.client.personal` for the store and the common behaviour.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import OrderedDict

import torch

from fedfm.client.personal import PERSONALIZERS, Personalizer
from fedfm.config import check
from fedfm.config.checks import registry
from fedfm.errors import FedFMError
from fedfm.registry import spec_name
from fedfm.state import State, Update


def _move(task, names: list[str]) -> None:
    """Make ``names`` (trainable parameters of ``task.model``) personal: out of the state."""
    params = dict(task.model.named_parameters())
    task.personal = OrderedDict((n, params[n]) for n in names)
    task.shared = OrderedDict((n, p) for n, p in task.shared.items() if n not in task.personal)


@PERSONALIZERS.register("none")
class NoPersonalization(Personalizer):
    """Every client uses the global model; its personalised figures are the global model's."""

    def fit(self, trainer, client_id, index, start, data, instr, store) -> Update:
        return trainer.fit(client_id, index, start, data, instr)

    def evaluate(self, task, client_id, rnd, state, rows, store) -> dict:
        task.set_state(state)
        return task.evaluate(rows.tokens, rows.labels, rows.rows)


@PERSONALIZERS.register("local_head")
class LocalHead(Personalizer):
    """FedPer (Arivazhagan et al. 2019): the body travels, each client's classifier head stays
    with it. A client that never trained has the initial head. There is no global head, so the
    run has no global model to score: compare with a ``none`` run on the same splits."""

    has_global_model = False

    @classmethod
    def check_config(cls, config) -> None:
        kind = registry("task").get(config.task.type)
        check(
            bool(kind.head_prefix),
            "personalize.method",
            config.personalize.method,
            f"another rule with task.type = {config.task.type!r} (it has no classifier head)",
        )
        method = spec_name(config.method)
        check(
            method not in ("head", "full"),
            "personalize.method",
            "local_head",
            f"a method whose shared part is not only the head, with method.type = {method!r} "
            "('head' would leave nothing to share, 'full' shares the whole encoder: use "
            "'lora', 'prompt', 'adapter' or 'ia3')",
        )
        check(
            config.evaluation.where == "clients",
            "evaluation.where",
            config.evaluation.where,
            "'clients' with personalize.method = 'local_head' (the server holds no trained head: "
            "only each client's own model can be scored, on its held-out rows)",
        )

    def attach(self, task) -> None:
        _move(task, [n for n in task.shared if n.startswith(task.head_prefix)])
        super().attach(task)


@PERSONALIZERS.register("local_norm")
class LocalNorm(Personalizer):
    """FedBN (Li et al. 2021) for transformers: every LayerNorm of the encoder trains and stays
    on its client (they are frozen otherwise, except under ``full``, which shares them). The
    global model keeps the pretrained norms."""

    def attach(self, task) -> None:
        names = []
        for prefix, module in task.model.named_modules():
            if isinstance(module, torch.nn.LayerNorm):
                for n, p in module.named_parameters(recurse=False):
                    p.requires_grad_(True)
                    names.append(f"{prefix}.{n}" if prefix else n)
        _move(task, names)
        super().attach(task)


@PERSONALIZERS.register("private_lora")
class PrivateLora(Personalizer):
    """A second LoRA of rank ``personalize.private_r`` on the same modules as the shared one
    (FedDPA-style, Yang et al. 2024): both act together in every forward pass, only the shared
    one (and the head) travels. The private one starts as peft starts any LoRA (B = 0: no
    change), so the global model is the shared LoRA alone."""

    ADAPTER = "private"

    @classmethod
    def check_config(cls, config) -> None:
        method = spec_name(config.method)
        check(
            method == "lora",
            "personalize.method",
            "private_lora",
            f"method.type = 'lora' (a private LoRA sits beside a shared one; not {method!r})",
        )

    def attach(self, task) -> None:
        from peft import LoraConfig, PeftModel

        peft_model = next((m for m in task.model.modules() if isinstance(m, PeftModel)), None)
        if peft_model is None:
            raise FedFMError("personalize.method = 'private_lora' needs a peft LoRA model")
        base = peft_model.peft_config["default"]
        config = LoraConfig(
            r=self.spec.private_r,
            lora_alpha=base.lora_alpha * self.spec.private_r / base.r,  # the same scaling
            lora_dropout=base.lora_dropout,
            target_modules=list(base.target_modules),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model.add_adapter(self.ADAPTER, config)  # seeded: the task seeded torch
            peft_model.base_model.set_adapter(["default", self.ADAPTER])
        tag = f".{self.ADAPTER}."
        names = [n for n, p in task.model.named_parameters() if p.requires_grad and tag in n]
        _move(task, names)
        super().attach(task)


@PERSONALIZERS.register("ditto")
class Ditto(Personalizer):
    """Ditto (Li et al. 2021): each selected client trains the global model as usual and, from
    its own last personal model, a personal one with the pull (λ/2)·‖v − w_global‖²
    (``personalize.ditto_lambda``), the same steps on the same rows. The personal model (a whole
    copy of the shared tensors) stays on the client; it costs a second local training."""

    def fit(self, trainer, client_id, index, start, data, instr, store) -> Update:
        update = trainer.fit(client_id, index, start, data, instr)
        own = store.load(client_id, instr.round)
        begin: State = start if own is None else OrderedDict((n, own[n]) for n in start)
        pulled = dataclasses.replace(instr, proximal_mu=self.spec.ditto_lambda)
        personal = trainer.fit(client_id, index, begin, data, pulled, anchor=start)
        store.save(client_id, instr.round, dict(personal.state))
        update.metrics["personal_loss"] = personal.metrics["loss"]
        return update

    def evaluate(self, task, client_id, rnd, state, rows, store) -> dict:
        task.set_state(state)
        out = task.evaluate(rows.tokens, rows.labels, rows.rows)
        own = store.load(client_id, rnd + 1)
        if own is not None:
            if set(own) != set(state):
                raise FedFMError(
                    f"client {client_id}'s personal model does not fit this model "
                    "(personalize.method = 'ditto'); was the run's config changed?"
                )
            task.set_state(own)
            personal = task.evaluate(rows.tokens, rows.labels, rows.rows)
            task.set_state(state)
        else:  # never trained: its personal model is the global one
            personal = out
        out.update({f"personal_{k}": personal[k] for k in ("accuracy", "loss") if k in personal})
        return out
