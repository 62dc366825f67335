"""The server's side of secure aggregation: :class:`SecAggServer` and the default threshold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedfm.errors import ProtocolError
from fedfm.privacy import shamir
from fedfm.privacy.secagg.crypto import (
    CIPHERTEXT_BYTES,
    KEY_BYTES,
    SIGNATURE_BYTES,
    expand_mask,
    keys_statement,
    pairwise_mask_sum,
    public_bytes,
    survivors_statement,
)
from fedfm.privacy.secagg.fixed_point import decode_fixed_point, ring_dtype
from fedfm.privacy.secagg.messages import (
    CONSISTENCY,
    FORWARDED,
    KEYS,
    MASKED,
    ROSTER,
    SHARES,
    SURVIVORS,
    UNMASK,
    UNMASK_REQUEST,
    Stages,
    expect_message,
    message_array,
    message_field,
    message_ids,
)
from fedfm.signing import raw_signature_valid


def resolve_threshold(threshold: int, clients: int) -> int:
    """``secagg.threshold`` for a round of ``clients``: 0 means a majority, ⌊n/2⌋ + 1."""
    return clients // 2 + 1 if threshold == 0 else threshold


class SecAggServer(Stages):
    """The server's side: ``receive_*`` one client message at a time, then close the round.

    Closing a round (:meth:`roster`, :meth:`forward_shares`, :meth:`announce_survivors`,
    :meth:`unmask_request`, :meth:`result`) with fewer than ``threshold`` clients raises
    ProtocolError. An honest server checks every signature too, and drops a client whose
    signature fails (the clients check them again: they do not rely on the server).
    ``signing_keys``, if given, are the keys the clients registered (at join): a client whose
    round-0 message names another one is dropped.
    """

    def __init__(
        self,
        dimension: int,
        threshold: int,
        *,
        fraction_bits: int = 16,
        modulus_bits: int = 32,
        session: str = "",
        signing_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        if threshold < 2:
            raise ValueError(
                f"threshold = {threshold} is not allowed; allowed: ≥ 2 (with 1, a share is the secret)"
            )
        self.dimension, self.threshold, self.session = dimension, threshold, session
        self.fraction_bits, self.modulus_bits = fraction_bits, modulus_bits
        self._dtype = ring_dtype(modulus_bits)
        self._stage, self._who = "keys", "the server"
        self.signing_keys = signing_keys
        self._keys: dict[str, tuple[bytes, bytes]] = {}  # U1: id → (c_pk, s_pk)
        self._signed: dict[str, tuple[bytes, bytes]] = {}  # U1: id → (signing key, signature)
        self._consents: dict[str, bytes] = {}  # U4: id → its signature over U3
        self._ciphertexts: dict[str, dict[str, np.ndarray]] = {}  # U2: sender → recipient → row
        self._masked: dict[str, np.ndarray] = {}  # U3: id → y
        self._answers: dict[str, dict[str, Any]] = {}  # id → its unmask message
        self._sum: np.ndarray | None = None

    def _too_few(self, got: int, of: int, what: str) -> None:
        if got < self.threshold:
            raise ProtocolError(
                f"secure aggregation: only {got} of {of} clients {what}, the threshold is "
                f"{self.threshold}"
            )

    def _sender(self, message: Any, kind: str, expected: Mapping[str, Any], seen: Mapping) -> str:
        expect_message(message, kind, self.session)
        client = message_field(message, "client", str)
        if client not in expected:
            raise ProtocolError(
                f"secure aggregation: a {kind!r} message from unexpected {client!r}"
            )
        if client in seen:
            raise ProtocolError(f"secure aggregation: a second {kind!r} message from {client!r}")
        return client

    def receive_keys(self, message: dict[str, Any]) -> None:
        """Round 0: one client's public keys."""
        self._require("keys", "receive keys")
        expect_message(message, KEYS, self.session)
        client = message_field(message, "client", str)
        if not client:
            raise ProtocolError("secure aggregation: keys from a client without an id")
        if client in self._keys:
            raise ProtocolError(f"secure aggregation: keys from {client!r} were already received")
        c_pk, s_pk = message_field(message, "c_pk", bytes), message_field(message, "s_pk", bytes)
        if len(c_pk) != KEY_BYTES or len(s_pk) != KEY_BYTES:
            raise ProtocolError(f"secure aggregation: public keys must be {KEY_BYTES} bytes")
        sig_pk = message_field(message, "sig_pk", bytes)
        signature = message_field(message, "signature", bytes)
        if self.signing_keys is not None and self.signing_keys.get(client) != sig_pk:
            raise ProtocolError(
                f"secure aggregation: {client!r} signs with a key other than the one it joined "
                "with (or joined with none)"
            )
        statement = keys_statement(self.session, client, c_pk, s_pk)
        if not raw_signature_valid(sig_pk, signature, statement):
            raise ProtocolError(f"secure aggregation: the keys of {client!r} are not signed by it")
        self._keys[client] = (c_pk, s_pk)
        self._signed[client] = (sig_pk, signature)

    def roster(self) -> dict[str, Any]:
        """Close round 0: every client's keys and the threshold, the same message to all."""
        self._require("keys", "send the roster")
        self._too_few(len(self._keys), len(self._keys), "advertised keys")
        self._clients = sorted(self._keys)
        self._x = {c: i + 1 for i, c in enumerate(self._clients)}
        self._stage = "shares"

        def rows(table: Mapping[str, tuple[bytes, bytes]], i: int, width: int) -> np.ndarray:
            data = b"".join(table[c][i] for c in self._clients)
            return np.frombuffer(data, np.uint8).reshape(-1, width)

        return {
            "type": ROSTER,
            "session": self.session,
            "threshold": self.threshold,
            "clients": self._clients,
            "c_pk": rows(self._keys, 0, KEY_BYTES),
            "s_pk": rows(self._keys, 1, KEY_BYTES),
            "sig_pk": rows(self._signed, 0, KEY_BYTES),
            "signatures": rows(self._signed, 1, SIGNATURE_BYTES),
        }

    def receive_shares(self, message: dict[str, Any]) -> None:
        """Round 1: one client's encrypted shares, one ciphertext per other client."""
        self._require("shares", "receive shares")
        client = self._sender(message, SHARES, self._keys, self._ciphertexts)
        recipients = [c for c in self._clients if c != client]
        if message_ids(message, "recipients") != recipients:
            raise ProtocolError(f"secure aggregation: {client!r} did not share with every client")
        rows = message_array(message, "ciphertexts", np.uint8, (len(recipients), CIPHERTEXT_BYTES))
        self._ciphertexts[client] = dict(zip(recipients, rows, strict=True))

    def forward_shares(self) -> dict[str, dict[str, Any]]:
        """Close round 1: for each client of U2, the ciphertexts addressed to it."""
        self._require("shares", "forward shares")
        self._too_few(len(self._ciphertexts), len(self._clients), "shared their keys")
        self._group = sorted(self._ciphertexts)  # U2
        self._stage = "masked"
        out = {}
        for v in self._group:
            senders = [u for u in self._group if u != v]
            rows = [self._ciphertexts[u][v] for u in senders]
            out[v] = {
                "type": FORWARDED,
                "session": self.session,
                "senders": senders,
                "ciphertexts": np.stack(rows)
                if rows
                else np.zeros((0, CIPHERTEXT_BYTES), np.uint8),
            }
        return out

    def receive_masked(self, message: dict[str, Any]) -> None:
        """Round 2: one client's masked input y_u."""
        self._require("masked", "receive masked inputs")
        client = self._sender(message, MASKED, dict.fromkeys(self._group), self._masked)
        self._masked[client] = message_array(message, "masked", self._dtype, (self.dimension,))

    def announce_survivors(self) -> dict[str, Any]:
        """Close round 2: who is in the sum (U3), for U3 to sign (the consistency check)."""
        self._require("masked", "announce the survivors")
        self._too_few(len(self._masked), len(self._group), "sent their masked input")
        self._survivors = sorted(self._masked)
        self._dropped = [u for u in self._group if u not in self._masked]
        self._stage = "consistency"
        return {"type": SURVIVORS, "session": self.session, "survivors": self._survivors}

    def receive_consistency(self, message: dict[str, Any]) -> None:
        """Round 3: one survivor's signature over (session, U3)."""
        self._require("consistency", "receive consistency signatures")
        client = self._sender(message, CONSISTENCY, dict.fromkeys(self._survivors), self._consents)
        signature = message_field(message, "signature", bytes)
        statement = survivors_statement(self.session, self._survivors)
        if not raw_signature_valid(self._signed[client][0], signature, statement):
            raise ProtocolError(
                f"secure aggregation: {client!r} did not sign this round's survivor list"
            )
        self._consents[client] = signature

    def unmask_request(self) -> dict[str, Any]:
        """Close round 3: U3, who dropped after sharing, and the signatures over U3, for the
        clients that signed (U4)."""
        self._require("consistency", "request unmasking")
        self._too_few(len(self._consents), len(self._survivors), "signed the survivor list")
        self._signers = sorted(self._consents)
        self._stage = "unmask"
        data = b"".join(self._consents[c] for c in self._signers)
        return {
            "type": UNMASK_REQUEST,
            "session": self.session,
            "survivors": self._survivors,
            "dropped": self._dropped,
            "signers": self._signers,
            "signatures": np.frombuffer(data, np.uint8).reshape(-1, SIGNATURE_BYTES),
        }

    def receive_unmask(self, message: dict[str, Any]) -> None:
        """Round 4: one signer's shares."""
        self._require("unmask", "receive unmasking shares")
        client = self._sender(message, UNMASK, dict.fromkeys(self._signers), self._answers)
        if (
            message_ids(message, "b_owners") != self._survivors
            or message_ids(message, "s_owners") != self._dropped
        ):
            raise ProtocolError(f"secure aggregation: {client!r} revealed shares of other users")
        shape = (len(self._survivors), shamir.SHARE_BYTES)
        message_array(message, "b_shares", np.uint8, shape)
        message_array(message, "s_shares", np.uint8, (len(self._dropped), shamir.SHARE_BYTES))
        self._answers[client] = message

    def _secret(self, owner: str, kind: str) -> bytes:
        owners, shares = f"{kind}_owners", f"{kind}_shares"
        points = [
            (self._x[w], a[shares][a[owners].index(owner)].tobytes())
            for w, a in sorted(self._answers.items())
        ]
        return shamir.reconstruct_bytes(points, self.threshold)

    def result(self) -> np.ndarray:
        """Close round 4: Σ_{U3} x̄_u, decoded to float64 (d,)."""
        if self._sum is not None:
            return self._sum
        self._require("unmask", "compute the sum")
        self._too_few(len(self._answers), len(self._signers), "answered the unmasking round")
        total = np.zeros(self.dimension, dtype=self._dtype)
        for u in self._survivors:
            total += self._masked[u]
            total -= expand_mask(self._secret(u, "b"), self.dimension, self.modulus_bits)
        survivor_keys = {v: self._keys[v][1] for v in self._survivors}
        for u in self._dropped:
            private_key = self._secret(u, "s")
            if public_bytes(X25519PrivateKey.from_private_bytes(private_key)) != self._keys[u][1]:
                raise ProtocolError(f"secure aggregation: the shares of {u!r}'s mask key are wrong")
            # The survivors' inputs hold −(u's own pairwise mask sum over them): add it back.
            total += pairwise_mask_sum(
                u, private_key, survivor_keys, self.dimension, self.modulus_bits, self.session
            )
        self._stage = "done"
        self._sum = decode_fixed_point(total, self.fraction_bits, self.modulus_bits)
        return self._sum

    @property
    def survivors(self) -> list[str]:
        """The clients whose inputs are in the sum (U3), once round 2 is closed."""
        return list(getattr(self, "_survivors", []))
