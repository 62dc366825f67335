"""Secure aggregation: the server learns the sum of the clients' updates and nothing else.

The protocol is Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning" (CCS), in its honest-but-curious form, over plain messages (dicts of bytes,
numpy arrays, ints, strings and lists of ids). Nothing here moves bytes: a runtime carries the
messages, :func:`encode_message` / :func:`decode_message` turn them into fedfm's safetensors wire
format (no pickle), and :func:`secure_sum` runs the whole protocol among in-process parties.

Rounds (U1 ⊇ U2 ⊇ U3 are the clients still present in each round)::

    0 advertise keys   client → server  two fresh X25519 public keys: c (share encryption), s (masks)
                       server → all     the roster: ids (sorted; client i holds Shamir point x = i + 1),
                                        both keys of every client, the threshold t
    1 share keys       client u         draws a 32-byte self-mask seed b_u; Shamir-shares b_u and its
                                        s private key t-out-of-|U1|; encrypts v's two shares with
                                        AES-256-GCM under HKDF(X25519(c_u, c_v)), for each v in U1
                       server → v       the ciphertexts addressed to v, from every u in U2
    2 masked input     client u         y_u = x̄_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)
                                        mod 2^k over v in U2, s_uv = HKDF(X25519(s_u, s_v))
                       server → U3      who sent y (U3) and who dropped after sharing (U2 \\ U3)
    3 unmask           client → server  its shares of b_u for u in U3 and of s_u for u in U2 \\ U3,
                                        never both kinds for one user (the client enforces it)
                       server           Σ_{U3} y − Σ_{U3} PRG(b_u) + the dropped users' pairwise
                                        masks, from ≥ t responses; = Σ_{U3} x̄_u mod 2^k → floats

Pairwise masks cancel between two survivors; a dropped user's masks are rebuilt from its s key,
the survivors' self-masks from their b seeds. Clients may drop at any point; the sum over U3 is
recovered while ≥ t clients answer each round, else :class:`~fedfm.errors.ProtocolError`.

Cryptographic choices (both ends must agree bit for bit):

- key agreement X25519; key derivation HKDF-SHA256 with ``info`` = length-prefixed
  (label, session, ids) — share keys per direction (sender, recipient), mask seeds per pair
  (ids sorted), so no key is used for two purposes;
- share encryption AES-256-GCM, random 96-bit nonce prepended, the same context as AAD (a
  ciphertext cannot be replayed to another recipient, session or direction): 94 bytes a pair;
- PRG: AES-256-CTR keyed by the 32-byte seed, counter block 0, keystream read as little-endian
  unsigned k-bit words (each seed keys exactly one stream). Fast with AES-NI, portable to any
  language; ``expand_mask(bytes(32), 1, 32)[0] == 0x78c095dc`` (FIPS-197 AES-256 of zeros);
- Shamir over GF(2^256 + 297) (:mod:`fedfm.privacy.shamir`): one 33-byte element per 32-byte
  secret, no chunking. With more than t answers the extra shares are checked for consistency,
  and a reconstructed s key must match the public key its owner advertised.

Threat model: security holds against any coalition of fewer than t parties (the server
counting as one) that follows the protocol. The default t is a majority (t > n/2); lower
t trades privacy for dropout tolerance. There is no PKI: public keys are not signed, so an
*active* server could substitute keys in round 0 (man in the middle) or report different dropout
sets to different clients; the paper's signatures and consistency round (its malicious model)
are not implemented. Key material (X25519 keys, b_u, Shamir coefficients, nonces) comes from the
OS CSPRNG; the run seed only orders the simulation's message deliveries, and the sum is
deterministic all the same.

Fixed point, range and the order with DP. An update x (flattened) is encoded as
x̄ = round(x · 2^f) mod 2^k (f = ``fraction_bits``, k = ``modulus_bits``; negatives in two's
complement), so the ring sum of n encodings is exactly the encoding of the sum of the rounded
values as long as |Σ x̄| < 2^(k−1): each value must satisfy |x| ≤ (2^(k−1) − 1) / 2^f / n, checked
before masking (:func:`max_abs_value`; k = 32, f = 16, n = 5 gives ≈ 6553.6). The decoded sum is
within n · 2^−(f+1) of the float sum. fedfm's client-side order with distributed DP is
clip → quantise (:func:`encode_fixed_point`) → add discrete noise in the ring (each client a
share of it, leaving headroom in the range) → mask (:meth:`SecAggClient.masked_input` takes
ring integers as they are); the server unmasks and decodes the noisy sum. Quantised updates
work because the ring sum of fixed-point values is exact: masking adds no error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedfm.errors import ProtocolError
from fedfm.privacy import shamir

KEY_BYTES = 32  # X25519 public and private keys, seeds
NONCE_BYTES = 12
CIPHERTEXT_BYTES = (
    NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16
)  # nonce ‖ AES-GCM(b share ‖ s share) ‖ tag
SHARE_KEY_LABEL = "fedfm/secagg/v1/share-encryption"
MASK_SEED_LABEL = "fedfm/secagg/v1/pairwise-mask"

# Message types, one per arrow in the round table above.
KEYS, ROSTER, SHARES, FORWARDED = (
    "secagg/keys",
    "secagg/roster",
    "secagg/shares",
    "secagg/forwarded",
)
MASKED, UNMASK_REQUEST, UNMASK = "secagg/masked", "secagg/unmask-request", "secagg/unmask"
ABORT = "secagg/abort"  # a client leaves the protocol instance, with a "reason" (any round)
SERVER = "server"  # the server's name in a transcript


# --------------------------------------------------------------------------------------------
# Pure pieces: fixed point, key derivation, PRG


def ring_dtype(modulus_bits: int) -> np.dtype:
    """The unsigned little-endian dtype of Z_(2^k): ``<u4`` for k = 32, ``<u8`` for k = 64."""
    if modulus_bits not in (32, 64):
        raise ValueError(f"modulus_bits = {modulus_bits} is not allowed; allowed: 32 or 64")
    return np.dtype("<u4" if modulus_bits == 32 else "<u8")


def resolve_threshold(threshold: int, clients: int) -> int:
    """``secagg.threshold`` for a round of ``clients``: 0 means a majority, ⌊n/2⌋ + 1."""
    return clients // 2 + 1 if threshold == 0 else threshold


def max_abs_value(fraction_bits: int, modulus_bits: int, clients: int) -> float:
    """The largest |value| each of ``clients`` updates may hold: (2^(k−1) − 1) / 2^f / n."""
    return ((1 << (modulus_bits - 1)) - 1) // clients / 2.0**fraction_bits


def encode_fixed_point(
    values: np.ndarray, fraction_bits: int, modulus_bits: int, clients: int = 1
) -> np.ndarray:
    """Floats (d,) → ring elements round(x · 2^f) mod 2^k (d,); raises if n sums could overflow."""
    scaled = np.rint(np.asarray(values, dtype=np.float64).ravel() * 2.0**fraction_bits)
    if not np.isfinite(scaled).all():
        raise ProtocolError("secure aggregation: the update has NaN or infinite values")
    limit = ((1 << (modulus_bits - 1)) - 1) // clients  # on integers: Σ of n values stays < 2^(k−1)
    peak = float(np.abs(scaled).max(initial=0.0))
    if peak > limit:  # Python compares float and int exactly
        raise ProtocolError(
            f"secure aggregation: an update value of magnitude {peak / 2.0**fraction_bits:.6g} "
            f"exceeds the representable ±{limit / 2.0**fraction_bits:.6g} (secagg.modulus_bits = "
            f"{modulus_bits}, secagg.fraction_bits = {fraction_bits}, {clients} clients); clip "
            "the updates (privacy.clip_norm), lower fraction_bits or set modulus_bits = 64"
        )
    return scaled.astype(np.int64).astype(ring_dtype(modulus_bits))  # int64 → uint wraps mod 2^k


def decode_fixed_point(ring: np.ndarray, fraction_bits: int, modulus_bits: int) -> np.ndarray:
    """Ring elements (d,) → float64 (d,), reading [2^(k−1), 2^k) as negatives."""
    signed = np.asarray(ring, dtype=ring_dtype(modulus_bits)).view(f"<i{modulus_bits // 8}")
    return signed.astype(np.float64) / 2.0**fraction_bits


def _context(label: str, *parts: str) -> bytes:
    """Length-prefixed UTF-8 parts: an unambiguous HKDF info and AEAD associated data."""
    out = b""
    for part in (label, *parts):
        data = part.encode("utf-8")
        out += len(data).to_bytes(4, "big") + data
    return out


def _agree(private_key: bytes, peer_public_key: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private_key).exchange(
            X25519PublicKey.from_public_bytes(peer_public_key)
        )
    except ValueError as e:  # a wrong length or a low-order point (all-zero shared secret)
        raise ProtocolError(f"secure aggregation: X25519 key agreement failed: {e}") from None


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def pairwise_seed(
    private_key: bytes, peer_public_key: bytes, own_id: str, peer_id: str, session: str = ""
) -> bytes:
    """s_uv: HKDF of the X25519 agreement of u's and v's s keys; both ends derive the same 32 bytes."""
    low, high = sorted((own_id, peer_id))
    info = _context(MASK_SEED_LABEL, session, low, high)
    return _hkdf(_agree(private_key, peer_public_key), info)


def expand_mask(seed: bytes, dimension: int, modulus_bits: int) -> np.ndarray:
    """PRG(seed): AES-256-CTR keystream (counter block 0) as ``dimension`` little-endian k-bit words."""
    dtype = ring_dtype(modulus_bits)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(dimension * dtype.itemsize)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=dtype).copy()


def pairwise_mask_sum(
    own_id: str,
    private_key: bytes,
    peer_public_keys: Mapping[str, bytes],
    dimension: int,
    modulus_bits: int,
    session: str = "",
) -> np.ndarray:
    """Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv) mod 2^k over the peers (ids compared as strings)."""
    total = np.zeros(dimension, dtype=ring_dtype(modulus_bits))
    for peer_id, public_key in peer_public_keys.items():
        seed = pairwise_seed(private_key, public_key, own_id, peer_id, session)
        mask = expand_mask(seed, dimension, modulus_bits)
        if peer_id > own_id:
            total += mask  # unsigned arrays wrap mod 2^k
        else:
            total -= mask
    return total


# --------------------------------------------------------------------------------------------
# Message checks


def _field(message: Any, name: str, kind: type) -> Any:
    value = message.get(name) if isinstance(message, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(
            f"secure aggregation: message field {name!r} is missing or not {kind.__name__}"
        )
    return value


def _ids(message: Any, name: str) -> list[str]:
    ids = _field(message, name, list)
    if not all(isinstance(i, str) and i for i in ids) or len(set(ids)) != len(ids):
        raise ProtocolError(f"secure aggregation: {name!r} must list distinct non-empty client ids")
    return ids


def _array(message: Any, name: str, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
    value = _field(message, name, np.ndarray)
    if value.dtype != np.dtype(dtype) or value.shape != shape:
        raise ProtocolError(
            f"secure aggregation: {name!r} has dtype {value.dtype} and shape {value.shape}, "
            f"expected {np.dtype(dtype)} and {shape}"
        )
    return value


def _expect(message: Any, kind: str, session: str) -> None:
    if _field(message, "type", str) != kind:
        raise ProtocolError(
            f"secure aggregation: expected a {kind!r} message, got {message['type']!r}"
        )
    if _field(message, "session", str) != session:
        raise ProtocolError(
            f"secure aggregation: message of session {message['session']!r}, expected {session!r}"
        )


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class _Stages:
    """A tiny state machine: each call is allowed in one stage only, so no step runs twice."""

    _stage: str
    _who: str

    def _require(self, stage: str, action: str) -> None:
        if self._stage != stage:
            raise ProtocolError(
                f"secure aggregation: {self._who} cannot {action} now (stage {self._stage!r}, "
                f"expected {stage!r})"
            )


# --------------------------------------------------------------------------------------------
# Parties


class SecAggClient(_Stages):
    """One client's side: four calls, one per round, each answering the server's last message."""

    def __init__(
        self,
        client_id: str,
        dimension: int,
        *,
        fraction_bits: int = 16,
        modulus_bits: int = 32,
        session: str = "",
    ) -> None:
        if not client_id:
            raise ValueError("client_id must be a non-empty string")
        self.client_id, self.dimension, self.session = client_id, dimension, session
        self.fraction_bits, self.modulus_bits = fraction_bits, modulus_bits
        self._dtype = ring_dtype(modulus_bits)
        self._c_key = X25519PrivateKey.generate()  # OS CSPRNG
        self._s_key = X25519PrivateKey.generate()
        self._stage, self._who = "advertise", f"client {client_id!r}"
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner → (my share of b_owner, of s_owner)
        self._revealed: dict[str, str] = {}  # owner → "b" or "s": the one kind ever revealed

    def advertise_keys(self) -> dict[str, Any]:
        """Round 0: the two public keys (unsigned: there is no PKI)."""
        self._require("advertise", "advertise keys")
        self._stage = "share"
        return {
            "type": KEYS,
            "session": self.session,
            "client": self.client_id,
            "c_pk": _public(self._c_key),
            "s_pk": _public(self._s_key),
        }

    def _share_key(self, peer: str, sender: str, recipient: str) -> tuple[AESGCM, bytes]:
        context = _context(SHARE_KEY_LABEL, self.session, sender, recipient)
        secret = _agree(self._c_key.private_bytes_raw(), self._roster[peer][0])
        return AESGCM(_hkdf(secret, context)), context

    def share_keys(self, roster: dict[str, Any]) -> dict[str, Any]:
        """Round 1: Shamir shares of b_u and of the s key, encrypted for each other client."""
        self._require("share", "share keys")
        _expect(roster, ROSTER, self.session)
        clients = _ids(roster, "clients")
        n, t = len(clients), _field(roster, "threshold", int)
        c_pk = _array(roster, "c_pk", np.uint8, (n, KEY_BYTES))
        s_pk = _array(roster, "s_pk", np.uint8, (n, KEY_BYTES))
        if self.client_id not in clients:
            raise ProtocolError(f"secure aggregation: the roster leaves out {self._who}")
        me = clients.index(self.client_id)
        if (c_pk[me].tobytes(), s_pk[me].tobytes()) != (_public(self._c_key), _public(self._s_key)):
            raise ProtocolError(
                f"secure aggregation: the roster carries other keys for {self._who}"
            )
        if len({row.tobytes() for row in np.concatenate([c_pk, s_pk])}) != 2 * n:
            raise ProtocolError("secure aggregation: the roster repeats a public key")
        if not 2 <= t <= n:
            raise ProtocolError(
                f"secure aggregation: threshold {t} is not in 2 … {n} (the clients)"
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
        _expect(forwarded, FORWARDED, self.session)
        senders = _ids(forwarded, "senders")
        ciphertexts = _array(forwarded, "ciphertexts", np.uint8, (len(senders), CIPHERTEXT_BYTES))
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
        self._stage = "unmask"  # never a second y_u under the same masks
        return {
            "type": MASKED,
            "session": self.session,
            "client": self.client_id,
            "masked": encoded,
        }

    def unmask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Round 3: shares of b_u for the survivors, of s_u for the dropped; never both for one user.

        May be answered again (a retried request), but a user whose b share was revealed never
        gets its s share revealed, and the other way round: that would unmask its input.
        """
        self._require("unmask", "reveal shares")
        _expect(request, UNMASK_REQUEST, self.session)
        survivors, dropped = _ids(request, "survivors"), _ids(request, "dropped")
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
        if len(survivors) < self._threshold:
            raise ProtocolError(
                f"secure aggregation: only {len(survivors)} of {len(self._group)} clients sent "
                f"their masked input, the threshold is {self._threshold}"
            )
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


