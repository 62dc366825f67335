"""Secure aggregation (Bonawitz et al. 2017): the pure pieces, then the whole protocol."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from fedfm.errors import ProtocolError
from fedfm.privacy import shamir
from fedfm.privacy.secagg import (
    SecAggClient,
    SecAggServer,
    decode_fixed_point,
    decode_message,
    encode_fixed_point,
    encode_message,
    expand_mask,
    max_abs_value,
    pairwise_mask_sum,
    pairwise_seed,
    secure_sum,
)
from fedfm.privacy.secagg import WireMessage as Wire

IDS = [f"client-{i}" for i in range(6)]


def vectors(n: int = 6, dimension: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.normal(0, 1, dimension).astype(np.float32) for c in IDS[:n]}


def keypair() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


# --------------------------------------------------------------------------------------------
# Shamir


def test_field_is_the_prime_above_2_256():
    p = shamir.PRIME
    assert 2**256 < p < 2**257 and p.bit_length() <= shamir.SHARE_BYTES * 8
    d, s = p - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41):  # Miller–Rabin
        x = pow(a, d, p)
        assert x in (1, p - 1) or any(pow(x, 2**r, p) == p - 1 for r in range(1, s))


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3), (6, 3), (6, 6)])
def test_shamir_any_t_shares_reconstruct_and_t_minus_1_do_not(n, t):
    secret = bytes(range(200, 232))  # high bit set: the full 32-byte range is needed
    xs = list(range(1, n + 1))
    shares = shamir.split_bytes(secret, t, xs)
    assert all(len(s) == shamir.SHARE_BYTES for s in shares)
    points = list(zip(xs, shares, strict=True))
    for subset in itertools.combinations(points, t):
        assert shamir.reconstruct_bytes(list(subset), t) == secret
    value = int.from_bytes(secret, "big")
    ints = [(x, int.from_bytes(s, "big")) for x, s in points]
    for subset in itertools.combinations(ints, t - 1):
        assert shamir.interpolate(list(subset), 0) != value  # t − 1 shares fit another secret
    with pytest.raises(ProtocolError, match=f"needs {t} shares"):
        shamir.reconstruct_bytes(points[: t - 1], t)


def test_shamir_refuses_an_inconsistent_extra_share():
    xs = [1, 2, 3, 4]
    shares = shamir.split(12345, 2, xs)
    points = list(zip(xs, shares, strict=True))
    assert shamir.reconstruct(points, 2) == 12345
    points[3] = (4, shares[3] + 1)
    with pytest.raises(ProtocolError, match="party 4 is inconsistent"):
        shamir.reconstruct(points, 2)


# --------------------------------------------------------------------------------------------
# PRG and pairwise masks


def test_prg_is_aes256_ctr_and_deterministic():
    # FIPS-197 C.3: AES-256 of the zero block under the zero key is dc95c078a2408989...
    assert expand_mask(bytes(32), 2, 32).tolist() == [0x78C095DC, 0x898940A2]
    assert expand_mask(bytes(32), 1, 64).tolist() == [0x898940A278C095DC]
    seed = bytes(range(32))
    assert np.array_equal(expand_mask(seed, 1000, 32), expand_mask(seed, 1000, 32))
    assert not np.array_equal(expand_mask(seed, 1000, 32), expand_mask(bytes(32), 1000, 32))


@pytest.mark.parametrize("modulus_bits", [32, 64])
def test_pairwise_masks_agree_at_both_ends_and_cancel_in_the_sum(modulus_bits):
    keys = {c: keypair() for c in IDS[:4]}
    u, v = IDS[0], IDS[1]
    seed_uv = pairwise_seed(keys[u][0], keys[v][1], u, v, "s")  # at u: u's private, v's public
    seed_vu = pairwise_seed(keys[v][0], keys[u][1], v, u, "s")  # at v: v's private, u's public
    assert seed_uv == seed_vu
    assert np.array_equal(
        expand_mask(seed_uv, 500, modulus_bits), expand_mask(seed_vu, 500, modulus_bits)
    )
    assert seed_uv != pairwise_seed(keys[u][0], keys[v][1], u, v, "another session")
    total = np.zeros(500, dtype=f"<u{modulus_bits // 8}")
    for c, (private, _) in keys.items():
        peers = {p: pub for p, (_, pub) in keys.items() if p != c}
        mask = pairwise_mask_sum(c, private, peers, 500, modulus_bits, "s")
        assert np.count_nonzero(mask) > 490  # each party's own mask hides its input
        total += mask
    assert not total.any()  # Σ over all parties ≡ 0 mod 2^k


# --------------------------------------------------------------------------------------------
# Fixed point


@pytest.mark.parametrize(("fraction_bits", "modulus_bits"), [(16, 32), (8, 32), (30, 64)])
def test_fixed_point_round_trip_and_negatives(fraction_bits, modulus_bits):
    x = np.random.default_rng(1).normal(0, 3, 10_000).astype(np.float32)
    ring = encode_fixed_point(x, fraction_bits, modulus_bits)
    assert ring.dtype == np.dtype(f"<u{modulus_bits // 8}")
    back = decode_fixed_point(ring, fraction_bits, modulus_bits)
    assert np.abs(back - x).max() <= 2.0 ** -(fraction_bits + 1)
    negative = encode_fixed_point(np.array([-1.0]), fraction_bits, modulus_bits)
    assert int(negative[0]) == 2**modulus_bits - 2**fraction_bits  # two's complement


def test_fixed_point_overflow_raises_before_masking():
    limit = max_abs_value(16, 32, 5)
    assert limit == pytest.approx((2**31 - 1) / 2**16 / 5, abs=2**-16)
    encode_fixed_point(np.array([limit, -limit]), 16, 32, clients=5)  # the edge still fits
    with pytest.raises(
        ProtocolError, match=r"exceeds the representable ±6553.6.*wider modulus_bits"
    ):
        encode_fixed_point(np.array([0.0, limit + 0.01]), 16, 32, clients=5)
    with pytest.raises(ProtocolError, match="NaN"):
        encode_fixed_point(np.array([np.nan]), 16, 32)
    big = {"a": np.full(10, 12000.0, np.float32), "b": np.zeros(10, np.float32)}
    big["c"] = big["b"]
    result = secure_sum(big, threshold=2)  # alone it fits; 3 × 12000 > 2^15 could wrap
    assert result.survivors == ["b", "c"]  # the client refused to mask it and left the round
    [(cid, error)] = result.failures
    assert cid == "a" and "exceeds the representable" in str(error)


# --------------------------------------------------------------------------------------------
# The whole protocol


@pytest.mark.parametrize(
    ("dropped", "modulus_bits"),
    [(set(), 32), ({"client-2"}, 32), ({"client-0", "client-5"}, 32), ({"client-3"}, 64)],
)
def test_secure_sum_equals_the_plain_sum_despite_dropouts(dropped, modulus_bits):
    data = vectors()
    result = secure_sum(data, 3, 16, modulus_bits, drop_after_sharing=dropped, seed=7)
    assert result.survivors == [c for c in IDS if c not in dropped]
    plain = sum(data[c].astype(np.float64) for c in result.survivors)
    assert np.abs(result.sum - plain).max() <= len(result.survivors) * 2.0**-16


def test_the_sum_is_deterministic_though_keys_are_fresh():
    data = vectors(n=4, dimension=200)
    runs = [secure_sum(data, 3, drop_after_sharing={"client-1"}, seed=s).sum for s in (0, 0, 5)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])  # any delivery order, any keys
    with pytest.raises(ValueError, match="threshold = 1"):
        secure_sum(data, 1)  # with t = 1 every share is the secret itself


def test_secure_sum_survives_a_dropout_after_masking():
    data = vectors()
    result = secure_sum(
        data, 3, drop_after_sharing={"client-1"}, drop_after_masking={"client-4"}, seed=1
    )
    assert "client-4" in result.survivors  # its input counts, it just did not help unmask
    plain = sum(data[c].astype(np.float64) for c in result.survivors)
    assert np.abs(result.sum - plain).max() <= 6 * 2.0**-16


def test_secure_sum_fails_loudly_below_the_threshold():
    data = vectors()
    with pytest.raises(
        ProtocolError, match="only 2 of 6 clients sent their masked input, the threshold is 3"
    ):
        secure_sum(data, 3, drop_after_sharing=set(IDS[:4]))
    with pytest.raises(
        ProtocolError, match="only 2 of 6 clients signed the survivor list, the threshold is 3"
    ):
        secure_sum(data, 3, drop_after_masking=set(IDS[:4]))
    with pytest.raises(
        ProtocolError, match="only 2 of 6 clients answered the unmasking round, the threshold is 3"
    ):
        secure_sum(data, 3, vanish=dict.fromkeys(IDS[:4], "unmask"))


def test_the_server_sees_only_ring_noise():
    data = vectors()
    data["client-1"] = np.zeros(1000, np.float32)  # even an all-zero update looks random
    transcript: list[Wire] = []
    result = secure_sum(data, 3, transcript=transcript)
    masked = {
        m.sender: decode_message(m.payload)["masked"]
        for m in transcript
        if m.round == "masked" and m.recipient == "server"
    }
    assert set(masked) == set(IDS)
    for c, y in masked.items():
        x = encode_fixed_point(data[c], 16, 32)
        assert np.count_nonzero(y == x) < 5
        signed = x.view("<i4").astype(np.float64)
        if signed.std() > 0:
            assert abs(np.corrcoef(signed, y.astype(np.float64))[0, 1]) < 0.2  # sd 0.03
        counts = np.bincount(
            (y >> 28).astype(np.int64), minlength=16
        )  # 16 equal slices of the ring
        assert counts.min() > 20 and counts.max() < 110  # 62.5 ± 7.7 when uniform
    # Without the unmasking round the masked inputs sum to noise, not to the sum.
    naive = decode_fixed_point(sum(masked.values()), 16, 32)
    assert np.abs(naive - result.sum).mean() > 1000


def test_bytes_reported_are_the_bytes_of_the_messages_built():
    transcript: list[Wire] = []
    result = secure_sum(
        vectors(dimension=300), 3, drop_after_sharing={"client-2"}, transcript=transcript
    )
    assert result.bytes_up == sum(len(m.payload) for m in transcript if m.recipient == "server")
    assert result.bytes_down == sum(len(m.payload) for m in transcript if m.sender == "server")
    up = [m.round for m in transcript if m.recipient == "server"]
    assert up.count("keys") == 6 and up.count("shares") == 6 and up.count("masked") == 5
    assert up.count("consistency") == 5 and up.count("unmask") == 5
    down = [m.round for m in transcript if m.sender == "server"]
    assert down.count("keys") == 0 and down.count("shares") == 6 and down.count("masked") == 5
    assert down.count("consistency") == 5 and down.count("unmask") == 5
    masked = [m for m in transcript if m.round == "masked" and m.recipient == "server"]
    assert all(len(m.payload) >= 300 * 4 for m in masked)  # k-bit ring elements on the wire


# --------------------------------------------------------------------------------------------
# Misbehaviour is refused


def run_to_unmask(n: int = 4, t: int = 3, dimension: int = 50):
    """Rounds 0–3 by hand, every client sending; returns (server, clients, request)."""
    server = SecAggServer(dimension, t)
    clients = {c: SecAggClient(c, dimension) for c in IDS[:n]}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    roster = server.roster()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    forwarded = server.forward_shares()
    for name, c in clients.items():
        server.receive_masked(c.masked_input(forwarded[name], np.ones(dimension, np.float32)))
    return server, clients, consistency_round(server, clients)


def consistency_round(server, clients) -> dict:
    """Round 3 by hand: every client signs the survivors; returns the unmask request."""
    announced = server.announce_survivors()
    for c in clients.values():
        server.receive_consistency(c.consistency(announced))
    return server.unmask_request()


def test_a_client_refuses_to_reveal_both_shares_of_one_user():
    server, clients, request = run_to_unmask()
    client = clients["client-0"]
    both = {**request, "dropped": ["client-3"]}  # client-3 named a survivor and dropped
    with pytest.raises(ProtocolError, match="refuses to reveal both .* of 'client-3'"):
        client.unmask(both)
    answer = client.unmask(request)
    assert client.unmask(request)["b_owners"] == answer["b_owners"]  # a retry is fine
    later = {**request, "survivors": IDS[:3], "dropped": ["client-3"]}  # …a change of story is not
    with pytest.raises(ProtocolError, match="refuses to reveal both .* of 'client-3'"):
        client.unmask(later)
    for c in clients.values():
        server.receive_unmask(c.unmask(request))
    assert np.allclose(server.result(), 4.0)


def test_tampered_or_out_of_place_messages_are_refused():
    server = SecAggServer(10, 2)
    a, b = SecAggClient("a", 10), SecAggClient("b", 10)
    keys = a.advertise_keys()
    server.receive_keys(keys)
    with pytest.raises(ProtocolError, match="already received"):
        server.receive_keys(keys)
    server.receive_keys(b.advertise_keys())
    with pytest.raises(ProtocolError, match="cannot advertise keys now"):
        a.advertise_keys()
    roster = server.roster()
    server.receive_shares(a.share_keys(roster))
    server.receive_shares(b.share_keys(roster))
    forwarded = server.forward_shares()
    bad = forwarded["b"]["ciphertexts"].copy()
    bad[0, -1] ^= 1
    with pytest.raises(ProtocolError, match="do not decrypt"):
        b.masked_input({**forwarded["b"], "ciphertexts": bad}, np.zeros(10, np.float32))
    with pytest.raises(ProtocolError, match="session"):
        b.masked_input({**forwarded["b"], "session": "other"}, np.zeros(10, np.float32))
    with pytest.raises(ProtocolError):
        decode_message(b"not a message at all")


def test_a_corrupted_share_is_detected_by_the_server():
    server, clients, request = run_to_unmask(n=4, t=2)
    for name, c in clients.items():
        answer = c.unmask(request)
        if name == "client-3":
            shares = answer["b_shares"].copy()
            shares[0, -1] ^= 1
            answer = {**answer, "b_shares": shares}
        server.receive_unmask(decode_message(encode_message(answer)))
    with pytest.raises(ProtocolError, match="inconsistent"):
        server.result()


def test_ring_inputs_pass_through_for_a_dp_layer():
    """clip → quantise → add integer noise → mask: the server decodes the noisy sum exactly."""
    server, clients, dimension = SecAggServer(20, 2), {c: SecAggClient(c, 20) for c in "xyz"}, 20
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    roster = server.roster()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    forwarded = server.forward_shares()
    rng = np.random.default_rng(0)
    expected = np.zeros(dimension, np.int64)
    for name, c in clients.items():
        quantised = np.rint(rng.normal(0, 1, dimension) * 2**16).astype(np.int64)
        noisy = quantised + rng.integers(-50, 50, dimension)  # stands in for discrete noise
        expected += noisy
        server.receive_masked(c.masked_input(forwarded[name], noisy.astype("<u4")))
    request = consistency_round(server, clients)
    for c in clients.values():
        server.receive_unmask(c.unmask(request))
    assert np.array_equal(server.result(), expected / 2**16)


def test_malformed_message_fields_are_protocol_errors():
    """Found by the fuzzer (#16 finding 1): a non-uint8 tensor (TypeError) or a malformed
    binary spec (KeyError) used to escape decode_message and stop a secure round."""
    from safetensors.torch import save

    def message(tensor: torch.Tensor, kind) -> bytes:
        header = {"wire": "1", "secagg": {"fields": {}, "binary": {"x": kind}}}
        return save({"x": tensor}, metadata={"fedfm": json.dumps(header)})

    for payload in (
        message(torch.zeros(2, dtype=torch.bfloat16), "bytes"),
        message(torch.zeros(4, dtype=torch.uint8), {"a": 1}),
        message(torch.zeros((2, 2), dtype=torch.uint8), ["<u4", [1]]),
    ):
        with pytest.raises(ProtocolError, match="secure-aggregation message: field 'x'"):
            decode_message(payload)
