"""The mean family: weighted mean (FedAvg) as a streaming fold in O(model) memory.

`WeightedMean.fold` keeps one accumulator of the update's dtype and adds each
arriving update scaled by its weight: for models of at least `_BLAS_MIN`
values BLAS ``axpy`` through SciPy when it is installed (one pass over memory),
otherwise, and for smaller models, a cache-sized chunked NumPy loop (a small
fold then pays neither SciPy's import, a few hundred milliseconds, nor a BLAS
thread pool's wake-ups, which cost more than the fold on a loaded machine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike, NDArray

from fedloom.aggregators.base import Aggregator, Fold
from fedloom.core import Vector
from fedloom.core.weights import DeferredRows, DeferredWeights
from fedloom.errors import AggregationError

__all__ = ["Mean", "WeightedMean"]

_CHUNK = 1 << 15
_BLAS_MIN = 1 << 20
"""Models of fewer values fold with NumPy: BLAS saves microseconds there."""

Axpy = Callable[[Vector, Vector, float], None]


def _numpy_axpy(x: Vector, y: Vector, a: float) -> None:
    scratch = np.empty(min(_CHUNK, y.size), dtype=y.dtype)
    scale = y.dtype.type(a)
    for start in range(0, y.size, _CHUNK):
        stop = min(start + _CHUNK, y.size)
        tmp = scratch[: stop - start]
        np.multiply(x[start:stop], scale, out=tmp)
        np.add(y[start:stop], tmp, out=y[start:stop])


def _blas_axpy(dtype: np.dtype[np.floating], size: int) -> Axpy:
    if size < _BLAS_MIN:
        return _numpy_axpy
    try:
        from scipy.linalg.blas import get_blas_funcs
    except ImportError:
        return _numpy_axpy
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        return _numpy_axpy
    blas = get_blas_funcs("axpy", dtype=dtype)

    def axpy(x: Vector, y: Vector, a: float) -> None:
        out = blas(x, y, a=a)
        if out is not y:  # SciPy copies only for inputs BLAS cannot take in place
            y[...] = out

    return axpy


class _MeanFold:
    """Running sum of ``weight * update``, divided by the total weight at the end."""

    def __init__(self, dim: int, dtype: DTypeLike, *, weighted: bool) -> None:
        self._dtype: np.dtype[np.floating] = np.dtype(dtype)  # type: ignore[assignment]
        self._sum = np.zeros(dim, dtype=self._dtype)
        self._axpy = _blas_axpy(self._dtype, dim)
        self._weighted = weighted
        self._total = 0.0
        self._count = 0
        self._done = False
        self._base: Vector | None = None  # the vector subtracted from add_difference results
        self._base_weight = 0.0
        # deferred results by (block, base): their rows and scales, summed at once in result()
        self._deferred: dict[tuple[int, int], tuple[DeferredRows, Vector, list[int], list[float]]]
        self._deferred = {}

    @property
    def count(self) -> int:
        return self._count

    def add(self, update: Vector, weight: float) -> None:
        if self._done:
            raise AggregationError("this fold's result() was already taken; start a new fold.")
        if update.shape != self._sum.shape:
            raise AggregationError(
                f"an update of shape {update.shape} cannot join a fold of length "
                f"{self._sum.size}; every update must be a 1-D vector of the model's size."
            )
        _check_weight(float(weight))
        scale = float(weight) if self._weighted else 1.0
        self._add_scaled(update, scale)
        self._total += scale
        self._count += 1

    def add_difference(self, new: Vector, base: Vector, weight: float) -> None:
        """Fold in ``new - base`` without materialising the difference.

        The server folds each client's weights minus the same global weights:
        it adds ``weight * new`` (one BLAS pass) and subtracts ``total * base``
        once in `result`, as FedAvg averages weights. A result whose `base` is
        another array is subtracted a cache-sized chunk at a time.
        """
        if self._done:
            raise AggregationError("this fold's result() was already taken; start a new fold.")
        if new.shape != self._sum.shape or base.shape != self._sum.shape:
            raise AggregationError(
                f"vectors of shapes {new.shape} and {base.shape} cannot join a fold of length "
                f"{self._sum.size}; both must be 1-D vectors of the model's size."
            )
        _check_weight(float(weight))
        scale = float(weight) if self._weighted else 1.0
        if self._base is None:
            self._base = base
        if base is self._base:
            self._add_scaled(new, scale)
            self._base_weight += scale
        else:
            scratch = np.empty(min(_CHUNK, new.size), dtype=self._dtype)
            for start in range(0, new.size, _CHUNK):
                stop = min(start + _CHUNK, new.size)
                chunk = scratch[: stop - start]
                np.subtract(new[start:stop], base[start:stop], out=chunk)
                self._add_scaled(chunk, scale, start, stop)
        self._total += scale
        self._count += 1

    def add_deferred(self, new: DeferredWeights, base: Vector, weight: float) -> None:
        """Fold in ``new - base`` where `new` may not be computed yet.

        Results that are rows of one `DeferredRows` block are kept as (row,
        scale) and summed by the block at once in `result` (one product of
        its factors instead of a vector per result); computed ones are folded
        as `add_difference` folds them.
        """
        pending = new.pending
        if pending is None:
            self.add_difference(new.flat, base, weight)
            return
        if self._done:
            raise AggregationError("this fold's result() was already taken; start a new fold.")
        if new.spec.size != self._sum.size or base.shape != self._sum.shape:
            raise AggregationError(
                f"vectors of sizes {new.spec.size} and {base.size} cannot join a fold of length "
                f"{self._sum.size}; both must be 1-D vectors of the model's size."
            )
        _check_weight(float(weight))
        scale = float(weight) if self._weighted else 1.0
        block, row = pending
        entry = self._deferred.setdefault((id(block), id(base)), (block, base, [], []))
        entry[2].append(row)
        entry[3].append(scale)
        self._total += scale
        self._count += 1

    def _add_scaled(
        self, vector: Vector, scale: float, start: int = 0, stop: int | None = None
    ) -> None:
        """``sum[start:stop] += scale * vector`` (a copy-scale for the first result)."""
        target = self._sum[start:stop]
        if self._count == 0:
            np.multiply(vector, self._dtype.type(scale), out=target)
        elif scale:
            self._axpy(vector, target, scale)

    def result(self) -> Vector:
        if self._done:
            return self._sum
        if self._count == 0:
            raise AggregationError("no update was added, so there is nothing to average.")
        if self._total == 0:
            raise AggregationError(
                f"all {self._count} updates have weight 0 (num_examples == 0), so their "
                "weighted mean is undefined. Make clients report how many examples they used."
            )
        if self._base is not None and self._base_weight:
            self._axpy(self._base, self._sum, -self._base_weight)
        for block, base, rows, scales in self._deferred.values():
            summed = block.weighted_difference(rows, scales, base)
            self._sum += summed.astype(self._dtype, copy=False)
        self._deferred.clear()  # the blocks (and what they hold) may go now
        self._sum *= self._dtype.type(1.0 / self._total)
        self._done = True
        return self._sum


def _check_weight(weight: float) -> None:
    if weight < 0 or not np.isfinite(weight):
        raise AggregationError(
            f"update weights must be finite and >= 0, got {weight}. Weights are the "
            "clients' num_examples; check what the client reports."
        )


@dataclass(frozen=True, kw_only=True)
class WeightedMean(Aggregator):
    """FedAvg's rule: ``sum_i n_i * u_i / sum_i n_i`` with ``n_i`` the clients' example counts."""

    def aggregate(self, updates: NDArray[np.floating], weights: NDArray[np.floating]) -> Vector:
        self._require(len(updates))
        for weight in np.asarray(weights, dtype=np.float64):
            _check_weight(float(weight))
        total = float(np.sum(weights, dtype=np.float64))
        if total <= 0:
            raise AggregationError(
                "all updates have weight 0, so their weighted mean is undefined. Make clients "
                "report how many examples they used."
            )
        scaled = np.asarray(weights, dtype=updates.dtype) / updates.dtype.type(total)
        return np.asarray(scaled @ updates, dtype=updates.dtype)

    def fold(self, dim: int, dtype: DTypeLike) -> Fold:
        return _MeanFold(dim, dtype, weighted=True)


@dataclass(frozen=True, kw_only=True)
class Mean(Aggregator):
    """The unweighted mean ``sum_i u_i / k``: every client counts the same."""

    def aggregate(self, updates: NDArray[np.floating], weights: NDArray[np.floating]) -> Vector:
        self._require(len(updates))
        return np.asarray(updates.mean(axis=0, dtype=updates.dtype), dtype=updates.dtype)

    def fold(self, dim: int, dtype: DTypeLike) -> Fold:
        return _MeanFold(dim, dtype, weighted=False)
