"""Clipping an update to an L2 ball, and moving the clip norm towards a target quantile.

Clipping bounds what one client can contribute (the sensitivity of a sum of
updates), which is what calibrates the noise of differential privacy. The
adaptive rule is Andrew, Thakkar, McMahan, Ramaswamy. Differentially Private
Learning with Adaptive Clipping. NeurIPS 2021. https://arxiv.org/abs/1905.03871
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from fedloom.core import Vector
from fedloom.errors import ConfigError

__all__ = ["check_clip_norm", "clip_update", "l2_norm", "next_clip_norm"]


def l2_norm(vector: Vector) -> float:
    """``||vector||_2`` accumulated in float64, without overflow for any finite vector.

    `numpy.einsum` casts chunk by chunk in one pass and runs on the calling thread: no
    float64 copy of the vector, and no wait for BLAS threads on a busy server.

    Example:
        >>> l2_norm(np.array([3.0, 4.0], dtype=np.float32))
        5.0
    """
    with np.errstate(over="ignore", invalid="ignore"):
        squares = float(np.einsum("i,i->", vector, vector, dtype=np.float64))
    if math.isfinite(squares):
        return math.sqrt(squares)
    largest = float(np.max(np.abs(vector)))  # float64 squares overflowed: scale first
    scaled = vector / largest
    return largest * math.sqrt(float(np.einsum("i,i->", scaled, scaled)))


def check_clip_norm(clip_norm: float, name: str = "clip_norm") -> float:
    """`clip_norm` as a float, if it is a finite number > 0.

    Raises:
        ConfigError: naming `name`, for anything else (negative, zero, NaN, a bool, text).
    """
    valid = not isinstance(clip_norm, bool) and isinstance(clip_norm, numbers.Real)
    if not valid or not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(
            f"{name} must be a finite number > 0, got {clip_norm!r}. It bounds the L2 norm of "
            "each update; pick it near the typical norm of honest updates (e.g. their median "
            "in a round without clipping), or let adaptive clipping find it (target_quantile).",
            field=name,
            value=clip_norm,
        )
    return float(clip_norm)


def clip_update(update: Vector, clip_norm: float) -> Vector:
    """`update` scaled down to L2 norm at most `clip_norm`: ``u * min(1, C / ||u||)``.

    Returns a new array of `update`'s dtype; `update` is never modified. The norm is
    computed in float64, so the result's norm exceeds ``clip_norm`` by float rounding
    alone (well under ``clip_norm * 1e-6``, float32 included).

    Args:
        update: a flat float vector (a client's new minus global weights).
        clip_norm: the bound ``C``, > 0.

    Raises:
        ConfigError: `clip_norm` is not a finite number > 0.

    Example:
        >>> clip_update(np.array([3.0, 4.0]), 1.0)
        array([0.6, 0.8])
    """
    bound = check_clip_norm(clip_norm)
    norm = l2_norm(update)
    if norm <= bound:
        return np.array(update, copy=True)
    return update * update.dtype.type(bound / norm)


def next_clip_norm(
    clip_norm: float, *, fraction_within: float, target_quantile: float, learning_rate: float
) -> float:
    """Andrew et al.'s geometric update: ``C * exp(-learning_rate * (b - target_quantile))``.

    ``b`` is the (noised) fraction of updates whose norm was at most ``C``. When more
    updates than the target fit under ``C`` it shrinks, when fewer fit it grows, so
    ``C`` tracks the `target_quantile` of the update norms.

    Example:
        >>> next_clip_norm(1.0, fraction_within=1.0, target_quantile=0.5, learning_rate=0.2)
        0.9048374180359595
    """
    return float(clip_norm * math.exp(-learning_rate * (fraction_within - target_quantile)))
