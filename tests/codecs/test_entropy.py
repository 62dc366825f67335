"""The zlib codec: lossless, smaller than what it compresses, names off the wire, bombs refused."""

from __future__ import annotations

import zlib
from collections import OrderedDict

import pytest
import torch

from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.wire import pack, unpack
from fedfm.errors import ConfigError, ProtocolError

torch.manual_seed(0)
# LoRA-shaped tensors with long names, an int64 counter and a bf16 tensor: every dtype path
REF = OrderedDict(
    (f"base_model.model.encoder.layer.{i}.attention.self.query.lora_{ab}.default.weight", t)
    for i in range(4)
    for ab, t in (("A", torch.randn(8, 384)), ("B", torch.zeros(384, 8)))
)
REF["classifier.weight"] = torch.randn(4, 384).to(torch.bfloat16)
REF["steps"] = torch.tensor([7], dtype=torch.int64)
NEW = OrderedDict(
    (n, t + (0.01 * torch.randn(t.shape)).to(t.dtype) if t.is_floating_point() else t + 1)
    for n, t in REF.items()
)
HEADER = {"client": "c1", "num_examples": 3}


def _code(items):
    pipe = Pipeline(items)
    payload = pipe.encode(NEW, CodecContext(round=2, reference=REF), HEADER)
    out, _ = pipe.decode(payload, CodecContext(round=2, reference=REF), REF)
    return payload, out


@pytest.mark.parametrize("chain", [[], ["delta", "int4:block=64"], ["delta", "int8"]])
def test_zlib_is_lossless_and_smaller_than_the_chain_before_it(chain):
    plain, expected = _code(chain)
    packed, out = _code([*chain, "zlib"])
    assert all(torch.equal(out[n], expected[n]) for n in REF)  # bit for bit the same decode
    assert len(packed) < len(plain)
    tensors, _ = unpack(packed)
    assert list(tensors) == ["#zlib"]  # no tensor names on the wire


def test_int4_updates_lose_their_name_header_and_some_entropy():
    plain, _ = _code(["delta", "int4:block=64"])
    packed, _ = _code(["delta", "int4:block=64", "zlib"])
    data = sum(t.numel() * t.element_size() for t in unpack(plain)[0].values())
    assert len(plain) - data > 2000  # names, dtypes and offsets in the safetensors header
    assert len(packed) < 0.95 * data  # below even the bare int4 bytes


def _forge(payload: bytes, blob: bytes, recorded: int | None = None) -> bytes:
    """The same payload with another compressed blob (and, optionally, recorded size)."""
    _, header = unpack(payload)
    header = {k: v for k, v in header.items() if k != "wire"}
    header["codec_headers"] = [{"bytes": len(blob) if recorded is None else recorded}]
    return pack({"#zlib": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}, header)


def test_bombs_truncation_trailing_bytes_and_lying_sizes_are_refused():
    pipe = Pipeline(["zlib"])
    payload = pipe.encode(NEW, CodecContext(round=2), HEADER)
    blob = unpack(payload)[0]["#zlib"].numpy().tobytes()
    raw = zlib.decompress(blob)
    ctx = CodecContext(round=2)
    cases = [
        (zlib.compress(bytes(50 * len(raw))), "inflates to"),  # a bomb: 50× the layout
        (blob[:-9], "inflates to|does not inflate"),  # truncated stream
        (blob + b"extra", "inflates to"),  # bytes after the stream
        (zlib.compress(raw[:-4]), "inflates to"),  # too short
        (b"not a zlib stream at all", "does not inflate"),
    ]
    for forged, message in cases:
        with pytest.raises(ProtocolError, match=message):
            pipe.decode(_forge(payload, forged), ctx, REF)
    with pytest.raises(ProtocolError, match="expected \\{'bytes': n\\}"):
        pipe.decode(_forge(payload, blob, recorded=10**9), ctx, REF)
    with pytest.raises(ProtocolError, match="shape"):  # the recorded size disagrees with the blob
        pipe.decode(_forge(payload, blob, recorded=len(blob) - 1), ctx, REF)


@pytest.mark.parametrize(
    "items, message",
    [
        (["zlib", "int8"], "must come last"),
        (["zlib:0"], "level must be 1 … 9"),
        (["zlib:fast"], "level must be 1 … 9"),
    ],
)
def test_bad_zlib_configs_are_refused(items, message):
    with pytest.raises(ConfigError, match=message):
        Pipeline(items, "codec.up")
