"""What an uploaded update must pass before the round loop stores or aggregates it.

Everything here reads a client's own statements (its header) and values, so every check raises
:class:`~fedfm.errors.ProtocolError` naming the field, the value and what is allowed. The loop
rejects that one update and the round goes on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import torch

from fedfm.config import LimitsConfig
from fedfm.errors import ProtocolError
from fedfm.state import State, Update

log = logging.getLogger(__name__)

MAX_METRICS = 32
MAX_METRIC_NAME = 64
MAX_METRIC_VALUE = 1e12  # a loss or a count; before float(), so a huge int cannot overflow


def check_examples(value: Any, limits: LimitsConfig) -> int:
    """A client's stated ``num_examples``: an int in 1 … ``limits.max_examples``."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 1 <= value <= limits.max_examples
    ):
        raise ProtocolError(
            f"payload num_examples = {str(value)[:40]} is not allowed; allowed: an integer in "
            f"1 … {limits.max_examples} (limits.max_examples)"
        )
    return value


def check_metrics(value: Any) -> dict[str, float]:
    """A client's metrics: at most 32 names of ≤ 64 characters, finite numbers of |x| ≤ 1e12."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METRICS:
        raise ProtocolError(f"payload metrics are not a mapping of at most {MAX_METRICS} numbers")
    out: dict[str, float] = {}
    for key, number in value.items():
        if (
            not isinstance(key, str)
            or len(key) > MAX_METRIC_NAME
            or not isinstance(number, int | float)
            or isinstance(number, bool)
            or not abs(number) <= MAX_METRIC_VALUE
            or not math.isfinite(float(number))
        ):
            raise ProtocolError(
                f"payload metric {str(key)[:MAX_METRIC_NAME]!r} = {str(number)[:40]} is not "
                f"allowed; allowed: a finite number with |x| ≤ {MAX_METRIC_VALUE:g}"
            )
        out[key] = float(number)
    return out


def check_values(state: State, start: State | None, limits: LimitsConfig) -> None:
    """Refuse values beyond ``max_abs_value`` and a change from ``start`` beyond ``max_update_norm``."""
    if limits.max_abs_value > 0:
        for name, t in state.items():
            if t.is_floating_point() and t.numel():
                largest = t.abs().max().item()
                if largest > limits.max_abs_value:
                    raise ProtocolError(
                        f"update tensor {name!r} holds |value| {largest:.3g}; allowed: ≤ "
                        f"{limits.max_abs_value:g} (limits.max_abs_value)"
                    )
    if limits.max_update_norm > 0 and start is not None:
        squares = sum(
            float(((t.double() - start[n].double()) ** 2).sum()) for n, t in state.items()
        )
        norm = math.sqrt(squares)
        if norm > limits.max_update_norm:
            raise ProtocolError(
                f"update norm {norm:.4g} is not allowed; allowed: ≤ {limits.max_update_norm:g} "
                "(limits.max_update_norm)"
            )


def weight_cap(counts: list[int], share: float) -> int | None:
    """The largest ``T`` such that with every count cut to ``min(n, T)`` no client holds more
    than ``share`` of the total; None when no cut is needed (or possible: ``share·k < 1``)."""
    total = sum(counts)
    if share >= 1 or not counts or max(counts) <= share * total:
        return None
    if share * len(counts) < 1:
        return min(counts)  # every client at the same weight: the closest to the cap there is
    low, high = 1, max(counts)  # T = 1 always satisfies it (each holds ≤ 1/k ≤ share)
    while low < high:
        mid = (low + high + 1) // 2
        if mid <= share * sum(min(n, mid) for n in counts):
            low = mid
        else:
            high = mid - 1
    return low


def cap_weights(updates: list[Update], share: float) -> list[Update]:
    """The updates with ``num_examples`` cut so that none carries more than ``share`` of the
    round's example weight (``limits.max_client_weight``)."""
    cap = weight_cap([u.num_examples for u in updates], share)
    if cap is None:
        return updates
    capped = [u.client_id for u in updates if u.num_examples > cap]
    log.info("round weights: %s capped at %d examples (limits.max_client_weight)", capped, cap)
    return [replace(u, num_examples=min(u.num_examples, cap)) for u in updates]


def finite_state(state: State) -> bool:
    """Whether every tensor of ``state`` is finite (an aggregate must be, to be kept)."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())
