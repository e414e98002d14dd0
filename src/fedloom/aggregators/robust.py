"""Byzantine-robust rules over stacked updates: median, trimmed mean, Krum, Multi-Krum, Bulyan.

These rules compare or sort every update, so the server buffers a round's updates (the
default `Aggregator.fold`). They ignore the weights: one client, one vote, as in their
papers; weighting by the example counts clients report would let one Byzantine client
claim a huge count and outvote the rest. Results are deterministic functions of the
*set* of updates: the order in which clients answered never changes the output.

- Yin, Chen, Ramchandran, Bartlett. Byzantine-Robust Distributed Learning: Towards
  Optimal Statistical Rates. ICML 2018. https://arxiv.org/abs/1803.01498
- Blanchard, El Mhamdi, Guerraoui, Stainer. Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent. NeurIPS 2017. https://papers.nips.cc/paper/6617
- El Mhamdi, Guerraoui, Rouault. The Hidden Vulnerability of Distributed Learning in
  Byzantium. ICML 2018. https://arxiv.org/abs/1802.07927
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from fedloom.aggregators.base import Aggregator
from fedloom.core import Vector
from fedloom.errors import ConfigError

__all__ = ["Bulyan", "Krum", "Median", "MultiKrum", "TrimmedMean"]

Updates = NDArray[np.floating]
Index = NDArray[np.intp]

_SORT_COLUMNS = 1 << 12
"""Coordinates sorted per block: the block's k values per coordinate stay in cache."""

_MAX_KEY_BYTES = np.iinfo(np.int32).max
"""The longest row NumPy can view as one bytes item (a void dtype of that size)."""

_GRAM_COLUMNS = 1 << 14
"""Coordinates per float64 block of the Gram matrix: bounds the float64 copy to k * 128 KiB."""


# --- coordinate-wise rules --------------------------------------------------------------


def _trimmed_mean(updates: Updates, trim: int) -> Vector:
    """Per coordinate: sort the k values, drop `trim` from each end, average the rest in float64."""
    k, dim = updates.shape
    out = np.empty(dim, dtype=updates.dtype)
    for start in range(0, dim, _SORT_COLUMNS):
        stop = min(start + _SORT_COLUMNS, dim)
        values = np.array(updates[:, start:stop].T, order="C")  # a coordinate's k values in a row
        values.sort(axis=1)
        out[start:stop] = values[:, trim : k - trim].sum(axis=1, dtype=np.float64) / (k - 2 * trim)
    return out


@dataclass(frozen=True, kw_only=True)
class Median(Aggregator):
    """Coordinate-wise median (Yin et al. 2018, https://arxiv.org/abs/1803.01498).

    ::

        result[j] = median(u_1[j], ..., u_k[j])      # k even: mean of the two middle values

    Unweighted: the weights are ignored. With fewer than k/2 Byzantine updates every
    coordinate stays within the honest updates' range. The two middle values are averaged
    in float64 and the result is cast back to the updates' dtype.

    Example:
        >>> Median().aggregate(np.array([[1.0, 5.0], [3.0, 0.0], [2.0, 9.0]]), np.ones(3))
        array([2., 5.])
    """

    def aggregate(self, updates: Updates, weights: Updates) -> Vector:
        self._require(len(updates))
        return _trimmed_mean(updates, (len(updates) - 1) // 2)


@dataclass(frozen=True, kw_only=True)
class TrimmedMean(Aggregator):
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018, https://arxiv.org/abs/1803.01498).

    ::

        b = floor(beta * k)
        result[j] = mean of the k - 2b middle values of sorted(u_1[j], ..., u_k[j])

    Unweighted: the weights are ignored. With at most ``b`` Byzantine updates every
    coordinate stays within the honest updates' range. The paper fixes ``beta * k`` as a
    whole number; fedloom takes the floor for the k updates that arrived, computed on
    beta's decimal value (``beta = 0.29`` over 100 updates trims 29, although
    ``0.29 * 100 == 28.999999999999996`` in binary). Sums run in float64.

    Args:
        beta: the fraction trimmed from each end, in ``[0, 0.5)``; 0 is the plain mean.

    Example:
        >>> rows = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
        >>> TrimmedMean(beta=0.2).aggregate(rows, np.ones(5))  # drops 1 and 100
        array([3.])
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real):
            raise ConfigError(
                f"beta must be a number in [0, 0.5), got {self.beta!r}.",
                field="beta",
                value=self.beta,
            )
        if not 0 <= self.beta < 0.5:
            raise ConfigError(
                f"beta must be in [0, 0.5), got {self.beta}. The trimmed mean drops "
                "floor(beta * k) of the k values at each end of every coordinate, so beta >= "
                "0.5 leaves nothing to average. Pass the fraction of Byzantine clients to "
                "tolerate (e.g. 0.1), or use Median() for the most trimming.",
                field="beta",
                value=self.beta,
            )

    def trimmed(self, num_updates: int) -> int:
        """How many values each end of a coordinate loses when `num_updates` arrived."""
        return math.floor(Fraction(repr(float(self.beta))) * num_updates)

    def aggregate(self, updates: Updates, weights: Updates) -> Vector:
        self._require(len(updates))
        return _trimmed_mean(updates, self.trimmed(len(updates)))


