"""The cryptography SecAgg+ needs, from the ``cryptography`` package (OpenSSL).

- Key agreement: X25519. A client's mask key pair is derived from a 16-byte seed
  (HKDF-SHA256), so that the seed, not the 32-byte key, is what gets secret-shared.
- Authenticated encryption of shares: AES-256-GCM, key = HKDF(X25519 secret), a random
  96-bit nonce per message, and the session, sender and receiver as associated data.
- Mask expansion: AES-128 in counter mode over zeros, keyed by HKDF of the agreed
  secret (or of the self-mask seed). AES-CTR is a PRG as long as AES is a PRF, so the
  masks are computationally indistinguishable from uniform; numpy's PCG64 or Philox
  are not cryptographic (PCG64's state can be recovered from its outputs), and
  AES-CTR with AES-NI is also faster here (about 0.2 ms per 100k-value mask vs 0.9 ms
  for Philox). Keystream words are read as little-endian uint64; their low bits are
  uniform modulo any power of two.
"""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import NDArray

from fedloom.errors import SecAggAborted

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError as exc:  # pragma: no cover - the extra is part of dev
    raise ImportError(
        "secure aggregation needs the cryptography package, which is not installed. "
        "Install it with: pip install 'fedloom[secagg]'"
    ) from exc

__all__ = [
    "MaskExpander",
    "PublicKey",
    "agree",
    "decrypt",
    "derive",
    "encrypt",
    "mask_private_key",
    "new_private_key",
    "public_bytes",
]

PublicKey = bytes
_NONCE = 12
_ZERO_IV = bytes(16)
_CHUNK = 1 << 17  # values per keystream block: 1 MiB of uint64, cache-friendly


def derive(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of `secret` for the purpose named by `info`."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def new_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key (for encrypting shares; never shared)."""
    return X25519PrivateKey.generate()


def mask_private_key(seed: bytes, session: bytes) -> X25519PrivateKey:
    """The X25519 mask key derived from a 16-byte `seed` (what gets secret-shared)."""
    return X25519PrivateKey.from_private_bytes(derive(seed, b"fedloom-secagg mask key|" + session))


def public_bytes(key: X25519PrivateKey) -> PublicKey:
    """The 32 raw bytes of `key`'s public half."""
    return key.public_key().public_bytes_raw()


def agree(key: X25519PrivateKey, peer: PublicKey, info: bytes, length: int = 32) -> bytes:
    """A secret only `key`'s owner and `peer`'s owner can compute, derived for `info`.

    Raises:
        SecAggAborted: `peer` is not a valid X25519 public key.
    """
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError as exc:
        raise SecAggAborted(
            f"a peer's public key is invalid ({exc}); expected 32 bytes of an X25519 key.",
            stage="share_keys",
        ) from exc
    return derive(shared, info, length)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: a random nonce, then the ciphertext and its tag."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, message: bytes, aad: bytes) -> bytes:
    """The plaintext of `encrypt`'s output.

    Raises:
        SecAggAborted: the message was altered, or is for another session or pair.
    """
    try:
        return AESGCM(key).decrypt(message[:_NONCE], message[_NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise SecAggAborted(
            "an encrypted share does not authenticate: it was altered, or was encrypted for "
            "another session, sender or receiver.",
            stage="masked_input",
        ) from exc


class MaskExpander:
    """Adds or subtracts AES-CTR keystreams to a uint64 vector, in place, chunk by chunk.

    Arithmetic wraps modulo 2^64, so the result is right modulo every ``2^k``, k <= 64.
    """

    def __init__(self, length: int) -> None:
        self._length = length
        size = min(length, _CHUNK)
        self._zeros = bytes(size * 8)
        self._out = bytearray(size * 8 + 15)  # cryptography wants block_size - 1 spare bytes

    def apply(self, target: NDArray[np.uint64], key: bytes, *, sign: int) -> None:
        """``target += sign * PRG(key)`` modulo 2^64 (`sign` is +1 or -1)."""
        encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
        operation = np.add if sign > 0 else np.subtract
        for start in range(0, self._length, _CHUNK):
            stop = min(start + _CHUNK, self._length)
            count = stop - start
            encryptor.update_into(memoryview(self._zeros)[: count * 8], self._out)
            stream = np.frombuffer(self._out, dtype="<u8", count=count)
            operation(target[start:stop], stream, out=target[start:stop])
