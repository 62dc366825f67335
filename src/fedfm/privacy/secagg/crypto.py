"""The cryptography both ends must agree on bit for bit: sizes and labels, X25519 key agreement,
HKDF key derivation, the AES-256-CTR PRG and the pairwise masks built from them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedfm.errors import ProtocolError
from fedfm.privacy import shamir
from fedfm.privacy.secagg.fixed_point import ring_dtype

KEY_BYTES = 32  # X25519 public and private keys, seeds
NONCE_BYTES = 12
CIPHERTEXT_BYTES = (
    NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16
)  # nonce ‖ AES-GCM(b share ‖ s share) ‖ tag
SIGNATURE_BYTES = 64  # Ed25519
SHARE_KEY_LABEL = "fedfm/secagg/v1/share-encryption"
MASK_SEED_LABEL = "fedfm/secagg/v1/pairwise-mask"
KEYS_SIGNATURE_LABEL = "fedfm/secagg/v1/advertised-keys"
SURVIVORS_SIGNATURE_LABEL = "fedfm/secagg/v1/consistency"


def encode_context(label: str, *parts: str) -> bytes:
    """Length-prefixed UTF-8 parts: an unambiguous HKDF info and AEAD associated data."""
    out = b""
    for part in (label, *parts):
        data = part.encode("utf-8")
        out += len(data).to_bytes(4, "big") + data
    return out


def keys_statement(session: str, client: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """What a client signs in round 0: its two X25519 public keys, bound to session and id."""
    return encode_context(KEYS_SIGNATURE_LABEL, session, client) + c_pk + s_pk


def survivors_statement(session: str, survivors: list[str]) -> bytes:
    """What a client signs in the consistency round: the session and the survivor list U3."""
    return encode_context(SURVIVORS_SIGNATURE_LABEL, session, *sorted(survivors))


def agree(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519(private key, peer public key): the shared secret; a bad key raises ProtocolError."""
    try:
        return X25519PrivateKey.from_private_bytes(private_key).exchange(
            X25519PublicKey.from_public_bytes(peer_public_key)
        )
    except ValueError as e:  # a wrong length or a low-order point (all-zero shared secret)
        raise ProtocolError(f"secure aggregation: X25519 key agreement failed: {e}") from None


def hkdf(secret: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of ``secret`` with ``info`` and no salt: 32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of an X25519 private key."""
    return key.public_key().public_bytes_raw()


def pairwise_seed(
    private_key: bytes, peer_public_key: bytes, own_id: str, peer_id: str, session: str = ""
) -> bytes:
    """s_uv: HKDF of the X25519 agreement of u's and v's s keys; both ends derive the same 32 bytes."""
    low, high = sorted((own_id, peer_id))
    info = encode_context(MASK_SEED_LABEL, session, low, high)
    return hkdf(agree(private_key, peer_public_key), info)


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
