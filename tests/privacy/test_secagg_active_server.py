"""Secure aggregation against an active server (Bonawitz et al. 2017, malicious model): signed
round-0 keys and the consistency round. Each attack is mounted through the one protocol driver
(``secure_sum``): ``tamper`` rewrites what the server sends, a subclass changes what it does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedfm.errors import ProtocolError
from fedfm.privacy.secagg import (
    ABORT,
    UNMASK,
    SecAggClient,
    SecAggServer,
    WireMessage,
    decode_message,
    encode_message,
    secure_sum,
)
from fedfm.privacy.secagg.crypto import keys_statement
from fedfm.signing import TrustedKeys, raw_public

IDS = [f"c{i}" for i in range(4)]


def grid_vectors(n: int = 4, dimension: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """Vectors on the fixed-point grid (multiples of 2^-16): their secure sum is exact."""
    rng = np.random.default_rng(seed)
    return {f"c{i}": rng.integers(-5000, 5000, dimension) / 2**16 for i in range(n)}


def aborts(transcript: list[WireMessage]) -> dict[str, str]:
    """client → the reason it gave for leaving."""
    out = {}
    for m in transcript:
        if m.recipient == "server":
            message = decode_message(m.payload)
            if message["type"] == ABORT:
                out[m.sender] = message["reason"]
    return out


def test_an_honest_run_gives_the_exact_sum_with_dropouts_at_every_stage():
    data = grid_vectors(8)
    vanish = {"c0": "shares", "c1": "masked", "c2": "consistency", "c3": "unmask"}
    transcript: list[WireMessage] = []
    result = secure_sum(data, 3, vanish=vanish, transcript=transcript)
    # c0 left before sharing and c1 before masking: not in the sum; c2 and c3 masked, so are
    assert result.survivors == [f"c{i}" for i in range(2, 8)]
    assert np.array_equal(result.sum, sum(data[c] for c in result.survivors))
    assert result.failures == [] and aborts(transcript) == {}
    signed = {m.sender for m in transcript if m.round == "consistency" and m.sender != "server"}
    assert signed == {f"c{i}" for i in range(3, 8)}  # c2 never signed; c3 signed, then left


def test_a_substituted_x25519_key_makes_every_honest_client_refuse():
    """The server swaps c2's share-encryption key for its own (a man in the middle): the roster
    entry no longer carries c2's signature, so every client refuses before sharing a thing."""
    attacker = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def swap(stage: str, cid: str, message: dict[str, Any]) -> dict[str, Any]:
        if stage == "shares":
            c_pk = message["c_pk"].copy()
            c_pk[2] = np.frombuffer(attacker, np.uint8)
            message = {**message, "c_pk": c_pk}
        return message

    transcript: list[WireMessage] = []
    with pytest.raises(ProtocolError, match="only 0 of 4 clients shared their keys"):
        secure_sum(grid_vectors(), 3, transcript=transcript, tamper=swap)
    reasons = aborts(transcript)
    assert set(reasons) == set(IDS)
    for cid in ("c0", "c1", "c3"):
        assert "keys of 'c2' are not signed by it" in reasons[cid]
    assert "carries other keys for client 'c2'" in reasons["c2"]
    assert not any(m.round == "masked" for m in transcript)  # no share ever left a client


def test_a_resigned_roster_entry_is_refused_by_pinned_keys():
    """A server that swaps both keys of a client and signs them with a key of its own (a Sybil
    in its place) passes the signature check; a client that pins the roster refuses it."""
    session, n = "s", 3
    signing = {c: Ed25519PrivateKey.generate() for c in IDS[:n]}
    pinned = TrustedKeys({c: raw_public(k) for c, k in signing.items()})
    server = SecAggServer(8, 2, session=session)
    clients = {
        c: SecAggClient(c, 8, session=session, signing_key=signing[c], trusted=pinned)
        for c in IDS[:n]
    }
    sybil = SecAggClient("c2", 8, session=session)  # the server's own party, own signing key
    for c in ("c0", "c1"):
        server.receive_keys(clients[c].advertise_keys())
    server.receive_keys(sybil.advertise_keys())
    roster = decode_message(encode_message(server.roster()))
    with pytest.raises(ProtocolError, match="'c2' signs with a key other than its trusted one"):
        clients["c0"].share_keys(roster)
    # Without a pinned roster (trust on first use) the first round cannot tell...
    tofu = TrustedKeys()
    first = SecAggClient("c0", 8, session=session, signing_key=signing["c0"], trusted=tofu)
    server = SecAggServer(8, 2, session=session)
    server.receive_keys(first.advertise_keys())
    server.receive_keys(SecAggClient("c2", 8, session=session).advertise_keys())
    first.share_keys(server.roster())
    # ...but a later round with another key for c2 is refused.
    later = SecAggClient("c0", 8, session="t", signing_key=signing["c0"], trusted=tofu)
    server = SecAggServer(8, 2, session="t")
    server.receive_keys(later.advertise_keys())
    server.receive_keys(SecAggClient("c2", 8, session="t").advertise_keys())
    with pytest.raises(ProtocolError, match="other than the one first seen"):
        later.share_keys(server.roster())


