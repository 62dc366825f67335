"""int8 / int4: bounded error, the bytes on the wire, blocks, stochastic rounding, bad options."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedfm.codecs import CodecContext, Pipeline
from fedfm.codecs.wire import unpack
from fedfm.errors import ConfigError


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _send(items, state, round=1, seed=0):
    pipe = Pipeline(items)
    payload = pipe.encode(state, CodecContext(round=round, seed=seed), {})
    out, _ = pipe.decode(payload, CodecContext(round=round, seed=seed), state)
    return payload, out


def _tensor_bytes(payload: bytes) -> int:
    tensors, _ = unpack(payload)
    return sum(t.numel() * t.element_size() for t in tensors.values())


QMAX = {"int8": 127, "int4": 7}


@pytest.mark.parametrize(
    "item", ["int8", "int4", "int8:block=64", "int4:block=32", "int4:block=33"]
)
def test_rounding_to_nearest_errs_by_at_most_half_a_step(item):
    x = _randn(61, 37)  # 2257 values: the last block is partial, int4 packs an odd count
    payload, out = _send((item,), OrderedDict(w=x))
    scale = unpack(payload)[0]["w#scale"]
    block = int(item.split("block=")[1]) if "block=" in item else x.numel()
    qmax = QMAX[item.split(":")[0]]
    flat = x.flatten()
    # the scale is max|x| / qmax of each block, and every value lands within half a step
    expected = torch.stack([b.abs().max() / qmax for b in flat.split(block)])
    assert torch.allclose(scale, expected, rtol=1e-6, atol=0)
    step = scale.repeat_interleave(block)[: flat.numel()]
    assert ((out["w"].flatten() - flat).abs() <= step / 2 * (1 + 1e-5)).all()
    assert out["w"].shape == x.shape and out["w"].dtype == x.dtype


@pytest.mark.parametrize(
    ("item", "bits", "blocks"),
    [("int8", 8, 1), ("int4", 4, 1), ("int8:block=64", 8, 4096), ("int4:block=32", 4, 8192)],
)
def test_payload_carries_bits_per_value_plus_scales(item, bits, blocks):
    big = OrderedDict(w=_randn(256, 1024))  # 1 MiB as float32
    plain, _ = _send((), big)
    payload, _ = _send((item,), big)
    n = big["w"].numel()
    assert _tensor_bytes(payload) == n * bits // 8 + 4 * blocks  # int4: really two per byte
    assert _tensor_bytes(payload) <= len(payload) < _tensor_bytes(payload) + 512  # + header
    ratio = len(payload) / len(plain)
    assert ratio == pytest.approx(bits / 32 + blocks / n, abs=0.002)


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_blocks_confine_an_outlier_to_its_block(bits):
    x = 0.01 * _randn(4096)
    x[::1000] = 10.0  # a few outliers set the per-tensor scale
    _, per_tensor = _send((bits,), OrderedDict(w=x))
    _, per_block = _send((f"{bits}:block=64",), OrderedDict(w=x))
    e_tensor, e_block = (per_tensor["w"] - x).abs(), (per_block["w"] - x).abs()
    assert e_block.max() <= e_tensor.max()
    assert e_block.mean() < 0.25 * e_tensor.mean()


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_stochastic_rounding_is_unbiased_and_reproducible(bits):
    x = OrderedDict(w=_randn(1000))
    step = x["w"].abs().max().item() / QMAX[bits]
    rounds = 200
    mean = sum(_send((f"{bits}:stochastic",), x, round=r)[1]["w"] for r in range(rounds)) / rounds
    # per value: std of the mean ≤ step / (2·√200) ≈ 0.035·step; rounding to nearest is off
    # by up to half a step, the same every time
    assert (mean - x["w"]).abs().max() < 0.2 * step
    assert (_send((bits,), x)[1]["w"] - x["w"]).abs().max() > 0.4 * step
    # the same seed and round draw the same noise; another round or seed draws other noise
    same = _send((f"{bits}:stochastic",), x, round=3, seed=7)[0]
    assert same == _send((f"{bits}:stochastic",), x, round=3, seed=7)[0]
    assert same != _send((f"{bits}:stochastic",), x, round=4, seed=7)[0]
    assert same != _send((f"{bits}:stochastic",), x, round=3, seed=8)[0]


@pytest.mark.parametrize("item", ["int8", "int4:block=5,stochastic"])
def test_other_dtypes_and_shapes_come_back_as_the_template(item):
    state = OrderedDict(
        steps=torch.arange(7),  # not floating: passes through exactly
        half=_randn(3, 5).to(torch.bfloat16),
        double=_randn(2, 3, 4).double(),
        empty=torch.zeros(0, 4),
    )
    _, out = _send((item,), state)
    assert torch.equal(out["steps"], state["steps"])
    for name, t in state.items():
        assert out[name].shape == t.shape and out[name].dtype == t.dtype
        if t.numel():
            bound = t.float().abs().max() / (127 if item.startswith("int8") else 7)
            assert (out[name].float() - t.float()).abs().max() <= bound * 1.01


def test_int4_grid_values_round_trip_exactly():
    q = torch.tensor([-7, -6, 0, 1, 7, 3, -1], dtype=torch.float32)  # odd count: padded nibble
    payload, out = _send(("int4",), OrderedDict(w=q * 0.5))
    packed = unpack(payload)[0]["w"]
    assert packed.dtype == torch.uint8 and packed.numel() == 4
    assert torch.equal(out["w"], q * 0.5)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("int8:block=0", "block must be a positive integer"),
        ("int8:block=abc", "block must be a positive integer"),
        ("int4:block=-3", "block must be a positive integer"),
        ("int8:bogus", "unknown option 'bogus'; allowed: block=N (N ≥ 1), stochastic"),
        ("int4:stochastic=1", "unknown option 'stochastic=1'"),
        ("int8:block=64,block=32", "option 'block' is given twice"),
        ("int8:", "unknown option ''"),
    ],
)
def test_bad_options_are_config_errors(item, message):
    with pytest.raises(ConfigError) as info:
        Pipeline((item,), "codec.up")
    assert str(info.value).startswith(f"codec.up item {item!r}: ")
    assert message in str(info.value)


@pytest.mark.parametrize("scale", ["fp16", "bf16"])
def test_16_bit_scales_halve_the_side_data_and_keep_the_error_bound(scale):
    x = _randn(61, 37, seed=3)
    wide, wide_out = _send(["int4:block=32"], OrderedDict(w=x))
    narrow, out = _send([f"int4:block=32,scale={scale}"], OrderedDict(w=x))
    tensors, _ = unpack(narrow)
    blocks = -(-x.numel() // 32)
    assert tensors["w#scale"].dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[scale]
    assert _tensor_bytes(wide) - _tensor_bytes(narrow) == 2 * blocks
    # quantised against the rounded scale: still within half a step of it (plus the clamp)
    step = tensors["w#scale"].float().repeat_interleave(32)[: x.numel()]
    relative = 2**-11 if scale == "fp16" else 2**-8
    bound = step / 2 + 7 * step * relative
    assert ((out["w"].flatten() - x.flatten()).abs() <= bound + 1e-7).all()
    assert (out["w"] - wide_out["w"]).abs().max() < 0.1 * x.abs().max()


def test_a_scale_that_overflows_float16_is_refused():
    from fedfm.errors import ProtocolError

    x = OrderedDict(w=torch.full((64,), 1e6))
    with pytest.raises(ProtocolError, match="overflows torch.float16; use scale=bf16"):
        _send(["int4:scale=fp16"], x)
    _, out = _send(["int4:scale=bf16"], x)
    assert torch.allclose(out["w"], x["w"], rtol=2**-7)
    with pytest.raises(ConfigError, match="scale must be one of fp32, fp16, bf16"):
        Pipeline(["int8:scale=int8"], "codec.up")