# --- Krum family ------------------------------------------------------------------------


def _check_count(name: str, value: object, *, minimum: int, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(
            f"{name} must be an integer >= {minimum} ({meaning}), got {value!r}.",
            field=name,
            value=value,
        )


def _check_f(f: object, rule: str, bound: str) -> None:
    _check_count(
        "f",
        f,
        minimum=0,
        meaning=f"how many Byzantine clients {rule} tolerates; it needs {bound} updates",
    )


def _canonical_order(updates: Updates) -> Index:
    """The rows sorted by their bytes: Krum-type rules work in this order and break ties by it,
    so their result depends on the set of updates, never on the order they arrived in.

    NumPy compares rows of up to 2 GiB as raw bytes without copying them; longer rows are
    ordered by a BLAKE2b digest of their bytes instead (equally canonical, slower).
    """
    k, dim = updates.shape
    if k < 2 or dim == 0:
        return np.arange(k)
    rows = np.ascontiguousarray(updates)
    row_bytes = dim * rows.itemsize
    if row_bytes <= _MAX_KEY_BYTES:
        return np.argsort(rows.view(np.dtype((np.void, row_bytes))).ravel(), kind="stable")
    digests = [hashlib.blake2b(row, digest_size=16).digest() for row in rows]
    return np.array(sorted(range(k), key=digests.__getitem__), dtype=np.intp)


def _squared_distances(updates: Updates, order: Index) -> NDArray[np.float64]:
    """``D[a, b] = ||u_order[a] - u_order[b]||^2`` in float64 via the Gram matrix.

    ``||x||^2 + ||y||^2 - 2 x.y``, accumulated over blocks of coordinates so only one
    ``(k, block)`` float64 copy exists at a time. Overflow (float64 updates beyond 1e150)
    counts as infinitely far, so such an update is never chosen.
    """
    k, dim = updates.shape
    gram = np.zeros((k, k))
    for start in range(0, dim, _GRAM_COLUMNS):
        block = updates[order, start : start + _GRAM_COLUMNS].astype(np.float64)
        gram += block @ block.T
    norms = np.diag(gram)
    with np.errstate(invalid="ignore", over="ignore"):
        distances = norms[:, None] + norms[None, :] - 2.0 * gram
    distances = np.nan_to_num(distances, nan=np.inf, posinf=np.inf)
    np.maximum(distances, 0.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


def _krum_scores(distances: NDArray[np.float64], neighbours: int) -> NDArray[np.float64]:
    """Each row's sum of its `neighbours` smallest distances to the other rows."""
    k = len(distances)
    neighbours = min(neighbours, k - 1)
    if neighbours <= 0:
        return np.zeros(k)
    others = distances + np.diag(np.full(k, np.inf))
    scores: NDArray[np.float64] = np.sort(others, axis=1)[:, :neighbours].sum(axis=1)
    return scores


def _mean_of_rows(updates: Updates, rows: Index) -> Vector:
    """The plain mean of ``updates[rows]``, summed in float64 in the given order."""
    total = np.zeros(updates.shape[1])
    for row in rows:
        np.add(total, updates[row], out=total)
    total /= len(rows)
    return total.astype(updates.dtype)


@dataclass(frozen=True, kw_only=True)
class Krum(Aggregator):
    """Krum (Blanchard et al. 2017): the update closest to its n - f - 2 nearest neighbours.

    Paper: https://papers.nips.cc/paper/6617

    ::

        n updates, up to f Byzantine, n > 2f + 2
        score(i) = sum of ||u_i - u_j||^2 over the n - f - 2 updates u_j (j != i) closest to u_i
        result   = a copy of u_i* with i* = argmin_i score(i)

    Unweighted: the weights are ignored. Departures from the paper, none of which changes
    a result in exact arithmetic: distances are computed in float64 from the Gram matrix
    (peers compute them in the updates' precision); ties between equal scores go to the
    update whose bytes sort first, so the result does not depend on the order of clients.

    Args:
        f: how many Byzantine updates to tolerate; a round needs at least ``2f + 3``.

    Example:
        >>> rows = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
        >>> Krum(f=0).aggregate(rows, np.ones(4))
        array([0., 0.])
    """

    f: int

    def __post_init__(self) -> None:
        _check_f(self.f, "Krum", "more than 2f + 2")

    @property
    def min_results(self) -> int:
        return 2 * self.f + 3

    def aggregate(self, updates: Updates, weights: Updates) -> Vector:
        self._require(len(updates))
        order = _canonical_order(updates)
        scores = _krum_scores(_squared_distances(updates, order), len(updates) - self.f - 2)
        return np.array(updates[order[np.argmin(scores)]], dtype=updates.dtype)


@dataclass(frozen=True, kw_only=True)
class MultiKrum(Aggregator):
    """Multi-Krum (Blanchard et al. 2017): the plain mean of the m best-scoring updates.

    Paper: https://papers.nips.cc/paper/6617

    ::

        score(i) as in Krum (n - f - 2 closest neighbours, n > 2f + 2)
        S      = the m updates with the lowest scores          (m defaults to n - f)
        result = (1 / m) * sum_{i in S} u_i

    Unweighted, as in the paper: the weights are ignored (peers average the selected
    updates weighted by example counts). Distances are computed in float64, the mean is
    summed in float64, and ties between equal scores go to the update whose bytes sort
    first, so the result does not depend on the order of clients. A round needs at least
    ``max(2f + 3, m)`` updates; ``m=1`` is Krum.

    Args:
        f: how many Byzantine updates to tolerate.
        m: how many updates to average; None means ``n - f`` for the n that arrived.

    Example:
        >>> rows = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
        >>> MultiKrum(f=0, m=3).aggregate(rows, np.ones(4))  # [9, 9] scores worst
        array([0.66666667, 0.66666667])
    """

    f: int
    m: int | None = None

    def __post_init__(self) -> None:
        _check_f(self.f, "MultiKrum", "more than 2f + 2")
        if self.m is not None:
            _check_count("m", self.m, minimum=1, meaning="how many updates to average")

    @property
    def min_results(self) -> int:
        return max(2 * self.f + 3, self.m or 0)

    def aggregate(self, updates: Updates, weights: Updates) -> Vector:
        self._require(len(updates))
        n = len(updates)
        m = n - self.f if self.m is None else self.m
        order = _canonical_order(updates)
        scores = _krum_scores(_squared_distances(updates, order), n - self.f - 2)
        chosen = np.sort(np.argsort(scores, kind="stable")[:m])
        return _mean_of_rows(updates, order[chosen])


def _mean_closest_to_median(updates: Updates, rows: Index, keep: int) -> Vector:
    """Per coordinate of ``updates[rows]``: the mean of the `keep` values closest to the median.

    In a sorted coordinate those values form a window ``values[s : s + keep]``. Sliding it
    one step right swaps ``values[s]`` for ``values[s + keep]``, which brings it closer to
    the median exactly when ``values[s] + values[s + keep] < 2 * median``; that sum grows
    with s, so s is the number of positions where it holds (on a tie the smaller value stays).
    """
    theta, dim = len(rows), updates.shape[1]
    drop = theta - keep
    offsets = np.arange(keep)
    out = np.empty(dim, dtype=updates.dtype)
    for start in range(0, dim, _SORT_COLUMNS):
        stop = min(start + _SORT_COLUMNS, dim)
        values = np.array(updates[rows, start:stop].T, order="C")
        values.sort(axis=1)
        twice_median = values[:, (theta - 1) // 2] + values[:, theta // 2].astype(np.float64)
        pair_sums = values[:, :drop] + values[:, keep:].astype(np.float64)
        first = np.count_nonzero(pair_sums < twice_median[:, None], axis=1)
        window = np.take_along_axis(values, first[:, None] + offsets, axis=1)
        out[start:stop] = window.sum(axis=1, dtype=np.float64) / keep
    return out


@dataclass(frozen=True, kw_only=True)
class Bulyan(Aggregator):
    """Bulyan over Krum (El Mhamdi et al. 2018, https://arxiv.org/abs/1802.07927).

    ::

        n updates, up to f Byzantine, n >= 4f + 3
        R = all updates, S = {}
        repeat theta = n - 2f times:                  # selection by recursive Krum
            i* = Krum(R, f)   (scores over the |R| - f - 2 closest neighbours within R)
            move u_i* from R to S
        beta = theta - 2f
        result[j] = mean of the beta values of {u[j] : u in S} closest to their median

    Unweighted: the weights are ignored. Departures from the paper: the pairwise distances
    are computed once, in float64, and reused by every Krum step (the paper recomputes
    them; the values are the same). The last steps run Krum on fewer than ``2f + 3``
    updates, where ``|R| - f - 2`` drops below 1; the paper leaves that case open and
    fedloom scores with the single closest neighbour. Ties between equal scores go to the
    update whose bytes sort first, and between two values equally close to the median to
    the smaller, so the result does not depend on the order of clients. Means are summed in
    float64.

    Args:
        f: how many Byzantine updates to tolerate; a round needs at least ``4f + 3``.

    Example:
        >>> rows = np.array([[1.0], [2.0], [3.0], [4.0], [7.0], [9.0], [90.0]])
        >>> Bulyan(f=1).aggregate(rows, np.ones(7))  # the median of all seven is 4
        array([3.])
    """

    f: int

    def __post_init__(self) -> None:
        _check_f(self.f, "Bulyan", "at least 4f + 3")

    @property
    def min_results(self) -> int:
        return 4 * self.f + 3

    def aggregate(self, updates: Updates, weights: Updates) -> Vector:
        self._require(len(updates))
        theta = len(updates) - 2 * self.f
        order = _canonical_order(updates)
        distances = _squared_distances(updates, order)
        pool = list(range(len(updates)))
        chosen: list[int] = []
        for _ in range(theta):
            within = distances[np.ix_(pool, pool)]
            scores = _krum_scores(within, max(1, len(pool) - self.f - 2))
            chosen.append(pool.pop(int(np.argmin(scores))))
        return _mean_closest_to_median(updates, order[np.sort(chosen)], theta - 2 * self.f)
