"""The wire format and codec pipeline: exact round trips, bounded loss, tampering refused."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.wire import pack, unpack
from fedfm.errors import ConfigError, ProtocolError

torch.manual_seed(0)
REF = OrderedDict(a=torch.randn(8, 4), b=torch.randn(16))
NEW = OrderedDict(a=REF["a"] + 0.01 * torch.randn(8, 4), b=REF["b"] + 0.01 * torch.randn(16))
HEADER = {"client": "c1", "num_examples": 3}


def _roundtrip(items, state=NEW, reference=REF):
    pipe = Pipeline(items)
    payload = pipe.encode(state, CodecContext(round=2, reference=reference), HEADER)
    out, header = pipe.decode(payload, CodecContext(round=2, reference=reference), reference)
    return payload, out, header


@pytest.mark.parametrize("items", [(), ("delta",)], ids=["none", "delta"])
def test_lossless_pipelines_are_exact(items):
    payload, out, header = _roundtrip(items)
    assert header["client"] == "c1" and header["codecs"] == list(items)
    for name in NEW:
        # delta adds the reference back in float32: exact up to one rounding
        assert torch.allclose(out[name], NEW[name], atol=1e-6, rtol=0)
    if not items:
        assert all(torch.equal(out[n], NEW[n]) for n in NEW)


@pytest.mark.parametrize(("codec", "bound"), [("fp16", 1e-3), ("bf16", 1e-2)])
def test_casts_halve_the_bytes_with_bounded_error(codec, bound):
    big = OrderedDict(w=torch.randn(128, 64))
    plain, _, _ = _roundtrip((), big, big)
    payload, out, _ = _roundtrip((codec,), big, big)
    assert len(payload) < 0.52 * len(plain)  # tensor bytes halve; the header stays
    assert out["w"].dtype == torch.float32
    assert (out["w"] - big["w"]).abs().max() <= bound * big["w"].abs().max()


def test_reported_bytes_are_the_payload():
    payload = Pipeline(()).encode(NEW, CodecContext(round=1), HEADER)
    tensor_bytes = sum(t.numel() * 4 for t in NEW.values())
    assert tensor_bytes < len(payload) < tensor_bytes + 1024


def test_tampered_or_foreign_payloads_are_refused():
    pipe = Pipeline(())
    payload = pipe.encode(NEW, CodecContext(round=2), HEADER)
    ctx = CodecContext(round=2)
    with pytest.raises(ProtocolError, match="not valid safetensors"):
        pipe.decode(payload[:-7], ctx, REF)  # truncated
    with pytest.raises(ProtocolError, match="for round 2, expected round 3"):
        pipe.decode(payload, CodecContext(round=3), REF)  # replayed into another round
    with pytest.raises(ProtocolError, match="coded with"):
        Pipeline(("fp16",)).decode(payload, ctx, REF)
    with pytest.raises(ProtocolError, match="has shape"):
        pipe.decode(
            Pipeline(()).encode(OrderedDict(a=torch.zeros(2), b=REF["b"]), ctx, HEADER), ctx, REF
        )
    with pytest.raises(ProtocolError, match="missing"):
        pipe.decode(Pipeline(()).encode(OrderedDict(a=REF["a"]), ctx, HEADER), ctx, REF)
    nan = OrderedDict(a=REF["a"].clone(), b=REF["b"].clone())
    nan["b"][3] = float("nan")
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        pipe.decode(Pipeline(()).encode(nan, ctx, HEADER), ctx, REF)
    with pytest.raises(ProtocolError, match="has dtype"):
        pipe.decode(
            Pipeline(()).encode(OrderedDict(a=REF["a"].double(), b=REF["b"]), ctx, HEADER), ctx, REF
        )


def test_payload_without_fedfm_header_is_refused():
    from safetensors.torch import save

    with pytest.raises(ProtocolError, match="no fedfm header"):
        unpack(save({"a": torch.zeros(1)}))
    with pytest.raises(ProtocolError, match="too short"):
        unpack(b"\x01")
    tensors, header = unpack(pack({"a": torch.ones(2)}, {"x": 1}))
    assert header["x"] == 1 and torch.equal(tensors["a"], torch.ones(2))


def test_bad_codec_names_are_config_errors():
    with pytest.raises(ConfigError, match="'topk:0.1' is not a known codec"):
        Pipeline(("topk:0.1",), "codec.up")
    with pytest.raises(ConfigError, match="takes no argument"):
        Pipeline(("fp16:3",), "codec.up")
