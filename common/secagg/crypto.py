"""The cryptographic parts of secure aggregation: key agreement, mask expansion, share encryption.

* **Key agreement**: X25519 (RFC 7748) Diffie-Hellman, then HKDF-SHA256 (RFC 5869) with a
  label naming the aggregation and the purpose, so one shared secret gives independent keys
  for the share channel and for the pairwise masks of each aggregation.
* **Mask expansion**: the ChaCha20 stream cipher (RFC 8439) keyed by a 32-byte seed, its
  keystream read as little-endian uint64 words and reduced mod 2^b (b ≤ 64 divides 2^64, so
  every residue is exactly uniform). A mask is pseudo-random to anyone without the seed: this
  is a cryptographic PRG, unlike numpy's generators (Flower's ``pseudo_rand_gen`` seeds
  numpy's RandomState with 32 bits of the seed).
* **Share channel**: ChaCha20-Poly1305 AEAD with the sender and recipient ids as associated
  data, so the relaying server can neither read nor redirect a share.
* **Secret sharing**: Shamir's scheme over GF(2^128) (pycryptodome, through Flower's
  ``create_shares``/``combine_shares``).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 32


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()  # OS CSPRNG


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private: X25519PrivateKey, peer_public: bytes, label: bytes) -> bytes:
    """A 32-byte key shared with the owner of ``peer_public``: HKDF-SHA256(X25519(private, peer), info=label)."""
    secret = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=label).derive(secret)


def expand_mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` pseudo-random residues mod 2^bits (uint64) from a 32-byte ``seed`` (ChaCha20 keystream)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    zeros = np.zeros(length, dtype="<u8")  # calloc'd: the keystream is ChaCha20 of zeros
    stream = np.empty(length, dtype="<u8")  # written in place (no copy), then reduced mod 2^bits in place
    encryptor.update_into(zeros.data.cast("B"), stream.data.cast("B"))
    np.bitwise_and(stream, modulus_mask(bits), out=stream)
    return stream.astype(np.uint64, copy=False)


def modulus_mask(bits: int) -> np.uint64:
    """2^bits − 1 as uint64: ``x & modulus_mask(b)`` is x mod 2^b for uint64 x."""
    return np.uint64((1 << bits) - 1)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 with a random 96-bit nonce (prefixed to the ciphertext)."""
    import secrets

    nonce = secrets.token_bytes(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises ``cryptography.exceptions.InvalidTag`` if tampered with."""
    return ChaCha20Poly1305(key).decrypt(ciphertext[:12], ciphertext[12:], associated)


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """``count`` Shamir shares of ``secret``, any ``threshold`` of which rebuild it."""
    from flwr.common.secure_aggregation.crypto.shamir import create_shares

    return create_shares(secret, threshold, count)


def combine_secret(shares: list[bytes]) -> bytes:
    """The secret rebuilt from at least ``threshold`` of :func:`split_secret`'s shares."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares

    return combine_shares(shares)
