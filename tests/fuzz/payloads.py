"""Hypothesis strategies for hostile payloads, and :func:`hostile`, the property of every target.

Four ways to build a case from a valid payload of the target: arbitrary bytes; the valid bytes
with a few mutations (flips, truncation, insertion, a forged header length); the valid tensors
under a header with some fields replaced by arbitrary JSON (5000-digit integers, NaN, deep
nesting, wrong types); the valid header over arbitrary tensors (names, dtypes, shapes, values
such as inf and 3e38).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from safetensors.torch import save

from fedfm.codecs.wire import HEADER_KEY, unpack
from fedfm.errors import ProtocolError

CASES: Counter[str] = Counter()  # cases run, by target
REFUSED: Counter[str] = Counter()  # of which refused with ProtocolError


def hostile(target: str, decode: Callable[..., Any], *args: Any) -> Any:
    """The property: ``decode(*args)`` returns, or raises ProtocolError; anything else fails."""
    CASES[target] += 1
    try:
        return decode(*args)
    except ProtocolError:
        REFUSED[target] += 1
        return None


class Raw(str):
    """JSON text placed verbatim into a header (what json.dumps would refuse to write)."""


RAW = st.sampled_from(
    [
        Raw("1" * 5000),
        Raw("-" + "9" * 400),
        Raw("1e999"),
        Raw("-1e999"),
        Raw("NaN"),
        Raw("Infinity"),
        Raw("[" * 3000 + "]" * 3000),
        Raw('{"a":' * 50 + "1" + "}" * 50),
        Raw(str(10**400)[:300]),
        Raw("3e38"),
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | RAW
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def to_json(value: Any) -> str:
    """json.dumps that writes :class:`Raw` leaves verbatim and huge ints as digits."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**4000 else "1" * 4400
    return json.dumps(value, allow_nan=True)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int64]
SPECIAL = [0.0, -0.0, 1.0, 3e38, -3e38, float("inf"), float("-inf"), float("nan"), 1e-45]


@st.composite
def tensor(draw, shape: tuple[int, ...] | None = None, dtype: torch.dtype | None = None):
    dtype = dtype or draw(st.sampled_from(DTYPES))
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    n = 1
    for s in shape:
        n *= s
    if dtype.is_floating_point:
        values = draw(
            st.lists(st.sampled_from(SPECIAL) | st.floats(-10, 10), min_size=n, max_size=n)
        )
        t = torch.tensor(values, dtype=torch.float64).reshape(shape)
        with torch.no_grad():
            return t.to(dtype)
    info = torch.iinfo(dtype)
    values = draw(st.lists(st.integers(info.min, info.max), min_size=n, max_size=n))
    return torch.tensor(values, dtype=dtype).reshape(shape)


def with_header(tensors: dict[str, torch.Tensor], header_text: str) -> bytes:
    return save({k: t.contiguous() for k, t in tensors.items()}, metadata={HEADER_KEY: header_text})


@st.composite
def mutated_bytes(draw, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "length", "splice"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "length" and len(data) >= 8:
            forged = draw(st.sampled_from([0, 1, 2**63, 2**64 - 1, len(data), len(data) - 8]))
            data[:8] = forged.to_bytes(8, "little")
        elif op == "splice" and len(data) > 16:
            i = draw(st.integers(8, len(data) - 1))
            data[i : i + 8] = draw(st.binary(min_size=8, max_size=8))
    return bytes(data)


@st.composite
def hostile_payload(draw, valid: bytes) -> bytes:
    """One hostile case derived from ``valid`` (a payload the target accepts)."""
    tensors, header = unpack(valid)
    mode = draw(st.sampled_from(["bytes", "mutated", "header", "tensors"]))
    if mode == "bytes":
        return draw(st.binary(max_size=256))
    if mode == "mutated":
        return draw(mutated_bytes(valid))
    if mode == "header":
        fields: dict[str, Any] = dict(header)
        keys = draw(
            st.lists(st.sampled_from(sorted(fields)) | st.text(max_size=6), min_size=1, max_size=3)
        )
        for key in keys:
            fields[key] = draw(JSON)
        if draw(st.booleans()):  # one level deeper: a field inside a nested mapping or list
            for key, value in list(fields.items()):
                if isinstance(value, dict) and value:
                    inner = dict(value)
                    inner[draw(st.sampled_from(sorted(inner)))] = draw(JSON)
                    fields[key] = inner
                    break
                if isinstance(value, list) and value:
                    inner_list = list(value)
                    inner_list[draw(st.integers(0, len(inner_list) - 1))] = draw(JSON)
                    fields[key] = inner_list
                    break
        return with_header(tensors, to_json(fields))
    # the valid header over other tensors: same names with other dtypes/shapes/values, or others
    names = sorted(tensors) or ["w"]
    out = {}
    for name in draw(
        st.lists(st.sampled_from(names) | st.text(min_size=1, max_size=6), max_size=4, unique=True)
    ):
        same = name in tensors and draw(st.booleans())
        out[name] = (
            draw(tensor(tuple(tensors[name].shape), tensors[name].dtype))
            if same
            else draw(tensor())
        )
    for name in names:  # keep the others as they were, most of the time
        if name in tensors and name not in out and draw(st.booleans()):
            out[name] = tensors[name]
    return with_header(out, to_json(header))
