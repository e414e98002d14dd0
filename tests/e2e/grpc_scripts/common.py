"""Shared by the gRPC deployment scripts and their test: the big model's pattern and digests.

The big model is float32 ``(arange(size) % 1000) + offset``. Its digest is computed in
blocks, so a checker never holds the whole array.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

PERIOD = 1000
_BLOCK = np.tile(np.arange(PERIOD, dtype=np.float32), 4096)  # a multiple of PERIOD values


def pattern(size: int) -> NDArray[np.float32]:
    """float32 ``arange(size) % 1000``, exactly (``arange`` in float32 would round past 2**24)."""
    return np.resize(np.arange(PERIOD, dtype=np.float32), size)


def pattern_sha256(size: int, *, offset: float = 0.0) -> str:
    """sha256 of the bytes of ``pattern(size) + offset``, without building it."""
    block = _BLOCK + np.float32(offset)
    digest = hashlib.sha256()
    full, rest = divmod(size, block.size)
    for _ in range(full):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


def flat_sha256(flat: NDArray[np.floating]) -> str:
    """sha256 of a flat vector's bytes (no copy when it is contiguous)."""
    return hashlib.sha256(np.ascontiguousarray(flat)).hexdigest()
