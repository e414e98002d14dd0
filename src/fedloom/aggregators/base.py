"""The aggregator contract: stacked updates in, one update out; optionally streaming.

An aggregator combines ``k`` client updates (a ``(k, d)`` array) and their
weights (``(k,)``, usually example counts) into one ``(d,)`` update of the
same dtype, and never modifies its inputs. The orchestrator always goes through
`Aggregator.fold`, which returns a `Fold` that takes one update at a time: for
sum-decomposable rules (the mean family) it holds O(model) memory, for robust
rules that need every update at once the default fold buffers them and calls
`Aggregator.aggregate` at the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import numpy as np
from numpy.typing import DTypeLike, NDArray

from fedloom.core import Vector
from fedloom.errors import NotEnoughResults

__all__ = ["Aggregator", "BufferedFold", "Fold"]


class Fold(Protocol):
    """One round's aggregation in progress: `add` each update, then `result` once."""

    @property
    def count(self) -> int:
        """How many updates were added."""
        ...

    def add(self, update: Vector, weight: float) -> None:
        """Fold in one update. The fold may keep a reference; do not modify it afterwards."""
        ...

    def result(self) -> Vector:
        """The combined update."""
        ...


class Aggregator(ABC):
    """Base class for aggregation rules: subclass it and implement `aggregate`.

    Subclasses are frozen dataclasses of hyperparameters; they hold no state
    between rounds.
    """

    @property
    def min_results(self) -> int:
        """The fewest updates this rule can combine."""
        return 1

    @abstractmethod
    def aggregate(self, updates: NDArray[np.floating], weights: NDArray[np.floating]) -> Vector:
        """Combine a ``(k, d)`` stack of updates with ``(k,)`` weights into a ``(d,)`` update."""

    def fold(self, dim: int, dtype: DTypeLike) -> Fold:
        """Start folding updates of length `dim`; the default buffers them all."""
        return BufferedFold(self, dim, dtype)

    def _require(self, received: int) -> None:
        if received < self.min_results:
            raise NotEnoughResults(
                received=received,
                required=self.min_results,
                detail=f"{type(self).__name__} needs at least {self.min_results} updates.",
            )


class BufferedFold:
    """A fold for rules that need every update at once: O(k * d) memory, by necessity."""

    def __init__(self, aggregator: Aggregator, dim: int, dtype: DTypeLike) -> None:
        self._aggregator = aggregator
        self._dim = dim
        self._dtype = np.dtype(dtype)
        self._updates: list[Vector] = []
        self._weights: list[float] = []

    @property
    def count(self) -> int:
        return len(self._updates)

    def add(self, update: Vector, weight: float) -> None:
        self._updates.append(update)
        self._weights.append(weight)

    def result(self) -> Vector:
        self._aggregator._require(self.count)
        stacked = np.stack(self._updates).astype(self._dtype, copy=False)
        weights = np.asarray(self._weights, dtype=self._dtype)
        return self._aggregator.aggregate(stacked, weights)
