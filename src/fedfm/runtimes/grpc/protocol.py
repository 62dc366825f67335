"""What both ends of the gRPC runtime agree on: version, limits, chunking, hashing, sync blobs.

No pickle anywhere: control fields are protobuf scalars or JSON, tensors are safetensors bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict

from fedfm.codecs.wire import pack_groups, unpack_groups  # noqa: F401  (re-exported)
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


def instructions_from_json(text: str) -> FitInstructions:
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return FitInstructions(**data)
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"malformed fit instructions {text[:200]!r}: {e}") from None
