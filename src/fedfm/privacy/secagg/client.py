"""The client's side of secure aggregation: :class:`SecAggClient`, one call per protocol round."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedfm.errors import ProtocolError
from fedfm.privacy import shamir
from fedfm.privacy.secagg.crypto import (
    CIPHERTEXT_BYTES,
    KEY_BYTES,
    NONCE_BYTES,
    SHARE_KEY_LABEL,
    SIGNATURE_BYTES,
    agree,
    encode_context,
    expand_mask,
    hkdf,
    keys_statement,
    pairwise_mask_sum,
    public_bytes,
    survivors_statement,
)
from fedfm.privacy.secagg.fixed_point import encode_fixed_point, ring_dtype
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
from fedfm.signing import TrustedKeys, raw_public, raw_signature_valid


class SecAggClient(Stages):
    """One client's side: five calls, one per round, each answering the server's last message.

    ``signing_key`` is the client's Ed25519 key (a fresh one if None); ``trusted`` says which
    signing key each other client may use (a pinned roster, or trust on first use if None).
    """

    def __init__(
        self,
        client_id: str,
        dimension: int,
        *,
        fraction_bits: int = 16,
        modulus_bits: int = 32,
        session: str = "",
        min_threshold: int = 2,
        signing_key: Ed25519PrivateKey | None = None,
        trusted: TrustedKeys | None = None,
    ) -> None:
        if not client_id:
            raise ValueError("client_id must be a non-empty string")
        self.client_id, self.dimension, self.session = client_id, dimension, session
        self.min_threshold = max(2, min_threshold)  # this client's policy: it shares no lower
        self._threshold = 0
        self.fraction_bits, self.modulus_bits = fraction_bits, modulus_bits
        self._dtype = ring_dtype(modulus_bits)
        self._c_key = X25519PrivateKey.generate()  # OS CSPRNG
        self._s_key = X25519PrivateKey.generate()
        self._signing_key = signing_key or Ed25519PrivateKey.generate()
        self._trusted = trusted if trusted is not None else TrustedKeys()
        self._stage, self._who = "advertise", f"client {client_id!r}"
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner → (my share of b_owner, of s_owner)
        self._revealed: dict[str, str] = {}  # owner → "b" or "s": the one kind ever revealed

    @property
    def threshold(self) -> int:
        """The round's threshold t, once the roster is in (0 before)."""
        return self._threshold

    def advertise_keys(self) -> dict[str, Any]:
        """Round 0: the two public keys, signed with the client's Ed25519 key with its id and
        the session (so the server cannot substitute them, nor replay them elsewhere)."""
        self._require("advertise", "advertise keys")
        self._stage = "share"
        c_pk, s_pk = public_bytes(self._c_key), public_bytes(self._s_key)
        return {
            "type": KEYS,
            "session": self.session,
            "client": self.client_id,
            "c_pk": c_pk,
            "s_pk": s_pk,
            "sig_pk": raw_public(self._signing_key),
            "signature": self._signing_key.sign(
                keys_statement(self.session, self.client_id, c_pk, s_pk)
            ),
        }

    def _check_signatures(
        self, clients: list[str], c_pk: np.ndarray, s_pk: np.ndarray, roster: dict[str, Any]
    ) -> dict[str, bytes]:
        """Every roster entry signed by a distinct signing key this client trusts for its id."""
        n = len(clients)
        sig_pk = message_array(roster, "sig_pk", np.uint8, (n, KEY_BYTES))
        signatures = message_array(roster, "signatures", np.uint8, (n, SIGNATURE_BYTES))
        keys = {c: sig_pk[i].tobytes() for i, c in enumerate(clients)}
        if len(set(keys.values())) != n:
            raise ProtocolError("secure aggregation: the roster repeats a signing key")
        if keys[self.client_id] != raw_public(self._signing_key):
            raise ProtocolError(
                f"secure aggregation: the roster carries another signing key for {self._who}"
            )
        for i, c in enumerate(clients):
            refusal = self._trusted.refusal(c, keys[c])
            if refusal:
                raise ProtocolError(f"secure aggregation: {refusal}")
            statement = keys_statement(self.session, c, c_pk[i].tobytes(), s_pk[i].tobytes())
            if not raw_signature_valid(keys[c], signatures[i].tobytes(), statement):
                raise ProtocolError(
                    f"secure aggregation: the roster's keys of {c[:80]!r} are not signed by it "
                    "(substituted by the server?)"
                )
        self._trusted.remember(keys)
        return keys

    def _share_key(self, peer: str, sender: str, recipient: str) -> tuple[AESGCM, bytes]:
        context = encode_context(SHARE_KEY_LABEL, self.session, sender, recipient)
        secret = agree(self._c_key.private_bytes_raw(), self._roster[peer][0])
        return AESGCM(hkdf(secret, context)), context

    def share_keys(self, roster: dict[str, Any]) -> dict[str, Any]:
        """Round 1: Shamir shares of b_u and of the s key, encrypted for each other client."""
        self._require("share", "share keys")
        expect_message(roster, ROSTER, self.session)
        clients = message_ids(roster, "clients")
        n, t = len(clients), message_field(roster, "threshold", int)
        c_pk = message_array(roster, "c_pk", np.uint8, (n, KEY_BYTES))
        s_pk = message_array(roster, "s_pk", np.uint8, (n, KEY_BYTES))
        if self.client_id not in clients:
            raise ProtocolError(f"secure aggregation: the roster leaves out {self._who}")
        me = clients.index(self.client_id)
        if (c_pk[me].tobytes(), s_pk[me].tobytes()) != (
            public_bytes(self._c_key),
            public_bytes(self._s_key),
        ):
            raise ProtocolError(
                f"secure aggregation: the roster carries other keys for {self._who}"
            )
        if len({row.tobytes() for row in np.concatenate([c_pk, s_pk])}) != 2 * n:
            raise ProtocolError("secure aggregation: the roster repeats a public key")
        self._signing_keys = self._check_signatures(clients, c_pk, s_pk, roster)
        if not 2 <= t <= n:
            raise ProtocolError(
                f"secure aggregation: threshold {t} is not in 2 … {n} (the clients)"
            )
        if t < self.min_threshold:
            raise ProtocolError(
                f"secure aggregation: threshold {t} is below this client's minimum "
                f"{self.min_threshold} (--min-threshold)"
            )
        self._roster = {c: (c_pk[i].tobytes(), s_pk[i].tobytes()) for i, c in enumerate(clients)}
        self._threshold = t
        self._b_seed = os.urandom(KEY_BYTES)
        xs = list(range(1, n + 1))
        b_shares = shamir.split_bytes(self._b_seed, t, xs)
        s_shares = shamir.split_bytes(self._s_key.private_bytes_raw(), t, xs)
        self._held = {self.client_id: (b_shares[me], s_shares[me])}
        recipients = [c for c in clients if c != self.client_id]
        ciphertexts = []
        for v in recipients:
            aead, context = self._share_key(v, self.client_id, v)
            nonce = os.urandom(NONCE_BYTES)
            i = clients.index(v)
            ciphertexts.append(nonce + aead.encrypt(nonce, b_shares[i] + s_shares[i], context))
        self._stage = "mask"
        return {
            "type": SHARES,
            "session": self.session,
            "client": self.client_id,
            "recipients": recipients,
            "ciphertexts": np.frombuffer(b"".join(ciphertexts), np.uint8).reshape(
                -1, CIPHERTEXT_BYTES
            ),
        }

    def masked_input(self, forwarded: dict[str, Any], update: np.ndarray) -> dict[str, Any]:
        """Round 2: y_u = x̄_u + PRG(b_u) ± pairwise masks, as k-bit ring elements.

        ``update`` (d,) is either floats, encoded here with the range check, or already ring
        elements of the ring's unsigned dtype (a DP layer that quantised and added noise itself).
        """
        self._require("mask", "send a masked input")
        expect_message(forwarded, FORWARDED, self.session)
        senders = message_ids(forwarded, "senders")
        ciphertexts = message_array(
            forwarded, "ciphertexts", np.uint8, (len(senders), CIPHERTEXT_BYTES)
        )
        if self.client_id in senders or not set(senders) <= set(self._roster):
            raise ProtocolError("secure aggregation: forwarded shares from unknown senders")
        if len(senders) + 1 < self._threshold:
            raise ProtocolError(
                f"secure aggregation: only {len(senders) + 1} of {len(self._roster)} clients "
                f"shared their keys, the threshold is {self._threshold}"
            )
        for u, row in zip(senders, ciphertexts, strict=True):
            aead, context = self._share_key(u, u, self.client_id)
            data = row.tobytes()
            try:
                plain = aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], context)
            except InvalidTag:
                raise ProtocolError(
                    f"secure aggregation: the shares from {u!r} to {self.client_id!r} do not "
                    "decrypt (tampered with or misrouted)"
                ) from None
            self._held[u] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        self._group = sorted([*senders, self.client_id])  # U2
        update = np.asarray(update)
        if update.shape != (self.dimension,):
            raise ProtocolError(
                f"secure aggregation: the update has shape {update.shape}, expected ({self.dimension},)"
            )
        if update.dtype == self._dtype:
            encoded = update.copy()
        elif np.issubdtype(update.dtype, np.floating):
            clients = len(self._group)
            encoded = encode_fixed_point(update, self.fraction_bits, self.modulus_bits, clients)
        else:
            raise ProtocolError(
                f"secure aggregation: an update of dtype {update.dtype} cannot be masked"
            )
        encoded += expand_mask(self._b_seed, self.dimension, self.modulus_bits)
        peers = {v: self._roster[v][1] for v in senders}
        encoded += pairwise_mask_sum(
            self.client_id,
            self._s_key.private_bytes_raw(),
            peers,
            self.dimension,
            self.modulus_bits,
            self.session,
        )
        self._stage = "consent"  # never a second y_u under the same masks
        return {
            "type": MASKED,
            "session": self.session,
            "client": self.client_id,
            "masked": encoded,
        }

    def consistency(self, announced: dict[str, Any]) -> dict[str, Any]:
        """Round 3, the consistency check: sign the survivor list U3 the server announced.

        The signatures travel to every survivor, and none reveals a share before it holds t of
        them over the U3 it was told: a server telling two clients two stories gets t on one
        side at most, so never both shares of one user from t clients."""
        self._require("consent", "sign the survivors")
        expect_message(announced, SURVIVORS, self.session)
        survivors = message_ids(announced, "survivors")
        if self.client_id not in survivors or not set(survivors) <= set(self._group):
            raise ProtocolError(
                "secure aggregation: the survivors announced are not clients of this round "
                "including the requested client"
            )
        if len(survivors) < self._threshold:
            raise ProtocolError(
                f"secure aggregation: only {len(survivors)} of {len(self._group)} clients sent "
                f"their masked input, the threshold is {self._threshold}"
            )
        self._survivors = sorted(survivors)
        self._stage = "unmask"
        return {
            "type": CONSISTENCY,
            "session": self.session,
            "client": self.client_id,
            "signature": self._signing_key.sign(survivors_statement(self.session, survivors)),
        }

    def _check_consistency(self, request: dict[str, Any], survivors: list[str]) -> None:
        """At least t valid signatures, from survivors, over the U3 this client signed."""
        if sorted(survivors) != self._survivors:
            raise ProtocolError(
                "secure aggregation: the unmask request names other survivors than the ones "
                "this client signed"
            )
        signers = message_ids(request, "signers")
        signatures = message_array(request, "signatures", np.uint8, (len(signers), SIGNATURE_BYTES))
        statement = survivors_statement(self.session, self._survivors)
        valid = {
            v
            for v, signature in zip(signers, signatures, strict=True)
            if v in self._survivors
            and raw_signature_valid(self._signing_keys[v], signature.tobytes(), statement)
        }
        if len(valid) < self._threshold:
            raise ProtocolError(
                f"secure aggregation: only {len(valid)} valid signatures over this client's "
                f"survivor list, the threshold is {self._threshold} (the server told clients "
                "different survivors?)"
            )

    def unmask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Round 4: shares of b_u for the survivors, of s_u for the dropped; never both for one
        user, and only with t signatures over the survivor list this client signed.

        May be answered again (a retried request), but a user whose b share was revealed never
        gets its s share revealed, and the other way round: that would unmask its input.
        """
        self._require("unmask", "reveal shares")
        expect_message(request, UNMASK_REQUEST, self.session)
        survivors, dropped = message_ids(request, "survivors"), message_ids(request, "dropped")
        both = sorted(set(survivors) & set(dropped))
        both += sorted(u for u in survivors if self._revealed.get(u, "b") != "b")
        both += sorted(u for u in dropped if self._revealed.get(u, "s") != "s")
        if both:
            raise ProtocolError(
                f"secure aggregation: {self._who} refuses to reveal both the self-mask share and "
                f"the mask-key share of {both[0]!r}"
            )
        if set(survivors) | set(dropped) != set(self._group) or self.client_id not in survivors:
            raise ProtocolError(
                "secure aggregation: the unmask request does not split this round's clients into "
                "survivors (including the requested client) and dropped"
            )
        self._check_consistency(request, survivors)
        self._revealed.update({u: "b" for u in survivors} | {u: "s" for u in dropped})

        def stack(owners: list[str], kind: int) -> np.ndarray:
            data = b"".join(self._held[u][kind] for u in owners)
            return np.frombuffer(data, np.uint8).reshape(len(owners), shamir.SHARE_BYTES)

        return {
            "type": UNMASK,
            "session": self.session,
            "client": self.client_id,
            "b_owners": survivors,
            "b_shares": stack(survivors, 0),
            "s_owners": dropped,
            "s_shares": stack(dropped, 1),
        }
