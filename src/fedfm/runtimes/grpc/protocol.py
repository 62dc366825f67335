"""What both ends of the gRPC runtime agree on: version, limits, chunking, hashing, sync blobs.

No pickle anywhere: control fields are protobuf scalars or JSON, tensors are safetensors bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, fields

from fedfm.codecs.wire import load_json, pack_groups, unpack_groups  # noqa: F401  (re-exported)
from fedfm.errors import ProtocolError
from fedfm.state import FitInstructions

VERSION = 3
"""Protocol version, carried by every message; a peer speaking another is refused."""

SESSION_HEADER = "x-fedfm-session"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes, size: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(offset, piece)`` pairs covering ``data[start:]`` in pieces of at most ``size`` bytes."""
    view = memoryview(data)
    for offset in range(start, len(data), size):
        yield offset, bytes(view[offset : offset + size])


def max_chunks(total: int, chunk_size: int) -> int:
    """The most chunks a payload of ``total`` bytes may take."""
    return max(1, -(-total // chunk_size))


def instructions_to_json(instructions: FitInstructions) -> str:
    return json.dumps(asdict(instructions))


# What a client accepts in fit instructions: each field's type and range (received bytes).
INSTRUCTION_BOUNDS: dict[str, tuple[type, float, float]] = {
    "round": (int, 0, 2**31),
    "local_steps": (int, 0, 10**7),
    "lr": (float, 0.0, 10.0),
    "batch_size": (int, 1, 2**20),
    "local_epochs": (float, 0.0, 10**4),
    "proximal_mu": (float, 0.0, 10**6),
    "evaluate": (bool, 0, 1),
    "uplink_decoded": (int, -1, 2**62),
}


def instructions_from_json(text: str) -> FitInstructions:
    """The server's fit instructions; a field of the wrong type or range is a ProtocolError."""
    data = load_json(text, "fit instructions")
    if not isinstance(data, dict):
        raise ProtocolError(f"malformed fit instructions {text[:200]!r}: not an object")
    unknown = sorted(set(data) - set(INSTRUCTION_BOUNDS))
    missing = [f.name for f in fields(FitInstructions) if f.name not in data]
    required = {"round", "local_steps", "lr", "batch_size"}
    if unknown or required & set(missing):
        raise ProtocolError(
            f"fit instructions: unknown fields {unknown[:3]}, missing {sorted(required & set(missing))}"
        )
    for key, value in data.items():
        kind, low, high = INSTRUCTION_BOUNDS[key]
        ok = isinstance(value, bool) if kind is bool else not isinstance(value, bool)
        ok = ok and isinstance(value, int if kind is int else (int, float))
        if not ok or not low <= value <= high:
            raise ProtocolError(
                f"fit instructions: {key} = {str(value)[:40]} is not allowed; allowed: "
                f"{kind.__name__} in {low} … {high}"
            )
        if kind is float:
            data[key] = float(value)
    return FitInstructions(**data)
