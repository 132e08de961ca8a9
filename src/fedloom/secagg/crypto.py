"""The cryptographic building blocks of secure aggregation, all from ``cryptography``.

- **Key agreement**: X25519 (RFC 7748). ``agree`` refuses a peer key that yields the all-zero
  shared secret (a low-order point), which is how a forged or malformed public key shows.
- **Key derivation**: HKDF-SHA256 (RFC 5869) of the full 32-byte shared secret, bound to the
  protocol's purpose, the session and the two parties, so one agreement never keys two things.
- **Authenticated encryption** of secret shares: AES-256-GCM with a fresh 96-bit nonce from the
  operating system's CSPRNG; the associated data binds a ciphertext to its session, sender and
  recipient, so the server cannot replay it elsewhere.
- **Mask expansion**: a PRG that is AES-256 in counter mode over zeros, keyed by the full 256-bit
  secret (never a truncated seed, never a non-cryptographic generator), read as little-endian
  integers modulo ``2**bits``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class DecryptionError(ValueError):
    """A ciphertext that does not authenticate under the key and associated data it claims."""


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes: (private, public)."""
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return raw, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_of(private: bytes) -> bytes:
    """The X25519 public key of a raw private key."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_public(public: bytes) -> None:
    """``ValueError`` unless ``public`` is a usable X25519 public key (32 bytes, not of low
    order): agreement with a throwaway key must give a non-zero secret."""
    if len(public) != KEY_BYTES:
        raise ValueError(f"a public key is {KEY_BYTES} bytes, got {len(public)}")
    agree(keypair()[0], public)


def private_key(private: bytes) -> X25519PrivateKey:
    """The key object of raw private-key bytes, to agree with many public keys."""
    return X25519PrivateKey.from_private_bytes(private)


def agree(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """The X25519 shared secret; ``ValueError`` for a low-order or malformed public key."""
    if len(public) != KEY_BYTES:
        raise ValueError(f"a public key is {KEY_BYTES} bytes, got {len(public)}")
    key = private_key(private) if isinstance(private, bytes) else private
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # the all-zero output of a low-order point
        raise ValueError(f"the public key is not usable for key agreement: {exc}") from None


def derive(secret: bytes, purpose: bytes) -> bytes:
    """A 32-byte key from the whole ``secret`` by HKDF-SHA256, bound to ``purpose``."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(secret)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """``nonce || AES-256-GCM(plaintext)`` with a random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """The plaintext of ``encrypt``; ``DecryptionError`` if it does not authenticate."""
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError(f"a ciphertext of {len(ciphertext)} bytes is too short")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated)
    except InvalidTag:
        raise DecryptionError(
            "the ciphertext does not authenticate (wrong key or altered)"
        ) from None


def ring_dtype(bits: int) -> np.dtype[np.unsignedinteger[Any]]:
    """The unsigned integer type values of ``Z_{2**bits}`` are held in: 32 bits when they fit
    (4 bytes a value on the wire and in the PRG), else 64."""
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


def expand(key: bytes, size: int, bits: int) -> np.ndarray:
    """``size`` pseudorandom integers modulo ``2**bits`` (``bits`` <= 64): AES-256-CTR keyed by
    ``key`` over zeros, read as little-endian integers of ``ring_dtype(bits)`` and reduced modulo
    ``2**bits`` (exactly uniform, as ``2**bits`` divides the type's range). The array is
    read-only when no reduction was needed."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a PRG key is {KEY_BYTES} bytes, got {len(key)}")
    dtype = ring_dtype(bits)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(_zeros(dtype.itemsize * size))
    encryptor.finalize()  # CTR has no padding: nothing more comes out
    values = np.frombuffer(stream, dtype=dtype)
    if bits < 8 * dtype.itemsize:
        values = values & dtype.type((1 << bits) - 1)
    return values


_ZEROS = bytes(0)


def _zeros(n: int) -> memoryview:
    """``n`` zero bytes, from one buffer kept for the next call (a mask is expanded per
    neighbour per client: allocating them each time cost as much as the cipher)."""
    global _ZEROS
    if len(_ZEROS) < n:
        _ZEROS = bytes(n)
    return memoryview(_ZEROS)[:n]


def random_bytes(n: int = KEY_BYTES) -> bytes:
    """``n`` bytes from the operating system's CSPRNG."""
    return os.urandom(n)
