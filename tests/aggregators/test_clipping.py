"""ClippedMean: clip each update to an L2 ball, then the example-weighted mean (batch and fold)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from fedloom.aggregators import AGGREGATORS, ClippedMean, WeightedMean
from fedloom.errors import AggregationError, ConfigError, NotEnoughResults
from generators import FAST, finite_vectors, positive_weights, stacks_with_weights

Array = NDArray[np.floating]
Path = Literal["batch", "fold"]

PATHS: list[Path] = ["batch", "fold"]
clip_norms = st.floats(min_value=1e-3, max_value=1e4)


def _combine(aggregator: ClippedMean, stack: Array, weights: Array, path: Path) -> Array:
    """Run `aggregator` on the stack either at once or one update at a time."""
    if path == "batch":
        return aggregator.aggregate(stack, weights)
    fold = aggregator.fold(stack.shape[1], stack.dtype)
    for update, weight in zip(stack, weights, strict=True):
        fold.add(update, float(weight))
    return fold.result()


def _norm(vector: Array) -> float:
    return float(np.linalg.norm(vector.astype(np.float64)))


def _tolerance(dtype: np.dtype, magnitude: float, num_updates: int) -> float:
    """Rounding budget of a weighted mean of `num_updates` values up to `magnitude`."""
    return 4 * (num_updates + 2) * float(np.finfo(dtype).eps) * max(1.0, magnitude)


# --- registry and configuration ---------------------------------------------------------


def test_aggregators_registry_names_clipped_mean() -> None:
    assert AGGREGATORS["clipped_mean"] is ClippedMean


def test_clipped_mean_shows_clip_norm_in_repr() -> None:
    assert repr(ClippedMean(clip_norm=2.5)) == "ClippedMean(clip_norm=2.5)"


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("inf"), float("nan"), "1.0", True, None])
def test_clipped_mean_rejects_clip_norm_that_is_not_positive_and_finite(bad: object) -> None:
    with pytest.raises(ConfigError, match="clip_norm must be a finite number > 0, got") as info:
        ClippedMean(clip_norm=bad)  # type: ignore[arg-type]

    assert "bounds the L2 norm of each update" in str(info.value)
    assert info.value.field == "clip_norm"


# --- hand-computed examples -------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_clipped_mean_clips_the_update_above_the_bound(path: Path) -> None:
    stack = np.array([[3.0, 4.0, 0.0], [0.0, 0.5, 0.0]])
    weights = np.array([1.0, 3.0])

    result = _combine(ClippedMean(clip_norm=1.0), stack, weights, path)

    # ||[3, 4, 0]|| = 5 > 1: scaled by 1 / 5 to [0.6, 0.8, 0]; ||[0, 0.5, 0]|| = 0.5 stays.
    # (1 * [0.6, 0.8, 0] + 3 * [0, 0.5, 0]) / (1 + 3) = [0.6, 2.3, 0] / 4 = [0.15, 0.575, 0]
    np.testing.assert_allclose(result, [0.15, 0.575, 0.0], rtol=1e-15, atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_clipped_mean_of_updates_within_the_bound_is_the_weighted_mean(path: Path) -> None:
    stack = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    weights = np.array([1.0, 3.0])

    result = _combine(ClippedMean(clip_norm=10.0), stack, weights, path)

    # Both norms are sqrt(14) < 10, so nothing is clipped:
    # (1 * [1, 2, 3] + 3 * [3, 2, 1]) / 4 = [10, 8, 6] / 4 = [2.5, 2, 1.5]
    np.testing.assert_array_equal(result, [2.5, 2.0, 1.5])


@pytest.mark.parametrize("path", PATHS)
def test_clipped_mean_passes_a_zero_update(path: Path) -> None:
    stack = np.array([[0.0, 0.0], [6.0, 8.0]])
    weights = np.array([1.0, 1.0])

    result = _combine(ClippedMean(clip_norm=5.0), stack, weights, path)

    # [0, 0] has norm 0 and stays; ||[6, 8]|| = 10 -> scaled by 5 / 10 to [3, 4].
    # ([0, 0] + [3, 4]) / 2 = [1.5, 2]
    np.testing.assert_array_equal(result, [1.5, 2.0])


@pytest.mark.parametrize("path", PATHS)
def test_clipped_mean_clips_a_float64_update_whose_squared_norm_overflows(path: Path) -> None:
    stack = np.array([[3e200, 4e200]])

    result = _combine(ClippedMean(clip_norm=1.0), stack, np.array([1.0]), path)

    # ||[3, 4] * 1e200|| = 5e200 (its square, 2.5e401, overflows float64) -> [0.6, 0.8]
    np.testing.assert_allclose(result, [0.6, 0.8], rtol=1e-15)


def test_clipped_mean_on_a_long_float32_vector_matches_numpy() -> None:
    """100_003 coordinates: the float32 norm is summed in float64 over several chunks."""
    rng = np.random.default_rng(11)
    stack = rng.uniform(-1.0, 1.0, size=(3, 100_003)).astype(np.float32)
    weights = np.array([1.0, 2.0, 3.0])
    wide = stack.astype(np.float64)
    norms = np.linalg.norm(wide, axis=1)
    clipped = wide * np.minimum(1.0, 100.0 / norms)[:, None]
    expected = np.average(clipped, axis=0, weights=weights)

    result = ClippedMean(clip_norm=100.0).aggregate(stack, weights)

    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)


# --- errors -----------------------------------------------------------------------------


def test_clipped_mean_of_no_updates_raises_not_enough_results() -> None:
    with pytest.raises(NotEnoughResults, match="ClippedMean needs at least 1 update") as info:
        ClippedMean(clip_norm=1.0).aggregate(np.empty((0, 3)), np.empty(0))

    assert (info.value.received, info.value.required) == (0, 1)


@pytest.mark.parametrize("path", PATHS)
def test_clipped_mean_rejects_negative_weights(path: Path) -> None:
    stack = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])

    with pytest.raises(AggregationError, match="must be finite and >= 0, got -1"):
        _combine(ClippedMean(clip_norm=1.0), stack, np.array([2.0, -1.0]), path)


@pytest.mark.parametrize("path", PATHS)
def test_clipped_mean_rejects_all_zero_weights(path: Path) -> None:
    stack = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])

    with pytest.raises(AggregationError, match="have weight 0"):
        _combine(ClippedMean(clip_norm=1.0), stack, np.array([0.0, 0.0]), path)


# --- properties -------------------------------------------------------------------------


@FAST
@given(data=st.data(), clip_norm=clip_norms)
def test_clipped_mean_bounds_every_update_by_clip_norm(
    data: st.DataObject, clip_norm: float
) -> None:
    """A single update comes back clipped: norm <= C (1 + 1e-6), same direction."""
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    update = data.draw(finite_vectors(data.draw(st.integers(1, 16)), dtype=dtype))

    clipped = ClippedMean(clip_norm=clip_norm).aggregate(update[None, :], np.array([2.0]))

    norm = _norm(update)
    assert _norm(clipped) <= clip_norm * (1 + 1e-6)
    expected = update.astype(np.float64) * min(1.0, clip_norm / norm) if norm else update
    tolerance = _tolerance(clipped.dtype, float(np.abs(update).max()), 1)
    np.testing.assert_allclose(clipped, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("path", PATHS)
@FAST
@given(case=stacks_with_weights(), clip_norm=clip_norms)
def test_clipped_mean_result_lies_in_the_clip_ball(
    path: Path, case: tuple[Array, Array], clip_norm: float
) -> None:
    """A weighted mean of vectors in the ball stays in it (up to rounding)."""
    stack, weights = case

    result = _combine(ClippedMean(clip_norm=clip_norm), stack, weights, path)

    assert _norm(result) <= clip_norm * (1 + _tolerance(stack.dtype, 1.0, len(stack)))


@FAST
@given(case=stacks_with_weights(), clip_norm=clip_norms)
def test_clipped_mean_fold_equals_aggregate(case: tuple[Array, Array], clip_norm: float) -> None:
    stack, weights = case
    aggregator = ClippedMean(clip_norm=clip_norm)

    streamed = _combine(aggregator, stack, weights, "fold")
    batched = _combine(aggregator, stack, weights, "batch")

    np.testing.assert_array_equal(streamed, batched)


@pytest.mark.parametrize("path", PATHS)
@FAST
@given(case=stacks_with_weights(), clip_norm=clip_norms, data=st.data())
def test_clipped_mean_is_permutation_invariant(
    path: Path, case: tuple[Array, Array], clip_norm: float, data: st.DataObject
) -> None:
    stack, weights = case
    order = np.array(data.draw(st.permutations(range(len(stack)))), dtype=np.intp)
    aggregator = ClippedMean(clip_norm=clip_norm)

    original = _combine(aggregator, stack, weights, path)
    permuted = _combine(aggregator, stack[order], weights[order], path)

    atol = _tolerance(stack.dtype, min(clip_norm, float(np.abs(stack).max())), len(stack))
    np.testing.assert_allclose(permuted, original, rtol=0, atol=atol)


@pytest.mark.parametrize("path", PATHS)
@FAST
@given(case=stacks_with_weights(), clip_norm=clip_norms)
def test_clipped_mean_preserves_shape_and_dtype(
    path: Path, case: tuple[Array, Array], clip_norm: float
) -> None:
    stack, weights = case

    result = _combine(ClippedMean(clip_norm=clip_norm), stack, weights, path)

    assert result.shape == (stack.shape[1],)
    assert result.dtype == stack.dtype


@pytest.mark.parametrize("path", PATHS)
@FAST
@given(case=stacks_with_weights(), clip_norm=clip_norms)
def test_clipped_mean_leaves_inputs_unchanged(
    path: Path, case: tuple[Array, Array], clip_norm: float
) -> None:
    stack, weights = case
    stack_before, weights_before = stack.copy(), weights.copy()

    result = _combine(ClippedMean(clip_norm=clip_norm), stack, weights, path)

    np.testing.assert_array_equal(stack, stack_before)
    np.testing.assert_array_equal(weights, weights_before)
    assert not np.shares_memory(result, stack)


@pytest.mark.parametrize("path", PATHS)
@FAST
@given(case=stacks_with_weights(bound=10.0), data=st.data())
def test_clipped_mean_with_a_loose_bound_is_the_weighted_mean(
    path: Path, case: tuple[Array, Array], data: st.DataObject
) -> None:
    stack, weights = case
    largest = max(_norm(update) for update in stack)
    loose = data.draw(st.floats(min_value=largest * 1.01 + 1e-3, max_value=1e6))

    result = _combine(ClippedMean(clip_norm=loose), stack, weights, path)

    expected = WeightedMean().fold(stack.shape[1], stack.dtype)
    for update, weight in zip(stack, weights, strict=True):
        expected.add(update, float(weight))
    np.testing.assert_array_equal(result, expected.result())


@FAST
@given(k=st.integers(1, 6), data=st.data(), clip_norm=clip_norms)
def test_clipped_mean_of_identical_updates_is_that_update_clipped(
    k: int, data: st.DataObject, clip_norm: float
) -> None:
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    update = data.draw(finite_vectors(data.draw(st.integers(1, 16)), dtype=dtype))
    weights = data.draw(positive_weights(k))

    result = ClippedMean(clip_norm=clip_norm).aggregate(np.tile(update, (k, 1)), weights)

    single = ClippedMean(clip_norm=clip_norm).aggregate(update[None, :], np.ones(1))
    atol = _tolerance(result.dtype, float(np.abs(single).max()), k)
    np.testing.assert_allclose(result, single, rtol=0, atol=atol)
