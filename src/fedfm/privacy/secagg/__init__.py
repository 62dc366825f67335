"""Secure aggregation: the server learns the sum of the clients' updates and nothing else.

The protocol is Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning" (CCS), with the signatures and the consistency check of its malicious model,
over plain messages (dicts of bytes, numpy arrays, ints, strings and lists of ids). Nothing here
moves bytes: :func:`drive` runs the server's side stage by stage over any transport (the gRPC
runtime's, or :func:`run_parties` among in-process parties: one driver for every runtime),
:func:`encode_message` / :func:`decode_message` turn messages into fedfm's safetensors wire
format (no pickle), and :func:`secure_sum` runs the whole protocol in this process.

Rounds (U1 ⊇ U2 ⊇ U3 ⊇ U4 are the clients still present in each round)::

    0 advertise keys   client → server  two fresh X25519 public keys: c (share encryption), s (masks),
                                        signed with its Ed25519 key over (session, id, c, s)
                       server → all     the roster: ids (sorted; client i holds Shamir point x = i + 1),
                                        both keys, the signing key and signature of every client, t;
                                        each client checks every signature, that no signing key
                                        repeats, and that each is the one it trusts for that id
    1 share keys       client u         draws a 32-byte self-mask seed b_u; Shamir-shares b_u and its
                                        s private key t-out-of-|U1|; encrypts v's two shares with
                                        AES-256-GCM under HKDF(X25519(c_u, c_v)), for each v in U1
                       server → v       the ciphertexts addressed to v, from every u in U2
    2 masked input     client u         y_u = x̄_u + PRG(b_u) + Σ_{v>u} PRG(s_uv) − Σ_{v<u} PRG(s_uv)
                                        mod 2^k over v in U2, s_uv = HKDF(X25519(s_u, s_v))
                       server → U3      who sent y (U3)
    3 consistency      client u         signs (session, U3)
                       server → U4      U3, U2 \\ U3 and the signatures of U4 (those who signed)
    4 unmask           client → server  with ≥ t valid signatures from U3 over the U3 it signed: its
                                        shares of b_u for u in U3 and of s_u for u in U2 \\ U3,
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

Threat model: the server learns nothing beyond the sum of at least t inputs against any
coalition of fewer than t parties (the server counting as one), also when the server deviates
from the protocol (the paper's malicious model): a substituted key in round 0 fails its
signature and every honest client leaves; a server telling clients different survivor lists
gets t signatures over one list at most, so never t shares of both kinds for one user. Which
signing key belongs to which client is the clients' :class:`~fedfm.signing.TrustedKeys`: a
pinned roster (``fedfm join --trusted-keys``), else trust on first use, which cannot stop a
server that invents clients (Sybils) from the start. The default t is a majority (t > n/2);
lower t trades privacy for dropout tolerance. Key material (X25519 keys, b_u, Shamir coefficients, nonces) comes from the
OS CSPRNG; the run seed only orders the simulation's message deliveries, and the sum is
deterministic all the same.

Fixed point, range and the order with DP. An update x (flattened) is encoded as
x̄ = round(x · 2^f) mod 2^k (f = ``fraction_bits``, k = ``modulus_bits`` ∈ {16, 32, 64}; negatives
in two's complement; :mod:`~fedfm.privacy.secagg.ring` sizes k from the uplink's quantiser), so the ring sum of n encodings is exactly the encoding of the sum of the rounded
values as long as |Σ x̄| < 2^(k−1): each value must satisfy |x| ≤ (2^(k−1) − 1) / 2^f / n, checked
before masking (:func:`max_abs_value`; k = 32, f = 16, n = 5 gives ≈ 6553.6). The decoded sum is
within n · 2^−(f+1) of the float sum. fedfm's client-side order with distributed DP is
clip → quantise (:func:`encode_fixed_point`) → add discrete noise in the ring (each client a
share of it, leaving headroom in the range) → mask (:meth:`SecAggClient.masked_input` takes
ring integers as they are); the server unmasks and decodes the noisy sum. Quantised updates
work because the ring sum of fixed-point values is exact: masking adds no error.

The package, one concept per module: :mod:`~fedfm.privacy.secagg.fixed_point` (floats ↔ ring),
:mod:`~fedfm.privacy.secagg.crypto` (key agreement, key derivation, PRG, pairwise masks),
:mod:`~fedfm.privacy.secagg.messages` (message types, checks, wire encoding),
:mod:`~fedfm.privacy.secagg.client` and :mod:`~fedfm.privacy.secagg.server` (the two parties),
:mod:`~fedfm.privacy.secagg.driver` (:func:`drive`, the stages),
:mod:`~fedfm.privacy.secagg.simulation` (in-process parties, :func:`secure_sum`),
:mod:`~fedfm.privacy.secagg.ring` (the ring's size). Import from here.
"""

from fedfm.privacy.secagg.client import SecAggClient
from fedfm.privacy.secagg.crypto import (
    CIPHERTEXT_BYTES,
    KEY_BYTES,
    MASK_SEED_LABEL,
    NONCE_BYTES,
    SHARE_KEY_LABEL,
    expand_mask,
    pairwise_mask_sum,
    pairwise_seed,
)
from fedfm.privacy.secagg.driver import STAGES, Exchange, SecAggResult, drive
from fedfm.privacy.secagg.fixed_point import (
    decode_fixed_point,
    encode_fixed_point,
    max_abs_value,
    ring_dtype,
)
from fedfm.privacy.secagg.messages import (
    ABORT,
    CONSISTENCY,
    FORWARDED,
    KEYS,
    MASKED,
    ROSTER,
    SHARES,
    SURVIVORS,
    UNMASK,
    UNMASK_REQUEST,
    decode_message,
    encode_message,
    max_message_bytes,
)
from fedfm.privacy.secagg.ring import RING_BITS, grid_fraction_bits, ring_bits, secagg_ring
from fedfm.privacy.secagg.server import SecAggServer, resolve_threshold
from fedfm.privacy.secagg.simulation import SERVER, Tamper, WireMessage, run_parties, secure_sum

__all__ = [
    "ABORT",
    "CIPHERTEXT_BYTES",
    "CONSISTENCY",
    "Exchange",
    "FORWARDED",
    "KEYS",
    "KEY_BYTES",
    "MASKED",
    "MASK_SEED_LABEL",
    "NONCE_BYTES",
    "RING_BITS",
    "ROSTER",
    "SERVER",
    "SHARES",
    "SHARE_KEY_LABEL",
    "STAGES",
    "SURVIVORS",
    "Tamper",
    "UNMASK",
    "UNMASK_REQUEST",
    "SecAggClient",
    "SecAggResult",
    "SecAggServer",
    "WireMessage",
    "decode_fixed_point",
    "drive",
    "decode_message",
    "encode_fixed_point",
    "encode_message",
    "max_message_bytes",
    "expand_mask",
    "grid_fraction_bits",
    "max_abs_value",
    "pairwise_mask_sum",
    "pairwise_seed",
    "ring_dtype",
    "resolve_threshold",
    "ring_bits",
    "run_parties",
    "secagg_ring",
    "secure_sum",
]
