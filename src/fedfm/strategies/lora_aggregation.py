"""LoRA-aware aggregation: average the clients' products B·A, not A and B separately.

A LoRA module adds (alpha/r)·B·A to a frozen weight (A: r × in, B: out × r). FedAvg averages A
and B separately, and mean(B)·mean(A) ≠ mean(B·A): the cross terms Bⱼ·Aₖ (j ≠ k) are an update no
client made (FedEx-LoRA, Singhal et al. 2024, arXiv:2410.09432; FLoRA, Wang et al. 2024,
arXiv:2409.05976). Here the server averages the products and factorises the result again, as
FlexLoRA does (Bai et al. 2024, arXiv:2402.11505)::

    ΔW = Σₖ nₖ·Bₖ·Aₖ / Σₖ nₖ                              (out × in: the exact mean update)
    ΔW ≈ U_r·S_r·V_rᵀ  →  B = U_r·S_r / c,  A = c·V_rᵀ      (truncated SVD, the global rank r)

Any split B·A = U_r·S_r·V_rᵀ is as exact as any other (the factors are free up to an invertible
r × r matrix), but the next round trains from it. FlexLoRA's B = U·√S, A = √S·Vᵀ shrinks A's rows
to √σᵢ, which after a round of small updates is far below the scale LoRA initialised A at, and
B's gradient is proportional to A·x: the next round then learns more slowly. The default split
(``split = "a_scale"``) gives A orthogonal rows at c, the clients' mean row norm of A, and puts
the singular values into B; ``split = "sqrt"`` is FlexLoRA's.

The truncated SVD is the best rank-r approximation of ΔW in Frobenius norm (Eckart & Young 1936),
so the result is never further from the exact mean than mean(B)·mean(A), and it is exact when the
clients' products span ≤ r dimensions (a shared A, as in FFA-LoRA). In general ΔW has rank up to
K·r; the relative truncation error ‖ΔW − B·A‖_F / ‖ΔW‖_F is reported as ``lora_svd_error``.
The scaling alpha/r multiplies every client's product alike, so it factors out.

Clients of different ranks (HetLoRA, Cho et al. 2024, arXiv:2401.06432) are aggregated by the
same functions: :func:`svd_factors` takes factors of any ranks, :func:`zero_pad_factors` pads them
to the global rank, and :func:`truncate_lora_rank` cuts the global factors down for a client.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from fedfm.config import check_choice
from fedfm.state import State, Update
from fedfm.strategies.base import STRATEGIES, Strategy

log = logging.getLogger(__name__)

# peft names a module's factors "<module>.lora_A.<adapter>.weight" and "<module>.lora_B.<...>";
# embedding layers use "lora_embedding_A" / "lora_embedding_B" (same shapes: r × in, out × r).
_LORA_A = re.compile(r"(?P<module>.+)\.lora_(?P<kind>embedding_)?A(?P<rest>\..+)")
# SVD and QR run in float32: on random and trained factors the reported error matches the one
# measured in float64 to ~1e-6 (see tests/strategies/test_lora_aggregation.py).
_DTYPE = torch.float32


class LoraFactors(NamedTuple):
    """Aggregated factors of one LoRA module and how far B·A is from the exact mean product."""

    a: torch.Tensor  # (rank, in)
    b: torch.Tensor  # (out, rank)
    error: float  # ‖ΔW − B·A‖_F / ‖ΔW‖_F, 0 when ΔW = 0


def lora_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """The (A name, B name) of every LoRA module whose two factors are both among ``names``."""
    names = list(names)
    present = set(names)
    pairs = []
    for name in names:
        m = _LORA_A.fullmatch(name)
        if m:
            b_name = f"{m['module']}.lora_{m['kind'] or ''}B{m['rest']}"
            if b_name in present:
                pairs.append((name, b_name))
    return pairs


def _normalised(weights: Sequence[float], count: int) -> list[float]:
    if len(weights) != count:
        raise ValueError(f"{count} clients' factors but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be ≥ 0 and sum to a positive number, got {list(weights)}")
    return [w / total for w in weights]


def _stacks(a_factors, b_factors, weights, scales) -> tuple[torch.Tensor, torch.Tensor]:
    """ΔW = B_stack · A_stack with B_stack = [w₁s₁B₁ … w_Ks_KB_K] (out × Σrₖ), A_stack = [A₁; …]."""
    if not a_factors or len(a_factors) != len(b_factors):
        raise ValueError(f"{len(a_factors)} A factors and {len(b_factors)} B factors")
    w = _normalised(weights, len(a_factors))
    scales = [1.0] * len(a_factors) if scales is None else list(scales)
    if len(scales) != len(a_factors):
        raise ValueError(f"{len(a_factors)} clients' factors but {len(scales)} scales")
    a0, b0 = a_factors[0], b_factors[0]
    for k, (a, b) in enumerate(zip(a_factors, b_factors, strict=True)):
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"client {k}: A {tuple(a.shape)} and B {tuple(b.shape)} are not LoRA factors "
                "(A: rank × in, B: out × rank)"
            )
        if a.shape[1] != a0.shape[1] or b.shape[0] != b0.shape[0]:
            raise ValueError(
                f"client {k}: B·A is {b.shape[0]} × {a.shape[1]}, "
                f"client 0's is {b0.shape[0]} × {a0.shape[1]}"
            )
    b_stack = torch.cat(
        [b.to(_DTYPE) * (wk * sk) for b, wk, sk in zip(b_factors, w, scales, strict=True)], dim=1
    )
    a_stack = torch.cat([a.to(_DTYPE) for a in a_factors], dim=0)
    return b_stack, a_stack


def _padded_mean_a(a_factors, weights, rank: int) -> torch.Tensor:
    """Σ wₖ·Aₖ with each Aₖ padded (or cut) to ``rank`` rows: (rank, in)."""
    w = _normalised(weights, len(a_factors))
    out = torch.zeros(rank, a_factors[0].shape[1], dtype=_DTYPE)
    for a, wk in zip(a_factors, w, strict=True):
        rows = min(rank, a.shape[0])
        out[:rows].add_(a[:rows].to(_DTYPE), alpha=wk)
    return out


SPLITS = ("a_scale", "sqrt")


def _a_row_scale(a_factors, weights) -> float:
    """c: the clients' weighted mean RMS row norm of A (‖Aₖ‖_F / √rₖ); 1 if every A is zero."""
    w = _normalised(weights, len(a_factors))
    c = sum(
        wk * float(torch.linalg.matrix_norm(a.to(_DTYPE))) / a.shape[0] ** 0.5
        for a, wk in zip(a_factors, w, strict=True)
        if a.shape[0] > 0
    )
    return c if c > 0 else 1.0