class SecAggServer(_Stages):
    """The server's side: ``receive_*`` one client message at a time, then close the round.

    Closing a round (:meth:`roster`, :meth:`forward_shares`, :meth:`unmask_request`,
    :meth:`result`) with fewer than ``threshold`` clients raises ProtocolError.
    """

    def __init__(
        self,
        dimension: int,
        threshold: int,
        *,
        fraction_bits: int = 16,
        modulus_bits: int = 32,
        session: str = "",
    ) -> None:
        if threshold < 2:
            raise ValueError(
                f"threshold = {threshold} is not allowed; allowed: ≥ 2 (with 1, a share is the secret)"
            )
        self.dimension, self.threshold, self.session = dimension, threshold, session
        self.fraction_bits, self.modulus_bits = fraction_bits, modulus_bits
        self._dtype = ring_dtype(modulus_bits)
        self._stage, self._who = "keys", "the server"
        self._keys: dict[str, tuple[bytes, bytes]] = {}  # U1: id → (c_pk, s_pk)
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
        _expect(message, kind, self.session)
        client = _field(message, "client", str)
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
        _expect(message, KEYS, self.session)
        client = _field(message, "client", str)
        if not client:
            raise ProtocolError("secure aggregation: keys from a client without an id")
        if client in self._keys:
            raise ProtocolError(f"secure aggregation: keys from {client!r} were already received")
        c_pk, s_pk = _field(message, "c_pk", bytes), _field(message, "s_pk", bytes)
        if len(c_pk) != KEY_BYTES or len(s_pk) != KEY_BYTES:
            raise ProtocolError(f"secure aggregation: public keys must be {KEY_BYTES} bytes")
        self._keys[client] = (c_pk, s_pk)

    def roster(self) -> dict[str, Any]:
        """Close round 0: every client's keys and the threshold, the same message to all."""
        self._require("keys", "send the roster")
        self._too_few(len(self._keys), len(self._keys), "advertised keys")
        self._clients = sorted(self._keys)
        self._x = {c: i + 1 for i, c in enumerate(self._clients)}
        self._stage = "shares"

        def keys(i: int) -> np.ndarray:
            data = b"".join(self._keys[c][i] for c in self._clients)
            return np.frombuffer(data, np.uint8).reshape(-1, KEY_BYTES)

        return {
            "type": ROSTER,
            "session": self.session,
            "threshold": self.threshold,
            "clients": self._clients,
            "c_pk": keys(0),
            "s_pk": keys(1),
        }

    def receive_shares(self, message: dict[str, Any]) -> None:
        """Round 1: one client's encrypted shares, one ciphertext per other client."""
        self._require("shares", "receive shares")
        client = self._sender(message, SHARES, self._keys, self._ciphertexts)
        recipients = [c for c in self._clients if c != client]
        if _ids(message, "recipients") != recipients:
            raise ProtocolError(f"secure aggregation: {client!r} did not share with every client")
        rows = _array(message, "ciphertexts", np.uint8, (len(recipients), CIPHERTEXT_BYTES))
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
        self._masked[client] = _array(message, "masked", self._dtype, (self.dimension,))

    def unmask_request(self) -> dict[str, Any]:
        """Close round 2: who is in the sum (U3) and who dropped after sharing, for U3."""
        self._require("masked", "request unmasking")
        self._too_few(len(self._masked), len(self._group), "sent their masked input")
        self._survivors = sorted(self._masked)
        self._dropped = [u for u in self._group if u not in self._masked]
        self._stage = "unmask"
        return {
            "type": UNMASK_REQUEST,
            "session": self.session,
            "survivors": self._survivors,
            "dropped": self._dropped,
        }

    def receive_unmask(self, message: dict[str, Any]) -> None:
        """Round 3: one survivor's shares."""
        self._require("unmask", "receive unmasking shares")
        client = self._sender(message, UNMASK, dict.fromkeys(self._survivors), self._answers)
        if (
            _ids(message, "b_owners") != self._survivors
            or _ids(message, "s_owners") != self._dropped
        ):
            raise ProtocolError(f"secure aggregation: {client!r} revealed shares of other users")
        shape = (len(self._survivors), shamir.SHARE_BYTES)
        _array(message, "b_shares", np.uint8, shape)
        _array(message, "s_shares", np.uint8, (len(self._dropped), shamir.SHARE_BYTES))
        self._answers[client] = message

    def _secret(self, owner: str, kind: str) -> bytes:
        owners, shares = f"{kind}_owners", f"{kind}_shares"
        points = [
            (self._x[w], a[shares][a[owners].index(owner)].tobytes())
            for w, a in sorted(self._answers.items())
        ]
        return shamir.reconstruct_bytes(points, self.threshold)

    def result(self) -> np.ndarray:
        """Close round 3: Σ_{U3} x̄_u, decoded to float64 (d,)."""
        if self._sum is not None:
            return self._sum
        self._require("unmask", "compute the sum")
        self._too_few(len(self._answers), len(self._survivors), "answered the unmasking round")
        total = np.zeros(self.dimension, dtype=self._dtype)
        for u in self._survivors:
            total += self._masked[u]
            total -= expand_mask(self._secret(u, "b"), self.dimension, self.modulus_bits)
        survivor_keys = {v: self._keys[v][1] for v in self._survivors}
        for u in self._dropped:
            private_key = self._secret(u, "s")
            if _public(X25519PrivateKey.from_private_bytes(private_key)) != self._keys[u][1]:
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


