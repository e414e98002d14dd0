"""Norm-bounded mean: clip each update to an L2 ball, then FedAvg's weighted mean, streaming.

Sun, Kairouz, Suresh, McMahan. Can You Really Backdoor Federated Learning? 2019.
https://arxiv.org/abs/1911.07963 (section "norm thresholding of updates").
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike, NDArray

from fedloom.aggregators.base import Aggregator, Fold
from fedloom.aggregators.mean import _MeanFold
from fedloom.core import Vector
from fedloom.errors import ConfigError
from fedloom.privacy.clipping import l2_norm

__all__ = ["ClippedMean"]


class _ClippedMeanFold:
    """Clips each update as it arrives and hands it to the weighted-mean fold: O(model) memory."""

    def __init__(self, clip_norm: float, dim: int, dtype: DTypeLike) -> None:
        self._clip_norm = clip_norm
        self._mean = _MeanFold(dim, dtype, weighted=True)
        self._scratch = np.empty(dim, dtype=dtype)

    @property
    def count(self) -> int:
        return self._mean.count

    def add(self, update: Vector, weight: float) -> None:
        norm = l2_norm(update)
        if norm > self._clip_norm:
            # _MeanFold.add folds the update into its sum at once and keeps no reference,
            # so one scratch buffer serves every clipped update of the round.
            np.multiply(update, self._scratch.dtype.type(self._clip_norm / norm), out=self._scratch)
            update = self._scratch
        self._mean.add(update, weight)

    def result(self) -> Vector:
        return self._mean.result()


@dataclass(frozen=True, kw_only=True)
class ClippedMean(Aggregator):
    """Norm-bounded mean (Sun et al. 2019, https://arxiv.org/abs/1911.07963).

    ::

        c_i    = u_i * min(1, clip_norm / ||u_i||_2)        # = u_i / max(1, ||u_i|| / M)
        result = sum_i n_i * c_i / sum_i n_i                # n_i: the clients' example counts

    Every clipped update, and so the result, has norm at most ``clip_norm``. Sum-decomposable:
    `fold` clips each update as it arrives and keeps one running sum, like `WeightedMean`.
    No departure from the paper; norms are accumulated in float64, and a zero update
    passes unchanged.

    Args:
        clip_norm: the L2 bound ``M`` on each update, > 0.

    Example:
        >>> rows = np.array([[3.0, 4.0], [0.0, 0.5]])  # norms 5 and 0.5
        >>> ClippedMean(clip_norm=1.0).aggregate(rows, np.array([1.0, 1.0]))
        array([0.3 , 0.65])
    """

    clip_norm: float

    def __post_init__(self) -> None:
        valid = not isinstance(self.clip_norm, bool) and isinstance(self.clip_norm, numbers.Real)
        if not valid or not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(
                f"clip_norm must be a finite number > 0, got {self.clip_norm!r}. It bounds the "
                "L2 norm of each update; pick it near the typical norm of honest updates "
                "(e.g. their median from an unclipped round).",
                field="clip_norm",
                value=self.clip_norm,
            )

    def aggregate(self, updates: NDArray[np.floating], weights: NDArray[np.floating]) -> Vector:
        self._require(len(updates))
        fold = self.fold(updates.shape[1], updates.dtype)
        for update, weight in zip(updates, weights, strict=True):
            fold.add(update, float(weight))
        return fold.result()

    def fold(self, dim: int, dtype: DTypeLike) -> Fold:
        return _ClippedMeanFold(float(self.clip_norm), dim, dtype)
