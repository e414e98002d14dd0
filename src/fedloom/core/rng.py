"""Seeded randomness: every random choice derives from the run seed and named keys.

There is no global generator. `derive_seed(seed, "sample", 3)` always gives the
same integer for the same inputs, on every platform and in every process
(strings are hashed with CRC-32, not Python's salted ``hash``).
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["derive_seed", "generator"]


def _key(part: int | str) -> int:
    if isinstance(part, int):  # zigzag: distinct for every int, negative ones included
        return 2 * part if part >= 0 else -2 * part - 1
    return zlib.crc32(part.encode())


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 32-bit seed derived from `seed` and `keys`, independent for each distinct key path."""
    sequence = np.random.SeedSequence(seed, spawn_key=tuple(_key(k) for k in keys))
    return int(sequence.generate_state(1)[0])


def generator(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy Generator for `seed` and `keys` (see `derive_seed`)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(map(_key, keys))))