# --------------------------------------------------------------------------------------------
# Wire encoding and the simulation driver


def encode_message(message: dict[str, Any]) -> bytes:
    """A message as fedfm wire bytes: arrays and bytes as uint8 tensors, the rest in the header."""
    import torch

    from fedfm.codecs.wire import pack

    tensors, binary, fields = {}, {}, {}
    for name, value in message.items():
        if isinstance(value, bytes):
            raw, binary[name] = np.frombuffer(value, np.uint8), "bytes"
        elif isinstance(value, np.ndarray):
            if value.dtype.str not in ("|u1", "<u4", "<u8"):
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
    from fedfm.codecs.wire import unpack

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
        raw = tensors[name].numpy()
        if kind == "bytes":
            message[name] = raw.tobytes()
            continue
        try:
            dtype, shape = np.dtype(kind[0]), tuple(int(s) for s in kind[1])
            if dtype.str not in ("|u1", "<u4", "<u8"):
                raise ValueError(f"dtype {dtype}")
            message[name] = np.frombuffer(raw.tobytes(), dtype).reshape(shape)
        except (TypeError, ValueError, IndexError) as e:
            raise ProtocolError(
                f"secure-aggregation message: field {name!r} is malformed: {e}"
            ) from None
    return message


class WireMessage(NamedTuple):
    """One message of a simulated run as it travelled.

    ``round`` names the round whose messages it carries (client → server) or closes (server →
    client): ``advertise_keys``, ``share_keys``, ``masked_input`` or ``unmask``.
    """

    round: str
    sender: str
    recipient: str
    payload: bytes


