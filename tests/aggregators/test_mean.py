"""The mean family (WeightedMean, Mean), batch and streaming, and the buffered default fold."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from fedloom.aggregators import (
    AGGREGATORS,
    Aggregator,
    BufferedFold,
    Mean,
    WeightedMean,
)
from fedloom.core import VectorSpec
from fedloom.core.weights import DeferredWeights
from fedloom.errors import AggregationError, NotEnoughResults
from generators import FAST, finite_vectors, positive_weights, stacks, stacks_with_weights

Array = NDArray[np.floating]
Path = Literal["batch", "fold"]

MEAN_FAMILY: list[Aggregator] = [WeightedMean(), Mean()]
PATHS: list[Path] = ["batch", "fold"]


def _combine(aggregator: Aggregator, stack: Array, weights: Array, path: Path) -> Array:
    """Run `aggregator` on the stack either at once or one update at a time."""
    if path == "batch":
        return aggregator.aggregate(stack, weights)
    fold = aggregator.fold(stack.shape[1], stack.dtype)
    for update, weight in zip(stack, weights, strict=True):
        fold.add(update, float(weight))
    return fold.result()


def _tolerance(dtype: np.dtype, magnitude: float, num_updates: int) -> float:
    """Absolute rounding budget of a weighted mean of `num_updates` values up to `magnitude`.

    Each of the k products and k sums (and the final scale) rounds by at most
    eps/2 relative to the largest partial result, which is at most `magnitude`
    after normalising by the total weight; 4 * (k + 2) * eps leaves ample slack.
    """
    eps = float(np.finfo(dtype).eps)
    return 4 * (num_updates + 2) * eps * max(1.0, magnitude)


def _assert_close(actual: Array, expected: Array, *, magnitude: float, num_updates: int) -> None:
    atol = _tolerance(actual.dtype, magnitude, num_updates)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


# --- registry --------------------------------------------------------------------------


def test_aggregators_registry_names_the_mean_family() -> None:
    assert AGGREGATORS["weighted_mean"] is WeightedMean
    assert AGGREGATORS["mean"] is Mean


REQUIRED = {
    "krum": {"f": 1},
    "multikrum": {"f": 1},
    "bulyan": {"f": 1},
    "clipped_mean": {"clip_norm": 1.0},
}


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_aggregators_registry_builds_each_rule_from_its_parameters(name: str) -> None:
    aggregator = AGGREGATORS[name](**REQUIRED.get(name, {}))

    assert isinstance(aggregator, Aggregator)
    assert aggregator.min_results >= 1


# --- hand-computed examples ------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_weighted_mean_of_two_clients(path: Path) -> None:
    stack = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    weights = np.array([1.0, 3.0])

    result = _combine(WeightedMean(), stack, weights, path)

    # (1 * [1, 2, 3] + 3 * [3, 2, 1]) / (1 + 3) = [10, 8, 6] / 4 = [2.5, 2.0, 1.5]
    np.testing.assert_array_equal(result, [2.5, 2.0, 1.5])


@pytest.mark.parametrize("path", PATHS)
def test_weighted_mean_of_three_clients(path: Path) -> None:
    stack = np.array([[0.0, 4.0, 8.0], [2.0, 2.0, 2.0], [4.0, 0.0, -4.0]])
    weights = np.array([1.0, 2.0, 1.0])

    result = _combine(WeightedMean(), stack, weights, path)

    # 1 * [0, 4, 8] + 2 * [2, 2, 2] + 1 * [4, 0, -4] = [8, 8, 8]; / (1 + 2 + 1) = [2, 2, 2]
    np.testing.assert_array_equal(result, [2.0, 2.0, 2.0])


@pytest.mark.parametrize("path", PATHS)
def test_mean_of_three_clients_ignores_weights(path: Path) -> None:
    stack = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 8.0, 5.0]])
    weights = np.array([1.0, 100.0, 5.0])

    result = _combine(Mean(), stack, weights, path)

    # ([1, 2, 3] + [3, 2, 1] + [2, 8, 5]) / 3 = [6, 12, 9] / 3 = [2, 4, 3]; weights play no part.
    np.testing.assert_array_equal(result, [2.0, 4.0, 3.0])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("zero_first", [True, False])
def test_weighted_mean_ignores_zero_weight_clients(path: Path, zero_first: bool) -> None:
    honest, ignored = [1.0, 2.0, 3.0], [100.0, -100.0, 100.0]
    stack = np.array([ignored, honest] if zero_first else [honest, ignored])
    weights = np.array([0.0, 2.0] if zero_first else [2.0, 0.0])

    result = _combine(WeightedMean(), stack, weights, path)

    # (2 * [1, 2, 3] + 0 * [100, -100, 100]) / (2 + 0) = [1, 2, 3]
    np.testing.assert_array_equal(result, honest)


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_weighted_mean_rejects_all_zero_weights(path: Path) -> None:
    stack = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    weights = np.array([0.0, 0.0])

    with pytest.raises(AggregationError, match="have weight 0") as info:
        _combine(WeightedMean(), stack, weights, path)

    assert "weighted mean is undefined" in str(info.value)
    assert "report how many examples they used" in str(info.value)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("bad", "shown"), [(-1.0, "-1"), (np.nan, "nan"), (np.inf, "inf")])
def test_weighted_mean_rejects_negative_or_non_finite_weights(
    path: Path, bad: float, shown: str
) -> None:
    """Both paths reject what the streaming fold rejects (a weight is a num_examples)."""
    stack = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    weights = np.array([2.0, bad])

    with pytest.raises(AggregationError, match=f"must be finite and >= 0, got {shown}"):
        _combine(WeightedMean(), stack, weights, path)


@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
def test_mean_family_fold_without_updates_raises(aggregator: Aggregator) -> None:
    fold = aggregator.fold(3, np.float64)

    with pytest.raises(AggregationError, match="no update was added"):
        fold.result()

    assert fold.count == 0


@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
def test_mean_family_aggregate_of_no_updates_raises_not_enough_results(
    aggregator: Aggregator,
) -> None:
    stack = np.empty((0, 3))
    weights = np.empty(0)

    with pytest.raises(NotEnoughResults, match="at least 1 result, got 0") as info:
        aggregator.aggregate(stack, weights)

    assert (info.value.received, info.value.required) == (0, 1)
    assert f"{type(aggregator).__name__} needs at least 1 updates" in str(info.value)


# --- streaming equals batch ------------------------------------------------------------


@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@FAST
@given(case=stacks_with_weights())
def test_mean_family_fold_equals_aggregate(
    aggregator: Aggregator, case: tuple[Array, Array]
) -> None:
    stack, weights = case

    streamed = _combine(aggregator, stack, weights, "fold")
    batched = _combine(aggregator, stack, weights, "batch")

    _assert_close(streamed, batched, magnitude=float(np.abs(stack).max()), num_updates=len(stack))


def test_mean_family_fold_counts_updates() -> None:
    fold = WeightedMean().fold(3, np.float64)

    fold.add(np.ones(3), 1.0)
    fold.add(np.ones(3), 0.0)

    assert fold.count == 2


@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [100_003, 2**20 + 1699])
def test_mean_family_fold_matches_numpy_on_a_long_vector(
    aggregator: Aggregator, dtype: type[np.floating], size: int
) -> None:
    """3 * 2**15 + 1699 values: several whole chunks and a ragged last one; or 2**20 + 1699.

    Below 2**20 values the fold takes the chunked NumPy loop; from there float32/64
    take BLAS (float16 has no BLAS axpy: the NumPy loop again).
    """
    rng = np.random.default_rng(20240521)
    stack = rng.uniform(-1.0, 1.0, size=(3, size)).astype(dtype)
    weights = np.array([1.0, 2.0, 3.0])
    expected = np.average(
        stack.astype(np.float64),
        axis=0,
        weights=weights if isinstance(aggregator, WeightedMean) else None,
    )

    result = _combine(aggregator, stack, weights, "fold")

    assert result.dtype == dtype
    assert result.shape == (size,)
    _assert_close(result, expected.astype(dtype), magnitude=1.0, num_updates=3)


# --- properties ------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@FAST
@given(case=stacks_with_weights(), data=st.data())
def test_mean_family_is_permutation_invariant(
    aggregator: Aggregator, path: Path, case: tuple[Array, Array], data: st.DataObject
) -> None:
    stack, weights = case
    order = np.array(data.draw(st.permutations(range(len(stack)))), dtype=np.intp)

    original = _combine(aggregator, stack, weights, path)
    permuted = _combine(aggregator, stack[order], weights[order], path)

    _assert_close(permuted, original, magnitude=float(np.abs(stack).max()), num_updates=len(stack))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@FAST
@given(case=stacks_with_weights())
def test_mean_family_preserves_shape_and_dtype(
    aggregator: Aggregator, path: Path, case: tuple[Array, Array]
) -> None:
    stack, weights = case

    result = _combine(aggregator, stack, weights, path)

    assert result.shape == (stack.shape[1],)
    assert result.dtype == stack.dtype


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@FAST
@given(data=st.data(), k=st.integers(1, 6))
def test_mean_family_of_identical_updates_is_that_update(
    aggregator: Aggregator, path: Path, data: st.DataObject, k: int
) -> None:
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    update = data.draw(finite_vectors(data.draw(st.integers(1, 16)), dtype=dtype))
    stack = np.tile(update, (k, 1))
    weights = data.draw(positive_weights(k))

    result = _combine(aggregator, stack, weights, path)

    _assert_close(result, update, magnitude=float(np.abs(update).max()), num_updates=k)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@FAST
@given(case=stacks_with_weights(), data=st.data())
def test_mean_family_is_translation_equivariant(
    aggregator: Aggregator, path: Path, case: tuple[Array, Array], data: st.DataObject
) -> None:
    stack, weights = case
    shift = data.draw(finite_vectors(stack.shape[1], dtype=stack.dtype))

    shifted = _combine(aggregator, stack + shift, weights, path)
    expected = _combine(aggregator, stack, weights, path) + shift

    magnitude = float(np.abs(stack).max() + np.abs(shift).max())
    _assert_close(shifted, expected, magnitude=magnitude, num_updates=len(stack))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@FAST
@given(case=stacks_with_weights(), scale=st.floats(min_value=1e-2, max_value=1e2))
def test_mean_family_is_invariant_to_scaling_all_weights(
    aggregator: Aggregator, path: Path, case: tuple[Array, Array], scale: float
) -> None:
    stack, weights = case

    scaled = _combine(aggregator, stack, weights * scale, path)
    original = _combine(aggregator, stack, weights, path)

    _assert_close(scaled, original, magnitude=float(np.abs(stack).max()), num_updates=len(stack))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@FAST
@given(case=stacks_with_weights())
def test_mean_family_stays_within_the_coordinate_range(
    aggregator: Aggregator, path: Path, case: tuple[Array, Array]
) -> None:
    stack, weights = case

    result = _combine(aggregator, stack, weights, path)

    slack = _tolerance(stack.dtype, float(np.abs(stack).max()), len(stack))
    assert np.all(result >= stack.min(axis=0) - slack)
    assert np.all(result <= stack.max(axis=0) + slack)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=repr)
@FAST
@given(case=stacks_with_weights())
def test_mean_family_leaves_inputs_unchanged(
    aggregator: Aggregator, path: Path, case: tuple[Array, Array]
) -> None:
    stack, weights = case
    stack_before, weights_before = stack.copy(), weights.copy()

    result = _combine(aggregator, stack, weights, path)

    np.testing.assert_array_equal(stack, stack_before)
    np.testing.assert_array_equal(weights, weights_before)
    assert not np.shares_memory(result, stack)


# --- the buffered default fold ---------------------------------------------------------


class CoordinateMax(Aggregator):
    """A rule with no streaming form: the coordinate-wise max, recording what it is given."""

    def __init__(self, *, min_results: int = 1) -> None:
        self._min_results = min_results
        self.calls: list[tuple[Array, Array]] = []

    @property
    def min_results(self) -> int:
        return self._min_results

    def aggregate(self, updates: Array, weights: Array) -> Array:
        self._require(len(updates))
        self.calls.append((updates.copy(), weights.copy()))
        return updates.max(axis=0)


def test_buffered_fold_collects_updates_and_calls_aggregate_once() -> None:
    aggregator = CoordinateMax()
    fold = aggregator.fold(3, np.float32)
    updates = [np.array([1.0, 5.0, 0.0]), np.array([4.0, 2.0, -1.0]), np.array([0.0, 3.0, 2.0])]

    for update, weight in zip(updates, [1.0, 2.0, 3.0], strict=True):
        fold.add(update, weight)
    result = fold.result()

    assert isinstance(fold, BufferedFold)
    assert fold.count == 3
    # Column-wise max of [1, 5, 0], [4, 2, -1], [0, 3, 2] = [4, 5, 2].
    np.testing.assert_array_equal(result, [4.0, 5.0, 2.0])
    assert result.dtype == np.float32
    [(stacked, weights)] = aggregator.calls
    np.testing.assert_array_equal(stacked, np.stack(updates))
    assert stacked.dtype == np.float32
    np.testing.assert_array_equal(weights, [1.0, 2.0, 3.0])


def test_buffered_fold_enforces_min_results() -> None:
    aggregator = CoordinateMax(min_results=2)
    fold = aggregator.fold(3, np.float64)
    fold.add(np.array([1.0, 2.0, 3.0]), 1.0)

    with pytest.raises(NotEnoughResults, match="CoordinateMax needs at least 2 updates") as info:
        fold.result()

    assert (info.value.received, info.value.required) == (1, 2)
    assert aggregator.calls == []


def test_buffered_fold_without_updates_raises_not_enough_results() -> None:
    fold = CoordinateMax().fold(3, np.float64)

    with pytest.raises(NotEnoughResults, match="at least 1 result, got 0"):
        fold.result()


@FAST
@given(stack=stacks())
def test_buffered_fold_equals_aggregate(stack: Array) -> None:
    weights = np.ones(len(stack))
    fold = CoordinateMax().fold(stack.shape[1], stack.dtype)

    for update in stack:
        fold.add(update, 1.0)
    streamed = fold.result()

    np.testing.assert_array_equal(streamed, CoordinateMax().aggregate(stack, weights))


@pytest.mark.parametrize("aggregator", [WeightedMean(), Mean()], ids=["weighted", "plain"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mean_fold_add_difference_equals_adding_the_difference(
    aggregator: Aggregator, dtype: type[np.floating]
) -> None:
    """Folding new - base chunk by chunk gives what folding the materialised difference gives."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal(100_003).astype(dtype)  # not a multiple of the chunk size
    news = [rng.standard_normal(100_003).astype(dtype) for _ in range(3)]
    weights = [1.0, 3.0, 0.0]
    fused = aggregator.fold(base.size, dtype)
    plain = aggregator.fold(base.size, dtype)

    for new, weight in zip(news, weights, strict=True):
        fused.add_difference(new, base, weight)  # type: ignore[attr-defined]
        plain.add(new - base, weight)

    np.testing.assert_allclose(fused.result(), plain.result(), rtol=1e-6, atol=1e-6)
    assert fused.count == 3