def test_a_roster_with_a_repeated_or_missing_signing_key_is_refused():
    server = SecAggServer(8, 2, session="s")
    clients = {c: SecAggClient(c, 8, session="s") for c in IDS[:3]}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    roster = server.roster()
    repeated = roster["sig_pk"].copy()
    repeated[2] = repeated[1]
    with pytest.raises(ProtocolError, match="repeats a signing key"):
        clients["c0"].share_keys({**roster, "sig_pk": repeated})
    missing = {k: v for k, v in roster.items() if k != "signatures"}
    with pytest.raises(ProtocolError, match="'signatures'"):
        clients["c0"].share_keys(missing)
    forged = roster["signatures"].copy()
    forged[0, 0] ^= 1  # c0's own entry, tampered: its own check is against its own key too
    with pytest.raises(ProtocolError, match="not signed by it"):
        clients["c1"].share_keys({**roster, "signatures": forged})
    # the honest server refuses unsigned keys before they reach a roster
    unsigned = {**SecAggClient("c3", 8, session="s").advertise_keys(), "signature": bytes(64)}
    fresh = SecAggServer(8, 2, session="s")
    with pytest.raises(ProtocolError, match="not signed by it"):
        fresh.receive_keys(unsigned)


class LyingServer(SecAggServer):
    """Forwards every consistency signature it gets, valid or not (an honest one drops bad
    ones), so that clients told different survivor lists see each other's signatures."""

    def receive_consistency(self, message: dict[str, Any]) -> None:
        self._consents[message["client"]] = message["signature"]


def two_stories(told_victim_dropped: set[str], victim: str = "c0"):
    """A tamper that tells ``told_victim_dropped`` that ``victim`` dropped (so they would reveal
    its mask-key share), and the others that it survived (its self-mask share)."""

    def tamper(stage: str, cid: str, message: dict[str, Any]) -> dict[str, Any]:
        if stage in ("consistency", "unmask") and cid in told_victim_dropped:
            survivors = [c for c in message["survivors"] if c != victim]
            message = {**message, "survivors": survivors}
            if stage == "unmask":
                message["dropped"] = sorted([*message["dropped"], victim])
        return message

    return tamper


def revealed(transcript: list[WireMessage]) -> dict[str, dict[str, int]]:
    """user → {"b": how many clients revealed a share of its self-mask, "s": of its mask key}."""
    count: dict[str, dict[str, int]] = {}
    for m in transcript:
        if m.recipient == "server" and m.round == "unmask":
            message = decode_message(m.payload)
            if message["type"] == UNMASK:
                for kind in ("b", "s"):
                    for owner in message[f"{kind}_owners"]:
                        count.setdefault(owner, {"b": 0, "s": 0})[kind] += 1
    return count


def test_different_survivor_lists_fail_the_consistency_check_and_nobody_unmasks():
    """t = 3 of 4, two clients told c0 dropped, two told it survived: neither side holds t
    signatures over its list, so no client reveals a single share."""
    data = grid_vectors()
    transcript: list[WireMessage] = []
    server = LyingServer(40, 3, session="lying")
    with pytest.raises(ProtocolError, match="only 0 of 4 clients answered the unmasking round"):
        secure_sum(data, 3, server=server, transcript=transcript, tamper=two_stories({"c2", "c3"}))
    assert revealed(transcript) == {}
    reasons = aborts(transcript)
    assert set(reasons) == set(IDS)
    assert all(
        "only 2 valid signatures over this client's survivor list" in r for r in reasons.values()
    )


def test_a_lopsided_split_never_yields_both_shares_of_one_user():
    """Three told c0 survived, one told it dropped: the three reveal c0's self-mask shares, the
    one refuses, so the server never holds t shares of c0's mask key (its input stays hidden)."""
    transcript: list[WireMessage] = []
    server = LyingServer(40, 3, session="lying")
    secure_sum(grid_vectors(), 3, server=server, transcript=transcript, tamper=two_stories({"c3"}))
    shares = revealed(transcript)
    assert shares["c0"] == {"b": 3, "s": 0}
    assert all(min(k["b"], k["s"]) < 3 for k in shares.values())
    assert "only 1 valid signatures" in aborts(transcript)["c3"]


def test_a_consistency_signature_over_another_list_is_dropped_by_an_honest_server():
    server = SecAggServer(8, 2, session="s")
    clients = {c: SecAggClient(c, 8, session="s") for c in IDS[:3]}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    roster = server.roster()
    for c in clients.values():
        server.receive_shares(c.share_keys(roster))
    forwarded = server.forward_shares()
    for cid, c in clients.items():
        server.receive_masked(c.masked_input(forwarded[cid], np.zeros(8)))
    announced = server.announce_survivors()
    other = clients["c0"].consistency({**announced, "survivors": ["c0", "c1"]})
    with pytest.raises(ProtocolError, match="'c0' did not sign this round's survivor list"):
        server.receive_consistency(other)
    statement = keys_statement("s", "c0", bytes(32), bytes(32))
    assert statement.startswith(b"\x00\x00\x00")  # length-prefixed, unambiguous


def test_the_trusted_keys_file_is_read_and_checked(tmp_path):
    from fedfm.errors import ConfigError
    from fedfm.signing import load_trusted_keys

    keys = {c: raw_public(Ed25519PrivateKey.generate()) for c in ("c0", "c1")}
    good = tmp_path / "roster.txt"
    good.write_text(
        "# the federation\n" + "".join(f"{c} {k.hex()}  # {c}\n" for c, k in keys.items())
    )
    assert load_trusted_keys(good) == keys
    for text, message in (
        ("c0 abcd\n", "line 1: 2 bytes, not the 32"),
        ("c0\n", "line 1: 1 fields, expected 2"),
        (f"c0 {keys['c0'].hex()}\nc0 {keys['c1'].hex()}\n", "line 2: 'c0' twice"),
    ):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_trusted_keys(bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_trusted_keys(tmp_path / "missing.txt")
