"""Shamir's t-of-n secret sharing over the prime field of ``p = 2^130 - 5``.

Written here because no well-kept library does prime-field Shamir: PyCryptodome's
``Crypto.Protocol.SecretSharing.Shamir`` (the maintained one; Flower uses it) works
in GF(2^128), and the prime-field packages on PyPI (``secretsharing``,
``pyseltongue``) have been unmaintained for years. The scheme is a few lines of
modular arithmetic on Python integers; secrets are 16-byte seeds (< 2^128 < p).

A secret ``s`` is the constant term of a random polynomial ``f`` of degree ``t - 1``;
holder ``x`` (an index >= 1) gets ``f(x)``. Any ``t`` shares rebuild ``s = f(0)`` by
Lagrange interpolation; fewer reveal nothing about it.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

from fedloom.errors import ConfigError, SecAggAborted

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

PRIME = (1 << 130) - 5
"""The field's modulus, the prime of Poly1305."""

SHARE_BYTES = 17
"""Bytes of one share's value (``ceil(130 / 8)``)."""


def split(secret: bytes, *, xs: Sequence[int], threshold: int) -> dict[int, int]:
    """Shares of `secret` for holders `xs`, any `threshold` of which rebuild it.

    Args:
        secret: at most 16 bytes.
        xs: distinct holder indices >= 1.
        threshold: ``t``, 1 <= t <= len(xs).

    Returns:
        ``{x: f(x)}`` for each holder.

    Raises:
        ConfigError: the secret is too long, or the indices or threshold are invalid.

    Example:
        >>> shares = split(b"seed", xs=[1, 2, 3], threshold=2)
        >>> combine({1: shares[1], 3: shares[3]}, threshold=2).rjust(16, b"\\0")[-4:]
        b'seed'
    """
    if len(secret) > 16:
        raise ConfigError(f"a secret is at most 16 bytes, got {len(secret)}.", field="secret")
    if len(set(xs)) != len(xs) or any(not 1 <= x < PRIME for x in xs):
        raise ConfigError(f"holder indices must be distinct and >= 1, got {list(xs)}.", field="xs")
    if not 1 <= threshold <= len(xs):
        raise ConfigError(
            f"threshold must be in [1, {len(xs)}] for {len(xs)} holders, got {threshold}.",
            field="threshold",
        )
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares: dict[int, int] = {}
    for x in xs:
        value = 0
        for coefficient in reversed(coefficients):  # Horner
            value = (value * x + coefficient) % PRIME
        shares[x] = value
    return shares


def combine(shares: dict[int, int], *, threshold: int) -> bytes:
    """The 16-byte secret rebuilt from at least `threshold` shares ``{x: f(x)}``.

    Uses the `threshold` shares of smallest index.

    Raises:
        ConfigError: fewer than `threshold` shares.
        SecAggAborted: the shares do not come from one 16-byte secret.
    """
    if len(shares) < threshold:
        raise ConfigError(
            f"rebuilding a secret needs {threshold} shares, got {len(shares)}.", field="shares"
        )
    xs = tuple(sorted(shares)[:threshold])
    secret = 0
    for x, weight in zip(xs, _lagrange_at_zero(xs), strict=True):
        secret = (secret + shares[x] * weight) % PRIME
    if secret >= 1 << 128:
        raise SecAggAborted(
            f"the shares at indices {list(xs)} do not rebuild a 16-byte secret: some were "
            "altered or belong to another secret.",
            stage="unmask",
        )
    return secret.to_bytes(16, "big")


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``l_j(0) = prod_{m != j} x_m / (x_m - x_j)`` for each ``x_j`` (cached: sets repeat)."""
    weights = []
    for j, x_j in enumerate(xs):
        numerator, denominator = 1, 1
        for m, x_m in enumerate(xs):
            if m != j:
                numerator = numerator * x_m % PRIME
                denominator = denominator * (x_m - x_j) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)
