"""Offsite-tuning's emulator: the configured method, restricted to the model's end layers.

Offsite-Tuning (Xiao et al. 2023, arXiv:2302.04870): the model owner never ships its full model.
The data owners receive an *emulator*, the first and last ``keep_layers`` transformer layers
(the trainable adapter) around a compressed, frozen middle (every ``drop_every``-th middle
layer, uniform layer drop), and train the adapter on it; the tuned ends plug back into the full
model. :class:`Offsite` wraps a method (``full``: the paper's setting, or ``lora``) for both
sides::

    full model  (server)   0 1 | 2 3 4 5 6 7 | 8 9        keep_layers = 2
    emulator    (clients)  0 1 | 2   4   6   | 8 9        drop_every = 2

The emulator's layers keep their index in the full model (:class:`IndexedLayers`), so both
models name the shared tensors alike (``encoder.layer.9.…``): the template, the wire and the
checkpoints are the full model's.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedfm.errors import ConfigError
from fedfm.methods.base import Method


def emulator_layers(total: int, keep: int, drop_every: int) -> list[int]:
    """The full model's layer indices the emulator keeps: the ``keep`` first and last layers
    and every ``drop_every``-th layer between them (starting with the first middle layer)."""
    middle = list(range(keep, total - keep))
    return [*range(keep), *middle[::drop_every], *range(total - keep, total)]


class IndexedLayers(nn.ModuleList):
    """A layer stack whose layers keep their indices in the full model as their names.

    Iteration, ``len`` and integer or slice indexing go by position (what a transformers model's
    forward does); ``named_parameters`` and ``state_dict`` use the full model's indices."""

    def __init__(self, layers: dict[int, nn.Module]) -> None:
        super().__init__()
        for index, layer in layers.items():
            self.add_module(str(index), layer)

    def __getitem__(self, idx):
        layers = list(self._modules.values())
        if isinstance(idx, slice):
            return nn.ModuleList(layers[idx])
        return layers[idx]


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, stack)``: the model's transformer layers, i.e. its longest ``ModuleList`` whose
    children are all of one class (``encoder.layer`` of BERT, ``model.layers`` of Llama)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        uniform = isinstance(module, nn.ModuleList) and len({type(m) for m in module}) == 1
        if uniform and len(module) >= 2 and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise ConfigError(
            f"federation.mode = 'offsite' needs a model with a stack of transformer layers; "
            f"a {type(model).__name__} has none"
        )
    return best


def _count(modules) -> tuple[int, int]:
    """(parameters, bytes of their tensors) of ``modules``."""
    params = [p for m in modules for p in m.parameters()]
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def check_layers(total: int, keep: int, drop_every: int, model: str) -> list[int]:
    """The emulator's layers, or a ConfigError when the settings leave nothing to withhold."""
    if 2 * keep >= total:
        raise ConfigError(
            f"offsite.keep_layers = {keep} is not allowed; allowed: 1 … {(total - 1) // 2} "
            f"(2 × keep_layers < the {total} layers of {model!r}, so that a middle is left)"
        )
    kept = emulator_layers(total, keep, drop_every)
    if len(kept) == total:
        raise ConfigError(
            f"offsite.drop_every = {drop_every} is not allowed with offsite.keep_layers = {keep} "
            f"on the {total} layers of {model!r}: the emulator would drop no middle layer; "
            "allowed: fewer keep_layers (a middle of 2 layers or more)"
        )
    return kept


class Offsite(Method):
    """``inner`` (a method with ``tunes_layers``) trained on the end layers only; with
    ``emulator``, the model's middle is first compressed by layer drop (the clients' model).

    ``report`` (set by :meth:`wrap`) gives the layers and sizes of both models."""

    def __init__(
        self, inner: Method, keep_layers: int, drop_every: int, emulator: bool, model: str
    ) -> None:
        super().__init__(inner.spec)
        self.inner = inner
        self.is_peft = inner.is_peft
        self.keep_layers, self.drop_every = keep_layers, drop_every
        self.emulator, self.model_name = emulator, model
        self.report: dict[str, Any] = {}

    def wrap(self, encoder: nn.Module) -> nn.Module:
        name, stack = layer_stack(encoder)
        total, keep = len(stack), self.keep_layers
        kept = check_layers(total, keep, self.drop_every, self.model_name)
        ends = [stack[i] for i in (*range(keep), *range(total - keep, total))]
        middle = [stack[i] for i in range(keep, total - keep)]
        emulator_middle = [stack[i] for i in kept[keep:-keep]]
        self.report = _report(encoder, total, kept, middle, emulator_middle)
        if self.emulator:
            parent, _, attr = name.rpartition(".")
            owner = encoder.get_submodule(parent) if parent else encoder
            setattr(owner, attr, IndexedLayers({i: stack[i] for i in kept}))
        wrapped = self.inner.wrap(encoder)
        trainable = {id(p) for layer in ends for p in layer.parameters()}
        for p in wrapped.parameters():  # embeddings, the middle, final norms: frozen
            if id(p) not in trainable:
                p.requires_grad_(False)
        return wrapped

    def client_preparer(self, positions):
        return self.inner.client_preparer(positions)

    def prefix_tokens(self) -> int:
        return self.inner.prefix_tokens()

    def save(self, encoder: nn.Module, path) -> None:
        self.inner.save(encoder, path)


def _report(model: nn.Module, total: int, kept: list[int], middle, emulator_middle):
    """The sizes of the full model, the emulator and their middles (before any adapter)."""
    full_params, full_bytes = _count([model])
    middle_params, middle_bytes = _count(middle)
    shipped_params, shipped_bytes = _count(emulator_middle)
    withheld_params, withheld_bytes = middle_params - shipped_params, middle_bytes - shipped_bytes
    return {
        "layers": total,
        "emulator_layers": kept,
        "full_model_params": full_params,
        "full_model_bytes": full_bytes,
        "emulator_params": full_params - withheld_params,
        "emulator_bytes": full_bytes - withheld_bytes,
        "middle_params": middle_params,  # the full model's middle: never leaves the server
        "middle_bytes": middle_bytes,
        "emulator_middle_params": shipped_params,  # what the clients receive of the middle
        "emulator_middle_bytes": shipped_bytes,
    }


def offsite_summary(report: dict[str, Any], clients: int) -> dict[str, Any]:
    """What each party held, for ``summary.json``: the full model's and the emulator's sizes,
    the middle the server never shipped, and the emulator's bytes shipped once to each client
    (``clients``; the per-round ``bytes_down`` count only the shared end-layer tensors)."""
    withheld = report["middle_params"] - report["emulator_middle_params"]
    return {
        **report,
        "withheld_params": withheld,
        "withheld_bytes": report["middle_bytes"] - report["emulator_middle_bytes"],
        "emulator_share_of_full": round(report["emulator_params"] / report["full_model_params"], 4),
        "emulator_bytes_shipped": report["emulator_bytes"] * clients,
    }