def test_mean_fold_add_difference_with_different_bases_and_plain_adds_mixed() -> None:
    """Results against another base (async) and plain updates fold into the same mean."""
    rng = np.random.default_rng(1)
    base, other = rng.standard_normal(70_001), rng.standard_normal(70_001)
    new = [rng.standard_normal(70_001) for _ in range(3)]
    fold = WeightedMean().fold(base.size, np.float64)

    fold.add_difference(new[0], base, 2.0)
    fold.add_difference(new[1], other, 1.0)
    fold.add(new[2], 1.0)

    # (2 (n0 - base) + 1 (n1 - other) + 1 n2) / (2 + 1 + 1)
    expected = (2 * (new[0] - base) + (new[1] - other) + new[2]) / 4
    np.testing.assert_allclose(fold.result(), expected, rtol=1e-12, atol=1e-12)


class _Rows:
    """A DeferredRows over a plain array (rows computed on request)."""

    def __init__(self, rows: Array) -> None:
        self._rows = rows
        self.summed = 0

    def rows(self) -> Array:
        return self._rows

    def finite(self, row: int) -> bool:
        return True

    def weighted_difference(self, rows: list[int], scales: list[float], base: Array) -> Array:
        self.summed += 1
        return np.asarray(
            sum(s * (self._rows[r] - base) for r, s in zip(rows, scales, strict=True)),
            dtype=self._rows.dtype,
        )


