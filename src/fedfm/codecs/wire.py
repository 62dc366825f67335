"""The wire format: tensors as safetensors bytes with a small string header, and validation.

Nothing on the wire is ever unpickled: safetensors holds raw tensor bytes plus a JSON header.
"""

from __future__ import annotations

import json
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


def unpack(
    payload: bytes, max_bytes: int = 1 << 34
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Parse a payload made by :func:`pack`; malformed or foreign bytes raise ProtocolError."""
    from safetensors.torch import load

    if len(payload) > max_bytes:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    if len(payload) < 8:
        raise ProtocolError(f"payload of {len(payload)} bytes is too short to be safetensors")
    try:
        tensors = load(payload)
        header_len = int.from_bytes(payload[:8], "little")
        meta = json.loads(payload[8 : 8 + header_len]).get("__metadata__", {})
    except Exception as e:  # safetensors raises its own error types; never trust the bytes
        raise ProtocolError(f"payload is not valid safetensors: {e}") from None
    raw = meta.get(HEADER_KEY) if isinstance(meta, dict) else None
    if raw is None:
        raise ProtocolError("payload has no fedfm header")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"payload header is not JSON: {e}") from None
    if not isinstance(header, dict) or header.get("wire") != WIRE_VERSION:
        raise ProtocolError(
            f"payload wire version {header.get('wire') if isinstance(header, dict) else None!r} is not {WIRE_VERSION!r}"
        )
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
    if header.get("kind") != "sync" or not isinstance(names, list):
        raise ProtocolError("malformed sync payload: its header is not a sync header")
    groups: dict[str, dict[str, torch.Tensor]] = {str(n): {} for n in names}
    for key, t in flat.items():
        group, sep, name = key.partition("::")
        if not sep or group not in groups:
            raise ProtocolError(f"malformed sync payload: key {key!r} names no listed group")
        groups[group][name] = t
    return groups
