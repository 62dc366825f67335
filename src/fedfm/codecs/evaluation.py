"""The messages of federated evaluation (``[evaluation] where = "clients" | "both"``).

The server sends the global state as it is (the wire format without codecs, so that no codec
memory moves: evaluation never changes what the next round's downlink is coded against); each
client answers with its example count and metrics on its own held-out rows, and no tensor.
Both directions are decoded as hostile bytes: anything malformed is a :class:`ProtocolError`.
"""

from __future__ import annotations

import math
from typing import Any

from fedfm.codecs.wire import pack, unpack, validate_state
from fedfm.errors import ProtocolError
from fedfm.state import State

KIND = "evaluation"
MAX_RESULT_BYTES = 64 * 1024  # an answer holds a few numbers
MAX_METRICS = 16


def pack_request(state: State, round: int) -> bytes:
    """The global state to score, for round ``round``."""
    return pack(dict(state), {"kind": KIND, "round": round})


def unpack_request(payload: bytes, template: State, round: int) -> State:
    """The state to score, checked against the model's template and the round."""
    tensors, header = unpack(payload)
    if header.get("kind") != KIND or header.get("round") != round:
        raise ProtocolError(
            f"evaluation request for {header.get('kind')!r} round {header.get('round')!r}, "
            f"expected an evaluation of round {round}"
        )
    return validate_state(tensors, template)


def pack_result(client_id: str, round: int, num_examples: int, metrics: dict[str, float]) -> bytes:
    """One client's answer: how many held-out rows it scored, and the figures."""
    return pack(
        {},
        {
            "kind": KIND,
            "round": round,
            "client": client_id,
            "num_examples": num_examples,
            "metrics": metrics,
        },
    )


def unpack_result(payload: bytes, client_id: str, round: int) -> tuple[int, dict[str, float]]:
    """``(num_examples, metrics)`` of a client's answer; refuses anything else."""
    tensors, header = unpack(payload, max_bytes=MAX_RESULT_BYTES)
    if tensors:
        raise ProtocolError("an evaluation result carries no tensors")
    if header.get("kind") != KIND or header.get("round") != round:
        raise ProtocolError(f"not an evaluation result of round {round}")
    if header.get("client") != client_id:
        raise ProtocolError(
            f"evaluation result names client {header.get('client')!r}, it came from {client_id!r}"
        )
    n = header.get("num_examples")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 2**40:
        raise ProtocolError(f"evaluation num_examples = {n!r} is not a positive integer")
    metrics: Any = header.get("metrics")
    if not isinstance(metrics, dict) or not 1 <= len(metrics) <= MAX_METRICS:
        raise ProtocolError("evaluation metrics are not a small mapping of numbers")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if (
            not isinstance(key, str)
            or len(key) > 64
            or not isinstance(value, int | float)
            or isinstance(value, bool)
            or abs(value) > 1e12  # before float(): a huge int must not overflow
            or not math.isfinite(float(value))
        ):
            raise ProtocolError(f"evaluation metric {str(key)[:64]!r} = {value!r} is not allowed")
        out[key] = float(value)
    # The global model's accuracy, or only the client's own model's (a personalised run
    # without a global model); every accuracy lies in [0, 1].
    if not ({"accuracy", "personal_accuracy"} & set(out)) or any(
        not 0 <= v <= 1 for k, v in out.items() if k.endswith("accuracy")
    ):
        raise ProtocolError("an evaluation result needs an accuracy between 0 and 1")
    return n, out