def svd_factors(
    a_factors: Sequence[torch.Tensor],
    b_factors: Sequence[torch.Tensor],
    weights: Sequence[float],
    rank: int,
    scales: Sequence[float] | None = None,
    split: str = "a_scale",
) -> LoraFactors:
    """Rank-``rank`` factors whose B·A is the truncated SVD of ΔW = Σ wₖ·sₖ·Bₖ·Aₖ / Σ wₖ.

    ``split`` chooses the factors of that product (see the module docstring): ``"a_scale"``
    (A = c·Vᵀ with the clients' row norm c, B = U·S / c) or ``"sqrt"`` (B = U·√S, A = √S·Vᵀ).

    Clients may have different ranks rₖ (FlexLoRA); ``scales`` sₖ (default 1) put their products
    on the global adapter's scale, e.g. r_global/rₖ when client k uses alpha/rₖ. Components
    with a zero singular value (ΔW = 0 in round 1, or rank ΔW < ``rank``) get a zero B column and
    the clients' mean A row: B·A is unchanged, and A is not zero, so those directions still train.
    """
    if split not in SPLITS:
        raise ValueError(f"split = {split!r} is not allowed; allowed: {', '.join(SPLITS)}")
    b_stack, a_stack = _stacks(a_factors, b_factors, weights, scales)
    out_dim, stacked_rank, in_dim = b_stack.shape[0], b_stack.shape[1], a_stack.shape[1]
    # ΔW = B_stack·A_stack has rank ≤ Σrₖ: take its SVD through thin QRs of the two stacks and
    # the SVD of a small core, never forming ΔW. B_stack = Q_b·R_b, A_stackᵀ = Q_a·R_a, so
    # ΔW = Q_b·(R_b·R_aᵀ)·Q_aᵀ; cost O((out + in)·(Σrₖ)²) instead of O(out·in·min(out, in)).
    q_b, r_b = torch.linalg.qr(b_stack)  # (out, p), (p, Σrₖ)
    q_a, r_a = torch.linalg.qr(a_stack.T)  # (in, q), (q, Σrₖ)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # core (p, q)
    # Singular values below the usual numerical-rank tolerance are zero (as numpy.matrix_rank).
    tol = (
        (s[0] if s.numel() else 0.0) * max(out_dim, in_dim, stacked_rank) * torch.finfo(_DTYPE).eps
    )
    kept = min(rank, int((s > tol).sum()))
    if split == "sqrt":
        b_scale = a_scale = s[:kept].sqrt()
    else:
        c = _a_row_scale(a_factors, weights)
        b_scale, a_scale = s[:kept] / c, torch.full_like(s[:kept], c)
    b = torch.zeros(out_dim, rank, dtype=_DTYPE)
    b[:, :kept] = (q_b @ u[:, :kept]) * b_scale
    a = _padded_mean_a(a_factors, weights, rank)
    a[:kept] = a_scale[:, None] * (vh[:kept] @ q_a.T)
    # Eckart–Young: ‖ΔW − B·A‖_F² is the sum of the dropped σᵢ² (in float64: no underflow).
    s64 = s.to(torch.float64)
    total = float(s64.square().sum())
    error = (float(s64[kept:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    return LoraFactors(a, b, error)


def zero_pad_factors(
    a_factors: Sequence[torch.Tensor],
    b_factors: Sequence[torch.Tensor],
    weights: Sequence[float],
    rank: int,
    scales: Sequence[float] | None = None,
) -> LoraFactors:
    """HetLoRA's rule: pad each Aₖ with zero rows and Bₖ with zero columns to ``rank``, average.

    Rank-rₖ clients contribute only to the first rₖ components. This is FedAvg of the padded
    factors, so it has FedAvg's cross terms; ``error`` measures them against the mean product.
    (HetLoRA weights clients by ‖Bₖ·Aₖ‖_F; here, as everywhere in fedfm, by their examples.)
    """
    too_big = [a.shape[0] for a in a_factors if a.shape[0] > rank]
    if too_big:
        raise ValueError(f"client rank {too_big[0]} exceeds the global rank {rank}; use svd")
    b_stack, a_stack = _stacks(a_factors, b_factors, weights, scales)
    w = _normalised(weights, len(a_factors))
    scales = [1.0] * len(a_factors) if scales is None else list(scales)
    b = torch.zeros(b_stack.shape[0], rank, dtype=_DTYPE)
    for bk, wk, sk in zip(b_factors, w, scales, strict=True):
        b[:, : bk.shape[1]].add_(bk.to(_DTYPE), alpha=wk * sk)
    a = _padded_mean_a(a_factors, weights, rank)
    # ‖ΔW − B·A‖ = ‖[B_stack, −B]·[A_stack; A]‖, again through QR cores (no out × in matrix).
    exact = _product_norm(b_stack, a_stack)
    gap = _product_norm(torch.cat([b_stack, -b], dim=1), torch.cat([a_stack, a], dim=0))
    return LoraFactors(a, b, gap / exact if exact > 0 else 0.0)


def _product_norm(b: torch.Tensor, a: torch.Tensor) -> float:
    """‖b·a‖_F for tall b (out × m) and wide a (m × in), in O((out + in)·m²)."""
    _, r_b = torch.linalg.qr(b)
    _, r_a = torch.linalg.qr(a.T)
    return float(torch.linalg.matrix_norm(r_b @ r_a.T).to(torch.float64))


RULES = {"svd": svd_factors, "zero_pad": zero_pad_factors}


def module_name(a_name: str) -> str:
    """The LoRA module a factor belongs to: ``…query.lora_A.default.weight`` → ``…query``."""
    m = _LORA_A.fullmatch(a_name)
    return m["module"] if m else a_name


def aggregate_lora(
    states: Sequence[State],
    weights: Sequence[float],
    template: State,
    rule: str = "svd",
    scales: Sequence[float] | None = None,
    split: str = "a_scale",
) -> tuple[State, dict[str, float]]:
    """The next global state, in ``template``'s names, shapes and dtypes, and the error per module.

    LoRA pairs (both factors in ``template``) are aggregated by ``rule`` (``"svd"`` or
    ``"zero_pad"``) to the template's rank; the clients' ranks may differ from it. Every other
    tensor is the weighted mean, as in FedAvg. Errors are keyed by :func:`module_name`.
    ``split`` is :func:`svd_factors`' choice of factors (the ``svd`` rule only).
    """
    if rule not in RULES:
        raise ValueError(f"rule = {rule!r} is not allowed; allowed: {' | '.join(map(repr, RULES))}")
    if not states:
        raise ValueError("cannot aggregate zero states")
    w = _normalised(weights, len(states))
    pair_of = {}  # either factor's name → (A name, B name)
    for pair in lora_pairs(template):
        pair_of[pair[0]] = pair_of[pair[1]] = pair
    out: State = OrderedDict()
    errors: dict[str, float] = {}
    for name, ref in template.items():
        if name in out:
            continue
        if name not in pair_of:
            acc = torch.zeros(ref.shape, dtype=torch.float32)
            for state, wk in zip(states, w, strict=True):
                if state[name].shape != ref.shape:
                    raise ValueError(
                        f"{name}: a client sent shape {tuple(state[name].shape)}, "
                        f"the global state has {tuple(ref.shape)}"
                    )
                acc.add_(state[name].to(torch.float32), alpha=wk)
            out[name] = acc.to(ref.dtype)
            continue
        a_name, b_name = pair_of[name]
        a_ref, b_ref = template[a_name], template[b_name]
        options = {"split": split} if rule == "svd" else {}
        f = RULES[rule](
            [s[a_name] for s in states],
            [s[b_name] for s in states],
            weights,
            a_ref.shape[0],
            scales,
            **options,
        )
        if f.a.shape != a_ref.shape or f.b.shape != b_ref.shape:
            raise ValueError(
                f"{module_name(a_name)}: clients' B·A is {f.b.shape[0]} × {f.a.shape[1]}, "
                f"the global one {b_ref.shape[0]} × {a_ref.shape[1]}"
            )
        out[a_name], out[b_name] = f.a.to(a_ref.dtype), f.b.to(b_ref.dtype)
        errors[module_name(a_name)] = f.error
    return OrderedDict((name, out[name]) for name in template), errors


def truncate_lora_rank(state: State, rank: int, scale: float = 1.0) -> State:
    """A client's rank-``rank`` view of a global state: A's first rows, B's first columns (·scale).

    After :func:`svd_factors` the components are sorted by singular value, so the cut is the best
    rank-``rank`` approximation of the global B·A (HetLoRA's truncation step).
    """
    if rank < 1:
        raise ValueError(f"rank = {rank} is not allowed; allowed: ≥ 1")
    out: State = OrderedDict((name, t) for name, t in state.items())
    for a_name, b_name in lora_pairs(state):
        out[a_name] = state[a_name][:rank].clone()
        out[b_name] = (state[b_name][:, :rank] * scale).to(state[b_name].dtype)
    return out


@dataclass(frozen=True)
class LoraSvdSpec:
    split: str = "a_scale"  # how the product is cut into B and A: "a_scale" | "sqrt" (FlexLoRA)

    def __post_init__(self) -> None:

        check_choice("strategy.split", self.split, list(SPLITS))


@STRATEGIES.register("lora_svd")
class LoraSvd(Strategy):
    """FedAvg, except that each LoRA module's next B·A is the truncated SVD of the mean product.

    Reports ``lora_svd_error`` (the largest relative truncation error over modules) and
    ``lora_svd_error_mean`` in each round's metrics.
    """

    Spec = LoraSvdSpec

    def __init__(self, spec, federation) -> None:
        super().__init__(spec, federation)
        self.errors: dict[str, float] = {}
        self._warned = False

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        if not lora_pairs(global_state) and not self._warned:
            self._warned = True
            log.warning(
                "strategy lora_svd: no LoRA A/B pair is shared (a non-LoRA method, or "
                "method.freeze_a = true, where FedAvg of B is already exact); averaging like fedavg"
            )
        state, self.errors = aggregate_lora(
            [u.state for u in updates],
            [u.num_examples for u in updates],
            global_state,
            split=self.spec.split,
        )
        return state

    def round_metrics(self) -> dict[str, float]:
        if not self.errors:
            return {}
        values = list(self.errors.values())
        return {"lora_svd_error": max(values), "lora_svd_error_mean": sum(values) / len(values)}
