"""The wire format: tensors as safetensors bytes with a small string header, and validation.

Nothing on the wire is ever unpickled: safetensors holds raw tensor bytes plus a JSON header.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from fedfm.errors import ProtocolError
from fedfm.state import State

WIRE_VERSION = "1"
HEADER_KEY = "fedfm"  # the safetensors metadata key that holds fedfm's JSON header


def pack(tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> bytes:
    """Serialise tensors and a JSON-able header into one safetensors payload."""
    from safetensors.torch import save

    meta = {HEADER_KEY: json.dumps({"wire": WIRE_VERSION, **header}, sort_keys=True)}
    return save({k: t.contiguous() for k, t in tensors.items()}, metadata=meta)


# Bounds on what a header may hold: received JSON is parsed only within them, so a 5000-digit
# integer, a NaN or a deeply nested list is a ProtocolError, never a ValueError or RecursionError.
MAX_HEADER_BYTES = 1 << 20  # the safetensors JSON header, tensor entries included
MAX_INT_DIGITS = 19  # |int| < 10**19: every field fits in 64 bits
MAX_DEPTH = 16


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits; at most {MAX_INT_DIGITS} are allowed")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is not finite")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not allowed in a header")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def load_json(raw: str | bytes, what: str) -> Any:
    """Received JSON with bounded integers, finite floats and bounded nesting, else ProtocolError."""
    try:
        value = json.loads(
            raw,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
        _depth(value)
    except (ValueError, RecursionError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"{what} is not allowed JSON: {str(e)[:200]}") from None
    return value


def unpack(
    payload: bytes, max_bytes: int = 1 << 34
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse a payload made by :func:`pack`; malformed or foreign bytes raise ProtocolError."""
    from safetensors.torch import load

    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError(f"payload is a {type(payload).__name__}, not bytes")
    if len(payload) > max_bytes:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    if len(payload) < 8:
        raise ProtocolError(f"payload of {len(payload)} bytes is too short to be safetensors")
    header_len = int.from_bytes(payload[:8], "little")
    if header_len > min(MAX_HEADER_BYTES, len(payload) - 8):
        raise ProtocolError(
            f"payload header length {header_len} is larger than the payload or the limit of "
            f"{MAX_HEADER_BYTES} bytes"
        )
    outer = load_json(bytes(payload[8 : 8 + header_len]), "payload's safetensors header")
    meta = outer.get("__metadata__", {}) if isinstance(outer, dict) else None
    raw = meta.get(HEADER_KEY) if isinstance(meta, dict) else None
    if not isinstance(raw, str):
        raise ProtocolError("payload has no fedfm header")
    header = load_json(raw, "payload's fedfm header")
    if not isinstance(header, dict) or header.get("wire") != WIRE_VERSION:
        got = header.get("wire") if isinstance(header, dict) else None
        raise ProtocolError(f"payload wire version {str(got)[:40]!r} is not {WIRE_VERSION!r}")
    try:
        tensors = load(bytes(payload))
    except Exception as e:  # safetensors raises its own error types; never trust the bytes
        raise ProtocolError(f"payload is not valid safetensors: {str(e)[:200]}") from None
    return tensors, header


def check_layout(tensors: dict[str, torch.Tensor], layout: State) -> None:
    """Raise ProtocolError unless ``tensors`` have exactly the layout's names, shapes and dtypes."""
    missing = [n for n in layout if n not in tensors]
    extra = [n for n in tensors if n not in layout]
    if missing or extra:
        raise ProtocolError(
            f"payload tensors do not match the model and codecs: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    for name, spec in layout.items():
        t = tensors[name]
        if t.shape != spec.shape:
            raise ProtocolError(
                f"payload tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(spec.shape)}"
            )
        if t.dtype != spec.dtype:
            raise ProtocolError(
                f"payload tensor {name!r} has dtype {t.dtype}, expected {spec.dtype}"
            )


def validate_state(
    tensors: dict[str, torch.Tensor], template: State, max_norm: float | None = None
) -> State:
    """Check a decoded state against the expected names, shapes and dtypes, and for finite values.

    Returns the tensors in the template's order; raises ProtocolError naming the first problem.
    """
    check_layout(tensors, template)
    out: State = State()
    for name in template:
        if not torch.isfinite(tensors[name]).all():
            raise ProtocolError(f"update tensor {name!r} has NaN or infinite values")
        out[name] = tensors[name]
    if max_norm is not None:
        norm = torch.sqrt(sum((t.float() ** 2).sum() for t in out.values())).item()
        if norm > max_norm:
            raise ProtocolError(f"update norm {norm:.4g} exceeds the limit {max_norm:.4g}")
    return out


def pack_groups(groups: dict[str, dict[str, torch.Tensor]]) -> bytes:
    """Named groups of tensors as one wire payload (keys ``group::name``)."""
    flat = {
        f"{group}::{name}": t.detach()
        for group, tensors in groups.items()
        for name, t in tensors.items()
    }
    return pack(flat, {"kind": "sync", "groups": sorted(groups)})


def unpack_groups(blob: bytes) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of :func:`pack_groups`; a malformed blob is a :class:`ProtocolError`."""
    flat, header = unpack(blob)
    names = header.get("groups")
    if (
        header.get("kind") != "sync"
        or not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
    ):
        raise ProtocolError("malformed sync payload: its header is not a sync header")
    groups: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
    for key, t in flat.items():
        group, sep, name = key.partition("::")
        if not sep or group not in groups:
            raise ProtocolError(f"malformed sync payload: key {key!r} names no listed group")
        groups[group][name] = t
    return groups
