"""Quantizing updates to integers modulo ``2^k`` and back, for secure aggregation.

A coordinate ``x`` is clipped to ``[-c, c]`` and mapped to ``(x + c) / step`` with
``step = 2c / L`` and ``L = 2^bits - 1``, then rounded to an integer in ``[0, L]``:
stochastically (up with probability equal to the fraction, so ``E[q] = (x + c) / step``,
unbiased) or to the nearest integer. Dequantizing ``q`` gives ``q * step - c``.

Error bound, per coordinate, after clipping to ``[-c, c]``: nearest rounding is off by
at most ``step / 2``; stochastic rounding by less than ``step`` (and unbiased). A
weighted mean of dequantized values is a convex combination, so its error has the same
bound; a sum of ``m`` values is off by at most ``m`` times it. Coordinates outside
``[-c, c]`` are clipped first: choose ``c`` above the largest update coordinate.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedloom.core import Vector

__all__ = ["dequantize_sum", "quantization_error_bound", "quantize"]

UInts = NDArray[np.uint64]


def quantize(
    vector: Vector, *, clipping_range: float, bits: int, rng: np.random.Generator | None
) -> UInts:
    """`vector` clipped to ``[-c, c]`` and quantized to integers in ``[0, 2^bits - 1]``.

    Args:
        vector: the float values.
        clipping_range: ``c``.
        bits: the integers' width.
        rng: stochastic rounding draws from it; None rounds to the nearest integer.

    Example:
        >>> quantize(np.array([-1.0, 0.0, 1.0, 5.0]), clipping_range=1.0, bits=2, rng=None)
        array([0, 2, 3, 3], dtype=uint64)
    """
    levels = float((1 << bits) - 1)
    scaled = np.clip(np.asarray(vector, dtype=np.float64), -clipping_range, clipping_range)
    scaled += clipping_range
    scaled *= levels / (2.0 * clipping_range)
    if rng is None:
        np.rint(scaled, out=scaled)
    else:
        scaled += rng.random(scaled.shape)
        np.floor(scaled, out=scaled)
    np.clip(scaled, 0.0, levels, out=scaled)
    return scaled.astype(np.uint64)


def dequantize_sum(
    total: UInts, *, total_weight: int, clipping_range: float, bits: int
) -> NDArray[np.float64]:
    """``sum_i w_i x_i`` from ``total = sum_i w_i q(x_i)`` and ``total_weight = sum_i w_i``.

    Each ``q * step - c`` undoes one quantization, so the weighted sum of them is
    ``step * total - c * total_weight``.

    Example:
        >>> q = quantize(np.array([0.5, -0.5]), clipping_range=1.0, bits=8, rng=None)
        >>> dequantize_sum(3 * q, total_weight=3, clipping_range=1.0, bits=8).round(2)
        array([ 1.5, -1.5])
    """
    step = 2.0 * clipping_range / float((1 << bits) - 1)
    result = total.astype(np.float64)
    result *= step
    result -= clipping_range * float(total_weight)
    return result


def quantization_error_bound(*, clipping_range: float, bits: int, stochastic: bool) -> float:
    """The largest error of one dequantized coordinate (and of any weighted mean of them).

    Example:
        >>> quantization_error_bound(clipping_range=1.0, bits=1, stochastic=False)
        1.0
    """
    step = 2.0 * clipping_range / float((1 << bits) - 1)
    return step if stochastic else step / 2.0