@dataclass(frozen=True)
class SecAggResult:
    """The outcome of :func:`secure_sum`: the decoded sum over ``survivors`` and its costs."""

    sum: np.ndarray  # float64 (d,)
    survivors: list[str]  # the clients whose vectors are in the sum
    bytes_up: int  # client → server wire bytes, all rounds
    bytes_down: int  # server → client wire bytes (a broadcast counts once per recipient)
    seconds: float  # wall time of the whole protocol, all parties on this machine


def secure_sum(
    vectors: Mapping[str, np.ndarray],
    threshold: int,
    fraction_bits: int = 16,
    modulus_bits: int = 32,
    drop_after_sharing: set[str] | frozenset[str] = frozenset(),
    seed: int = 0,
    *,
    drop_after_masking: set[str] | frozenset[str] = frozenset(),
    transcript: list[WireMessage] | None = None,
    session: str | None = None,
) -> SecAggResult:
    """Run the protocol among in-process clients and a server; every message crosses the wire format.

    ``vectors`` maps client ids to float vectors of one length; ``threshold`` 0 means a majority.
    Clients in ``drop_after_sharing`` vanish after round 1 (their vectors are not in the sum);
    those in ``drop_after_masking`` after round 2 (theirs are, but they do not help unmask). A
    client that dropped receives nothing more. ``seed`` shuffles the order in which the server
    receives each round's messages. Pass a list as ``transcript`` to get every payload.
    ``session`` names the protocol instance (default ``secure_sum/<seed>``).
    """
    ids = sorted(vectors)
    if not ids:
        raise ValueError("secure_sum needs at least one client")
    dimension = int(np.asarray(vectors[ids[0]]).size)
    if any(np.asarray(vectors[c]).shape != (dimension,) for c in ids):
        raise ValueError("secure_sum needs 1-D vectors of one length")
    unknown = (set(drop_after_sharing) | set(drop_after_masking)) - set(ids)
    if unknown:
        raise ValueError(f"dropped clients {sorted(unknown)} are not among the vectors' ids")
    start = time.perf_counter()
    threshold = resolve_threshold(threshold, len(ids))
    rng = np.random.default_rng(seed)
    session = f"secure_sum/{seed}" if session is None else session
    options = {"fraction_bits": fraction_bits, "modulus_bits": modulus_bits, "session": session}
    server = SecAggServer(dimension, threshold, **options)
    clients = {c: SecAggClient(c, dimension, **options) for c in ids}
    sent = {"up": 0, "down": 0}

    def carry(round_: str, client: str, message: dict[str, Any], up: bool) -> dict[str, Any]:
        payload = encode_message(message)
        sent["up" if up else "down"] += len(payload)
        if transcript is not None:
            sender, recipient = (client, SERVER) if up else (SERVER, client)
            transcript.append(WireMessage(round_, sender, recipient, payload))
        return decode_message(payload)

    def shuffled(group: list[str]) -> list[str]:
        return [group[i] for i in rng.permutation(len(group))]

    for c in shuffled(ids):
        server.receive_keys(carry("advertise_keys", c, clients[c].advertise_keys(), up=True))
    roster = server.roster()
    for c in shuffled(ids):
        shares = clients[c].share_keys(carry("advertise_keys", c, roster, up=False))
        server.receive_shares(carry("share_keys", c, shares, up=True))
    forwarded = server.forward_shares()
    alive = [c for c in ids if c not in drop_after_sharing]
    for c in shuffled(alive):
        received = carry("share_keys", c, forwarded[c], up=False)
        masked = clients[c].masked_input(received, np.asarray(vectors[c]))
        server.receive_masked(carry("masked_input", c, masked, up=True))
    request = server.unmask_request()
    for c in shuffled([c for c in alive if c not in drop_after_masking]):
        answer = clients[c].unmask(carry("masked_input", c, request, up=False))
        server.receive_unmask(carry("unmask", c, answer, up=True))
    total = server.result()
    return SecAggResult(
        sum=total,
        survivors=server.survivors,
        bytes_up=sent["up"],
        bytes_down=sent["down"],
        seconds=time.perf_counter() - start,
    )
