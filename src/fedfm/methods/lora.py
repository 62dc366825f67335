"""LoRA: low-rank adaptation (Hu et al. 2021, arXiv:2106.09685), through HF peft.

``freeze_a = true`` is FFA-LoRA (Sun et al. 2024, "Improving LoRA in Privacy-preserving Federated
Learning", arXiv:2403.12313): A stays at peft's random init, which is the same on every client
(the task seeds torch before wrapping the shared base model), and only B and the head train and
travel. Every client's update is then Bₖ·A with one A, so FedAvg of B is exactly the mean of the
products, and the uplink carries half the LoRA bytes.

``client_ranks = [8, 4, 2]`` gives clients of different resources different ranks (HetLoRA, Cho
et al. 2024, arXiv:2401.06432; FlexLoRA, Bai et al. 2024, arXiv:2402.11505): client i (its
position in the partition) trains rank rᵢ = client_ranks[i % len] ≤ r. Every client keeps the
model's rank-r shapes; before training, :func:`client_rank_truncation` replaces each module's
global factors by the best rank-rᵢ approximation of their product (truncated SVD), zero-padded::

    B·A ≈ U_rᵢ·S_rᵢ·V_rᵢᵀ  →  Bᵢ = [U_rᵢ·√S_rᵢ, 0],  Aᵢ = [√S_rᵢ·V_rᵢᵀ; 0]

A zero row j of A and zero column j of B get exactly zero gradients (∂L/∂A[j] ∝ B[:, j]ᵀ,
∂L/∂B[:, j] ∝ A[j]), so SGD, Adam and AdamW (decay of zero is zero) and FedProx's pull towards
that start keep them zero: the client's trained factors have rank ≤ rᵢ. The ``lora_trim`` codec
sends only those rᵢ rows and columns. The server aggregates as usual: FedAvg of the padded
factors is HetLoRA's zero-padding rule, ``strategy.name = "lora_svd"`` averages the products
exactly. Not with ``freeze_a``: A must stay the shared init there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fedfm.config import check
from fedfm.errors import ConfigError
from fedfm.methods.base import METHODS, Method
from fedfm.state import State
from fedfm.strategies.lora_aggregation import lora_pairs, svd_factors


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8  # rank of the low-rank update B·A
    alpha: float = 16.0  # scaling: the update is (alpha / r)·B·A
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: tuple[str, ...] = (
        "query",
        "value",
    )  # modules that get LoRA (causal LMs: q_proj, v_proj)
    freeze_a: bool = False  # FFA-LoRA: A frozen at its init; only B (and the head) train
    # Heterogeneous clients: client i trains rank client_ranks[i % len] (each 1 … r); () = all r.
    client_ranks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check(1 <= self.r <= 4096, "method.r", self.r, "1 … 4096")
        check(self.alpha > 0, "method.alpha", self.alpha, "> 0")
        check(0 <= self.dropout < 1, "method.dropout", self.dropout, "0 ≤ dropout < 1")
        check(
            len(self.target_modules) > 0,
            "method.target_modules",
            self.target_modules,
            "a non-empty list of module names",
        )
        check(isinstance(self.freeze_a, bool), "method.freeze_a", self.freeze_a, "true or false")
        check(
            isinstance(self.client_ranks, tuple | list),
            "method.client_ranks",
            self.client_ranks,
            "a list of ranks, e.g. [8, 4, 2]",
        )
        object.__setattr__(self, "client_ranks", tuple(self.client_ranks))
        for i, rank in enumerate(self.client_ranks):
            check(
                isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= self.r,
                f"method.client_ranks[{i}]",
                rank,
                f"an integer from 1 to method.r = {self.r}",
            )
        check(
            not (self.freeze_a and self.client_ranks),
            "method.client_ranks",
            list(self.client_ranks),
            "[] with method.freeze_a = true (FFA-LoRA's A is the shared init on every client; "
            "a lower client rank would cut it)",
        )


def is_lora_a(name: str) -> bool:
    """Whether a parameter name is a LoRA A factor (``….lora_A.<adapter>.weight``)."""
    return ".lora_A." in name or ".lora_embedding_A." in name


def truncate_factors(
    a: torch.Tensor, b: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors of B·A (A: r × in, B: out × r), zero-padded to r.

    Truncated SVD (Eckart–Young): ‖B·A − Bᵢ·Aᵢ‖_F² is the sum of the dropped σⱼ². Components with
    a zero singular value (B = 0 in round 1) keep their row of A and a zero column of B, as in
    :func:`~fedfm.strategies.lora_aggregation.svd_factors`: B·A is unchanged and they still train.
    """
    if rank >= a.shape[0]:
        return a, b
    f = svd_factors([a], [b], [1.0], rank)
    a_out, b_out = torch.zeros_like(a), torch.zeros_like(b)
    a_out[:rank], b_out[:, :rank] = f.a, f.b
    return a_out, b_out


def truncate_state(state: State, rank: int) -> State:
    """``state`` with every LoRA pair cut to ``rank`` by :func:`truncate_factors`; new tensors
    for the pairs, the others shared with ``state`` (which is left as it is)."""
    out: State = OrderedDict(state)
    for a_name, b_name in lora_pairs(state):
        out[a_name], out[b_name] = truncate_factors(state[a_name], state[b_name], rank)
    return out


def client_rank(spec: LoraSpec, index: int) -> int:
    """The rank client ``index`` (its position in the partition) trains."""
    return spec.client_ranks[index % len(spec.client_ranks)] if spec.client_ranks else spec.r


def client_rank_truncation(
    spec: LoraSpec, client_ids: Sequence[str] | Mapping[str, int]
) -> Callable[[str, int, int, State], State]:
    """A ClientApp ``prepare`` hook: each client starts from the global factors cut to its rank.

    Ranks follow the clients' positions in ``client_ids`` (the partition), not the ClientApp's
    own index, so a standalone run's one-client apps get the same ranks; a client not in the list
    (the pooled client of ``centralized``) trains the full rank r.
    """
    positions = (
        client_ids
        if isinstance(client_ids, Mapping)
        else {cid: i for i, cid in enumerate(client_ids)}
    )
    ranks = {cid: client_rank(spec, i) for cid, i in positions.items()}

    def prepare(client_id: str, client_index: int, round: int, state: State) -> State:
        rank = ranks.get(client_id, spec.r)
        return state if rank >= spec.r else truncate_state(state, rank)

    return prepare


@METHODS.register("lora")
class Lora(Method):
    """Trains A (r×in) and B (out×r) beside each target linear layer; W' = W + (alpha/r)·B·A.

    With ``freeze_a``, only B trains (FFA-LoRA). With ``client_ranks``, client i trains a
    rank-rᵢ part of the same shapes (see the module docstring).
    """

    Spec = LoraSpec
    is_peft = True
    tunes_layers = True

    def client_preparer(self, positions: Mapping[str, int]):
        """With ``client_ranks``: each client starts from the global factors cut to its rank."""
        return client_rank_truncation(self.spec, positions) if self.spec.client_ranks else None

    def wrap(self, encoder):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=self.spec.r,
            lora_alpha=self.spec.alpha,
            lora_dropout=self.spec.dropout,
            target_modules=list(self.spec.target_modules),
        )
        try:
            model = get_peft_model(encoder, config)
        except ValueError as e:
            raise ConfigError(
                f"method.target_modules = {list(self.spec.target_modules)!r}: {e}"
            ) from None
        if self.spec.freeze_a:
            # Not shared: the task shares exactly the trainable parameters, so A never travels.
            for name, p in model.named_parameters():
                if is_lora_a(name):
                    p.requires_grad_(False)
        return model
