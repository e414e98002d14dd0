"""Gaussian noise for differential privacy: its scale, and adding it to a sum or a mean.

The Gaussian mechanism on the mean of ``m`` updates each clipped to L2 norm ``C``
adds noise of standard deviation ``z * C / m`` to every coordinate, ``z`` the
noise multiplier (McMahan, Ramage, Talwar, Zhang. Learning Differentially
Private Recurrent Language Models. ICLR 2018. https://arxiv.org/abs/1710.06963).
Randomness comes only from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from fedloom.core import Vector
from fedloom.errors import ConfigError
from fedloom.privacy.clipping import check_clip_norm

__all__ = [
    "add_gaussian_noise",
    "check_noise_multiplier",
    "gaussian_noise_std",
    "noised_mean",
]


def check_noise_multiplier(noise_multiplier: float, name: str = "noise_multiplier") -> float:
    """`noise_multiplier` as a float, if it is a finite number > 0.

    Raises:
        ConfigError: naming `name`, for anything else.
    """
    valid = not isinstance(noise_multiplier, bool) and isinstance(noise_multiplier, numbers.Real)
    if not valid or not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(
            f"{name} must be a finite number > 0, got {noise_multiplier!r}. It is the noise's "
            "standard deviation in units of the clip norm; around 1.0 is common (larger: more "
            "privacy, a smaller epsilon, and a noisier model).",
            field=name,
            value=noise_multiplier,
        )
    return float(noise_multiplier)


def _check_count(num_aggregated: int, name: str) -> int:
    if isinstance(num_aggregated, bool) or not isinstance(num_aggregated, numbers.Integral):
        raise ConfigError(f"{name} must be an int >= 1, got {num_aggregated!r}.", field=name)
    if num_aggregated < 1:
        raise ConfigError(
            f"{name} must be >= 1, got {num_aggregated}: there is no mean of no updates.",
            field=name,
            value=num_aggregated,
        )
    return int(num_aggregated)


def gaussian_noise_std(*, clip_norm: float, noise_multiplier: float, num_aggregated: int) -> float:
    """The noise std for the mean of `num_aggregated` updates clipped to `clip_norm`: ``z*C/m``.

    Raises:
        ConfigError: a clip norm or noise multiplier that is not > 0, or a count < 1.

    Example:
        >>> gaussian_noise_std(clip_norm=2.0, noise_multiplier=1.5, num_aggregated=10)
        0.3
    """
    clip = check_clip_norm(clip_norm)
    z = check_noise_multiplier(noise_multiplier)
    return z * clip / _check_count(num_aggregated, "num_aggregated")


def add_gaussian_noise(vector: Vector, *, std: float, rng: np.random.Generator) -> Vector:
    """`vector` plus independent ``N(0, std^2)`` noise on each coordinate, as a new array.

    The noise is drawn from `rng` in `vector`'s dtype (float32 or float64; other
    dtypes draw float64 and cast), so a seeded generator gives the same noise again.

    Raises:
        ConfigError: `std` is negative or not finite.

    Example:
        >>> noisy = add_gaussian_noise(np.zeros(3), std=0.0, rng=np.random.default_rng(0))
        >>> noisy.tolist()
        [0.0, 0.0, 0.0]
    """
    if (
        isinstance(std, bool)
        or not isinstance(std, numbers.Real)
        or not (math.isfinite(std) and std >= 0)
    ):
        raise ConfigError(f"std must be a finite number >= 0, got {std!r}.", field="std", value=std)
    draw_dtype = vector.dtype if vector.dtype in (np.float32, np.float64) else np.float64
    noise = rng.standard_normal(vector.shape, dtype=draw_dtype)
    noise *= noise.dtype.type(std)
    noise += vector
    return noise.astype(vector.dtype, copy=False)


def noised_mean(
    total: Vector,
    *,
    count: int,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> Vector:
    """The Gaussian mechanism on a mean: ``total / count + N(0, (z * C / count)^2)`` per coordinate.

    `total` is the sum of `count` updates, each already clipped to `clip_norm` (with
    secure aggregation, the unmasked sum). The result is a new array of `total`'s dtype.

    Args:
        total: the sum of the clipped updates.
        count: how many updates the sum holds (``m``); the mean divides by it and the
            noise std is ``z * C / m``.
        clip_norm: the clip norm ``C`` every update was clipped to.
        noise_multiplier: ``z``.
        rng: where the noise comes from.

    Raises:
        ConfigError: a clip norm or noise multiplier that is not > 0, or a count < 1.
    """
    std = gaussian_noise_std(
        clip_norm=clip_norm, noise_multiplier=noise_multiplier, num_aggregated=count
    )
    mean = total / total.dtype.type(count)
    return add_gaussian_noise(mean, std=std, rng=rng)
