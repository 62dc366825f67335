"""The protocol's messages: their types, the checks every received message passes, the stage
guard of both parties, and the wire encoding (fedfm's safetensors format, no pickle).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedfm.codecs.wire import pack, unpack
from fedfm.errors import ProtocolError
from fedfm.privacy.secagg.crypto import CIPHERTEXT_BYTES, KEY_BYTES, SIGNATURE_BYTES
from fedfm.privacy.shamir import SHARE_BYTES

# Message types, one per arrow in the round table of the package docstring.
KEYS, ROSTER, SHARES, FORWARDED = (
    "secagg/keys",
    "secagg/roster",
    "secagg/shares",
    "secagg/forwarded",
)
MASKED, SURVIVORS, CONSISTENCY = "secagg/masked", "secagg/survivors", "secagg/consistency"
UNMASK_REQUEST, UNMASK = "secagg/unmask-request", "secagg/unmask"
ABORT = "secagg/abort"  # a client leaves the protocol instance, with a "reason" (any round)


RING_DTYPES = ("|u1", "<u2", "<u4", "<u8")  # the array dtypes a message may carry


def message_field(message: Any, name: str, kind: type) -> Any:
    """``message[name]`` if it is a ``kind`` (a bool is no int), else ProtocolError."""
    value = message.get(name) if isinstance(message, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(
            f"secure aggregation: message field {name!r} is missing or not {kind.__name__}"
        )
    return value


def message_ids(message: Any, name: str) -> list[str]:
    """``message[name]`` as a list of distinct non-empty client ids, else ProtocolError."""
    ids = message_field(message, name, list)
    if not all(isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
        raise ProtocolError(f"secure aggregation: {name!r} must list distinct non-empty client ids")
    return ids


def message_array(
    message: Any, name: str, dtype: np.dtype | type, shape: tuple[int, ...]
) -> np.ndarray:
    """``message[name]`` as an array of exactly ``dtype`` and ``shape``, else ProtocolError."""
    value = message_field(message, name, np.ndarray)
    if value.dtype != np.dtype(dtype) or value.shape != shape:
        raise ProtocolError(
            f"secure aggregation: {name!r} has dtype {value.dtype} and shape {value.shape}, "
            f"expected {np.dtype(dtype)} and {shape}"
        )
    return value


def expect_message(message: Any, kind: str, session: str) -> None:
    """Refuse a message of another type or of another protocol instance (session)."""
    if message_field(message, "type", str) != kind:
        raise ProtocolError(
            f"secure aggregation: expected a {kind!r} message, got {message['type']!r}"
        )
    if message_field(message, "session", str) != session:
        raise ProtocolError(
            f"secure aggregation: message of session {message['session']!r}, expected {session!r}"
        )


class Stages:
    """A tiny state machine: each call is allowed in one stage only, so no step runs twice."""

    _stage: str
    _who: str

    def _require(self, stage: str, action: str) -> None:
        if self._stage != stage:
            raise ProtocolError(
                f"secure aggregation: {self._who} cannot {action} now (stage {self._stage!r}, "
                f"expected {stage!r})"
            )


def encode_message(message: dict[str, Any]) -> bytes:
    """A message as fedfm wire bytes: arrays and bytes as uint8 tensors, the rest in the header."""
    tensors, binary, fields = {}, {}, {}
    for name, value in message.items():
        if isinstance(value, bytes):
            raw, binary[name] = np.frombuffer(value, np.uint8), "bytes"
        elif isinstance(value, np.ndarray):
            if value.dtype.str not in RING_DTYPES:
                raise ProtocolError(
                    f"secure aggregation: cannot send an array of dtype {value.dtype}"
                )
            raw, binary[name] = (
                np.ascontiguousarray(value).view(np.uint8).ravel(),
                [value.dtype.str, list(value.shape)],
            )
        else:
            fields[name] = value
            continue
        tensors[name] = torch.from_numpy(raw.copy())
    return pack(tensors, {"secagg": {"fields": fields, "binary": binary}})


def decode_message(payload: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_message`; malformed bytes raise ProtocolError."""
    tensors, header = unpack(payload)
    spec = header.get("secagg")
    if not isinstance(spec, dict) or not isinstance(spec.get("fields"), dict):
        raise ProtocolError("payload is not a secure-aggregation message")
    binary = spec.get("binary")
    if not isinstance(binary, dict) or set(binary) != set(tensors):
        raise ProtocolError(
            "secure-aggregation message: the binary fields do not match its tensors"
        )
    message = dict(spec["fields"])
    for name, kind in binary.items():
        if tensors[name].dtype != torch.uint8 or tensors[name].dim() != 1:
            raise ProtocolError(
                f"secure-aggregation message: field {name!r} is not a flat uint8 tensor"
            )
        raw = tensors[name].numpy()
        if kind == "bytes":
            message[name] = raw.tobytes()
            continue
        try:
            dtype, shape = np.dtype(kind[0]), tuple(int(s) for s in kind[1])
            if dtype.str not in RING_DTYPES:
                raise ValueError(f"dtype {dtype}")
            message[name] = np.frombuffer(raw.tobytes(), dtype).reshape(shape)
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as e:
            raise ProtocolError(
                f"secure-aggregation message: field {name!r} is malformed: {e}"
            ) from None
    return message


def max_message_bytes(stage: str, dimension: int, clients: int, modulus_bits: int) -> int:
    """The largest message a client sends at ``stage`` ("keys", "shares", "masked",
    "consistency", "unmask")
    in a round of at most ``clients`` over vectors of ``dimension``: what a server accepts."""
    body = {
        "keys": 3 * KEY_BYTES + SIGNATURE_BYTES,
        "shares": clients * CIPHERTEXT_BYTES,
        "masked": dimension * modulus_bits // 8,
        "consistency": SIGNATURE_BYTES,
        "unmask": clients * SHARE_BYTES,
    }[stage]
    return body + (16 << 10) + 160 * clients  # the header: fields, ids (≤ 128 chars), entries