@pytest.mark.parametrize("aggregator", MEAN_FAMILY, ids=lambda a: type(a).__name__)
def test_mean_fold_sums_deferred_rows_at_once_and_mixes_them_with_computed_results(
    aggregator: Aggregator,
) -> None:
    """Rows of a block fold in one call per block; computed results and others fold as before."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(6).astype(np.float32)
    block = _Rows(rng.standard_normal((4, 6)).astype(np.float32))
    spec = VectorSpec(names=("v",), shapes=((6,),), dtype="float32")
    other = rng.standard_normal(6).astype(np.float32)
    read = DeferredWeights(spec, block, 3)
    read.flat  # computed: folds as a plain vector  # noqa: B018
    fold = aggregator.fold(6, np.float32)
    fold.add_deferred(DeferredWeights(spec, block, 2), base, 3.0)  # type: ignore[attr-defined]
    fold.add_difference(other, base, 1.0)  # type: ignore[attr-defined]
    fold.add_deferred(DeferredWeights(spec, block, 0), base, 2.0)  # type: ignore[attr-defined]
    fold.add_deferred(read, base, 4.0)  # type: ignore[attr-defined]

    updates = [block.rows()[2], other, block.rows()[0], block.rows()[3]]
    weights = np.array([3.0, 1.0, 2.0, 4.0])
    expected = aggregator.aggregate(np.stack(updates) - base, weights)
    np.testing.assert_allclose(fold.result(), expected, rtol=1e-5, atol=1e-6)
    assert fold.count == 4
    assert block.summed == 1


def test_mean_fold_rejects_a_deferred_row_of_another_length() -> None:
    spec = VectorSpec(names=("v",), shapes=((3,),), dtype="float32")
    fold = WeightedMean().fold(6, np.float32)
    row = DeferredWeights(spec, _Rows(np.zeros((1, 3), dtype=np.float32)), 0)
    with pytest.raises(AggregationError, match="sizes 3 and 6 cannot join a fold of length 6"):
        fold.add_deferred(row, np.zeros(6, dtype=np.float32), 1.0)  # type: ignore[attr-defined]
