"""The robust rules: coordinate-wise Median and TrimmedMean, Krum, MultiKrum and Bulyan."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

from fedloom.aggregators import (
    AGGREGATORS,
    Aggregator,
    BufferedFold,
    Bulyan,
    Krum,
    Median,
    MultiKrum,
    TrimmedMean,
)
from fedloom.errors import ConfigError, NotEnoughResults
from generators import FAST, FLOAT_DTYPES, finite_floats, finite_vectors, stacks

Array = NDArray[np.floating]

COORDINATE_WISE: list[Aggregator] = [Median(), TrimmedMean(beta=0.2)]
KRUM_FAMILY: list[Aggregator] = [Krum(f=1), MultiKrum(f=1), MultiKrum(f=0, m=2), Bulyan(f=1)]
ROBUST: list[Aggregator] = COORDINATE_WISE + KRUM_FAMILY


def _stacks_for(aggregator: Aggregator, **options: Any) -> Any:
    """Stacks with enough updates for `aggregator`, up to 4 more than it needs."""
    low = aggregator.min_results
    return stacks(min_clients=low, max_clients=low + 4, **options)


def _combine(aggregator: Aggregator, stack: Array, path: str) -> Array:
    """Run `aggregator` with equal weights either at once or through its fold."""
    if path == "batch":
        return aggregator.aggregate(stack, np.ones(len(stack)))
    fold = aggregator.fold(stack.shape[1], stack.dtype)
    for update in stack:
        fold.add(update, 1.0)
    return fold.result()


def _tolerance(dtype: np.dtype, magnitude: float, num_updates: int) -> float:
    """Rounding budget of a mean of `num_updates` values up to `magnitude`: 4 * (k + 2) * eps."""
    return 4 * (num_updates + 2) * float(np.finfo(dtype).eps) * max(1.0, magnitude)


def _assert_close(actual: Array, expected: Array, *, magnitude: float, num_updates: int) -> None:
    atol = _tolerance(actual.dtype, magnitude, num_updates)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


# --- registry ---------------------------------------------------------------------------


def test_aggregators_registry_names_the_robust_rules() -> None:
    assert AGGREGATORS["median"] is Median
    assert AGGREGATORS["trimmed_mean"] is TrimmedMean
    assert AGGREGATORS["krum"] is Krum
    assert AGGREGATORS["multikrum"] is MultiKrum
    assert AGGREGATORS["bulyan"] is Bulyan


def test_robust_rules_show_every_field_in_repr() -> None:
    assert repr(TrimmedMean(beta=0.2)) == "TrimmedMean(beta=0.2)"
    assert repr(MultiKrum(f=1, m=3)) == "MultiKrum(f=1, m=3)"
    assert repr(Bulyan(f=2)) == "Bulyan(f=2)"


@pytest.mark.parametrize(
    ("aggregator", "required"),
    [
        (Median(), 1),
        (TrimmedMean(beta=0.4), 1),
        (Krum(f=0), 3),
        (Krum(f=2), 7),
        (MultiKrum(f=2), 7),
        (MultiKrum(f=0, m=6), 6),
        (Bulyan(f=0), 3),
        (Bulyan(f=2), 11),
    ],
    ids=repr,
)
def test_robust_rules_min_results(aggregator: Aggregator, required: int) -> None:
    """Krum-type rules need n > 2f + 2 (MultiKrum also n >= m); Bulyan needs n >= 4f + 3."""
    assert aggregator.min_results == required


# --- Median and TrimmedMean: hand-computed examples -------------------------------------


def test_median_of_three_clients() -> None:
    stack = np.array([[1.0, 5.0, -2.0], [3.0, 0.0, 4.0], [2.0, 9.0, 1.0]])

    result = Median().aggregate(stack, np.ones(3))

    # Columns sorted: [1, 2, 3] -> 2; [0, 5, 9] -> 5; [-2, 1, 4] -> 1.
    np.testing.assert_array_equal(result, [2.0, 5.0, 1.0])


def test_median_of_an_even_count_averages_the_two_middle_values() -> None:
    stack = np.array([[1.0, 10.0, 0.0], [4.0, 20.0, 0.0], [2.0, 30.0, 8.0], [3.0, 40.0, 2.0]])

    result = Median().aggregate(stack, np.ones(4))

    # Columns sorted: [1, 2, 3, 4] -> (2 + 3) / 2 = 2.5; [10, 20, 30, 40] -> (20 + 30) / 2 = 25;
    # [0, 0, 2, 8] -> (0 + 2) / 2 = 1.
    np.testing.assert_array_equal(result, [2.5, 25.0, 1.0])


def test_median_ignores_weights() -> None:
    stack = np.array([[1.0, 5.0, -2.0], [3.0, 0.0, 4.0], [2.0, 9.0, 1.0]])

    result = Median().aggregate(stack, np.array([1000.0, 1.0, 0.0]))

    # The same medians as with equal weights: [2, 5, 1].
    np.testing.assert_array_equal(result, [2.0, 5.0, 1.0])


def test_trimmed_mean_drops_one_value_from_each_end_of_five() -> None:
    stack = np.array(
        [
            [1.0, 10.0, 0.0],
            [2.0, 20.0, 0.0],
            [3.0, 30.0, 6.0],
            [4.0, 40.0, 3.0],
            [100.0, -50.0, -9.0],
        ]
    )

    result = TrimmedMean(beta=0.2).aggregate(stack, np.array([1.0, 1.0, 1.0, 1.0, 50.0]))

    # floor(0.2 * 5) = 1 value leaves each end of each column; weights play no part.
    # [1, 2, 3, 4, 100] -> (2 + 3 + 4) / 3 = 3; [-50, 10, 20, 30, 40] -> (10 + 20 + 30) / 3 = 20;
    # [-9, 0, 0, 3, 6] -> (0 + 0 + 3) / 3 = 1.
    np.testing.assert_array_equal(result, [3.0, 20.0, 1.0])


def test_trimmed_mean_with_beta_times_k_below_one_is_the_plain_mean() -> None:
    stack = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 8.0, 5.0], [6.0, 0.0, 3.0]])

    result = TrimmedMean(beta=0.2).aggregate(stack, np.ones(4))

    # floor(0.2 * 4) = 0: nothing is trimmed. [12, 12, 12] / 4 = [3, 3, 3].
    np.testing.assert_array_equal(result, [3.0, 3.0, 3.0])


def test_trimmed_mean_trims_floor_of_beta_times_k_on_betas_decimal_value() -> None:
    """0.29 * 100 is 28.999999999999996 in binary; the rule trims 29 as written."""
    column = np.concatenate([np.full(29, -1000.0), np.zeros(71)])
    stack = column[:, None]

    result = TrimmedMean(beta=0.29).aggregate(stack, np.ones(100))

    # Trimming 29 from each end drops every -1000 and 29 zeros: the mean of 42 zeros is 0.
    # (Trimming 28 would keep one -1000: -1000 / 44.)
    assert TrimmedMean(beta=0.29).trimmed(100) == 29
    np.testing.assert_array_equal(result, [0.0])


def test_trimmed_mean_with_beta_zero_is_the_mean() -> None:
    stack = np.array([[0.0, 4.0, 8.0], [2.0, 2.0, 2.0], [4.0, 0.0, -4.0]])

    result = TrimmedMean(beta=0.0).aggregate(stack, np.ones(3))

    # ([0, 4, 8] + [2, 2, 2] + [4, 0, -4]) / 3 = [6, 6, 6] / 3 = [2, 2, 2]
    np.testing.assert_array_equal(result, [2.0, 2.0, 2.0])


def test_median_on_a_long_float32_vector_matches_numpy() -> None:
    """10_003 coordinates: two whole sort blocks of 4096 and a ragged last one."""
    rng = np.random.default_rng(7)
    stack = rng.standard_normal((6, 10_003)).astype(np.float32)

    result = Median().aggregate(stack, np.ones(6))

    assert result.dtype == np.float32
    expected = np.median(stack.astype(np.float64), axis=0).astype(np.float32)
    np.testing.assert_array_equal(result, expected)


# --- Krum, MultiKrum, Bulyan: hand-computed examples ------------------------------------

# Five points in 2-D; e is an attacker. Squared distances:
#   a=(2,1) b=(3,1): 1     a-c: 4      a-d: 9+9=18      a-e: 100+100=200
#   c=(2,3)          b-c: 1+4=5        b-d: 4+9=13      b-e: 81+100=181
#   d=(5,4)          c-d: 9+1=10       c-e: 100+64=164
#   e=(12,11)        d-e: 49+49=98
# With f = 1 each score sums the n - f - 2 = 2 smallest distances to the others:
#   a: 1 + 4 = 5, b: 1 + 5 = 6, c: 4 + 5 = 9, d: 10 + 13 = 23, e: 98 + 164 = 262.
KRUM_POINTS = np.array([[2.0, 1.0], [3.0, 1.0], [2.0, 3.0], [5.0, 4.0], [12.0, 11.0]])


def test_krum_picks_the_update_closest_to_its_neighbours() -> None:
    result = Krum(f=1).aggregate(KRUM_POINTS, np.ones(5))

    # a has the lowest score (5).
    np.testing.assert_array_equal(result, [2.0, 1.0])


def test_krum_returns_a_copy_of_the_chosen_row() -> None:
    stack = KRUM_POINTS.copy()

    result = Krum(f=1).aggregate(stack, np.ones(5))
    result[0] = 99.0

    np.testing.assert_array_equal(stack, KRUM_POINTS)


def test_multikrum_averages_the_best_scores_plainly() -> None:
    weights = np.array([1.0, 1.0, 1.0, 100.0, 1.0])

    result = MultiKrum(f=1).aggregate(KRUM_POINTS, weights)

    # m = n - f = 4: a, b, c, d (scores 5, 6, 9, 23), averaged without weights:
    # ([2, 1] + [3, 1] + [2, 3] + [5, 4]) / 4 = [12, 9] / 4 = [3, 2.25].
    np.testing.assert_array_equal(result, [3.0, 2.25])


def test_multikrum_with_m_averages_that_many() -> None:
    result = MultiKrum(f=1, m=2).aggregate(KRUM_POINTS, np.ones(5))

    # The two best are a and b: ([2, 1] + [3, 1]) / 2 = [2.5, 1].
    np.testing.assert_array_equal(result, [2.5, 1.0])


def test_multikrum_with_m_one_is_krum() -> None:
    result = MultiKrum(f=1, m=1).aggregate(KRUM_POINTS, np.ones(5))

    np.testing.assert_array_equal(result, Krum(f=1).aggregate(KRUM_POINTS, np.ones(5)))


def test_bulyan_on_seven_clients_with_one_attacker() -> None:
    stack = np.array(
        [[0.0, 2.0], [6.0, 3.0], [6.0, 0.0], [1.0, 4.0], [2.0, 4.0], [3.0, 4.0], [20.0, -20.0]]
    )

    result = Bulyan(f=1).aggregate(stack, np.ones(7))

    # Points a=(0,2) b=(6,3) c=(6,0) d=(1,4) e=(2,4) g=(3,4) z=(20,-20); n = 7, f = 1, so
    # theta = n - 2f = 5 are selected and beta = theta - 2f = 3 values kept per coordinate.
    # Squared distances: a-b 37, a-c 40, a-d 5, a-e 8, a-g 13, b-c 9, b-d 26, b-e 17, b-g 10,
    # c-d 41, c-e 32, c-g 25, d-e 1, d-g 4, e-g 1; z is 596 or more from everyone.
    # Krum on the pool R, scoring with the |R| - f - 2 closest (at least 1):
    #   R = all 7, 4 closest: a 5+8+13+37=63, b 9+10+17+26=62, c 9+25+32+40=106,
    #       d 1+4+5+26=36, e 1+1+8+17=27, g 1+4+10+13=28, z 3070      -> e
    #   R = a b c d g z, 3 closest: a 55, b 9+10+26=45, c 74, d 4+5+26=35, g 4+10+13=27 -> g
    #   R = a b c d z, 2 closest: a 5+37=42, b 9+26=35, c 9+40=49, d 5+26=31             -> d
    #   R = a b c z, 1 closest: a 37, b 9, c 9 (a tie)                                -> b or c
    #   R = the other of b, c with a and z, 1 closest: a and it tie (40 or 37)         -> either
    # So S = {e, g, d} + two of {a, b, c}; every choice gives the same coordinates:
    #   x: {2, 3, 1} + two of {0, 6, 6}: median 2 or 3, the 3 closest are {1, 2, 3} -> 2
    #   y: {4, 4, 4} + two of {2, 3, 0}: median 4, the 3 closest are {4, 4, 4}     -> 4
    # The coordinate-wise median of all seven would be [3, 3].
    np.testing.assert_array_equal(result, [2.0, 4.0])


def test_bulyan_with_f_zero_is_the_mean() -> None:
    stack = np.array([[0.0, 4.0, 8.0], [2.0, 2.0, 2.0], [4.0, 0.0, -4.0]])

    result = Bulyan(f=0).aggregate(stack, np.ones(3))

    # theta = beta = n: every update and every value is kept. [6, 6, 6] / 3 = [2, 2, 2].
    np.testing.assert_array_equal(result, [2.0, 2.0, 2.0])


# --- Krum family against a direct reading of the papers ---------------------------------


def _reference_scores(rows: list[Array], f: int, neighbours: int) -> list[float]:
    """Krum scores from explicit differences: the sum of the `neighbours` smallest distances."""
    scores = []
    for i, row in enumerate(rows):
        distances = sorted(
            float(np.sum((row - other) ** 2)) for j, other in enumerate(rows) if j != i
        )
        scores.append(sum(distances[:neighbours]))
    return scores


def _reference_bulyan_outcomes(stack: Array, f: int) -> list[Array]:
    """Every result Bulyan can give, following each way of breaking ties between equal scores."""
    theta = len(stack) - 2 * f
    beta = theta - 2 * f
    outcomes: list[Array] = []

    def select(pool: list[int], chosen: list[int]) -> None:
        if len(chosen) == theta:
            selected = stack[chosen]
            median = np.median(selected, axis=0)
            closest = np.argsort(np.abs(selected - median), axis=0, kind="stable")[:beta]
            outcomes.append(np.take_along_axis(selected, closest, axis=0).mean(axis=0))
            return
        rows = [stack[i] for i in pool]
        scores = _reference_scores(rows, f, max(1, len(pool) - f - 2))
        for position, score in enumerate(scores):
            if score == min(scores):
                select(pool[:position] + pool[position + 1 :], [*chosen, pool[position]])

    select(list(range(len(stack))), [])
    return outcomes


@pytest.mark.parametrize(("n", "f", "dim"), [(3, 0, 4), (5, 1, 3), (8, 2, 6), (12, 3, 2)])
def test_krum_and_multikrum_match_the_paper_on_random_updates(n: int, f: int, dim: int) -> None:
    rng = np.random.default_rng(n * 100 + f)
    stack = rng.standard_normal((n, dim))
    scores = np.array(_reference_scores(list(stack), f, n - f - 2))
    best = np.argsort(scores)

    krum = Krum(f=f).aggregate(stack, np.ones(n))
    multikrum = MultiKrum(f=f).aggregate(stack, np.ones(n))

    np.testing.assert_array_equal(krum, stack[best[0]])
    np.testing.assert_allclose(multikrum, stack[best[: n - f]].mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize(("n", "f", "dim"), [(7, 1, 3), (8, 1, 5), (11, 2, 4), (15, 3, 2)])
def test_bulyan_matches_the_paper_on_random_updates(n: int, f: int, dim: int) -> None:
    """Random updates tie only where Krum scores a single closest neighbour (the last steps)."""
    rng = np.random.default_rng(n * 100 + f)
    stack = rng.standard_normal((n, dim))

    result = Bulyan(f=f).aggregate(stack, np.ones(n))

    outcomes = _reference_bulyan_outcomes(stack, f)
    assert any(np.allclose(result, outcome, rtol=1e-12) for outcome in outcomes)


# --- configuration errors ---------------------------------------------------------------


@pytest.mark.parametrize("rule", [Krum, MultiKrum, Bulyan])
@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_krum_family_rejects_f_that_is_not_a_count(rule: type[Aggregator], bad: object) -> None:
    with pytest.raises(
        ConfigError, match=r"f must be an integer >= 0 \(how many Byzantine"
    ) as info:
        rule(f=bad)  # type: ignore[call-arg]

    assert (info.value.field, info.value.value) == ("f", bad)


def test_krum_rejects_negative_f_and_says_what_it_needs() -> None:
    with pytest.raises(ConfigError, match="got -1") as info:
        Krum(f=-1)

    assert "it needs more than 2f + 2 updates" in str(info.value)


def test_bulyan_rejects_negative_f_and_says_what_it_needs() -> None:
    with pytest.raises(ConfigError, match="it needs at least 4f \\+ 3 updates"):
        Bulyan(f=-1)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_multikrum_rejects_m_below_one(bad: object) -> None:
    with pytest.raises(
        ConfigError, match=r"m must be an integer >= 1 \(how many updates to average"
    ):
        MultiKrum(f=1, m=bad)  # type: ignore[arg-type]


def test_trimmed_mean_rejects_beta_of_one_half() -> None:
    with pytest.raises(ConfigError, match=r"beta must be in \[0, 0\.5\), got 0\.5") as info:
        TrimmedMean(beta=0.5)

    assert "leaves nothing to average" in str(info.value)
    assert "Median()" in str(info.value)
    assert (info.value.field, info.value.value) == ("beta", 0.5)


@pytest.mark.parametrize("bad", [-0.1, 0.7, float("nan"), float("inf")])
def test_trimmed_mean_rejects_beta_outside_its_range(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"beta must be in \[0, 0\.5\)"):
        TrimmedMean(beta=bad)


@pytest.mark.parametrize("bad", ["0.1", None, True])
def test_trimmed_mean_rejects_beta_that_is_not_a_number(bad: object) -> None:
    with pytest.raises(ConfigError, match="beta must be a number in"):
        TrimmedMean(beta=bad)  # type: ignore[arg-type]


# --- too few results --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregator", "received", "required"),
    [
        (Krum(f=2), 5, 7),
        (MultiKrum(f=1), 4, 5),
        (MultiKrum(f=0, m=6), 5, 6),
        (Bulyan(f=1), 6, 7),
        (Median(), 0, 1),
        (TrimmedMean(), 0, 1),
    ],
    ids=repr,
)
@pytest.mark.parametrize("path", ["batch", "fold"])
def test_robust_rules_with_too_few_updates_raise_not_enough_results(
    aggregator: Aggregator, received: int, required: int, path: str
) -> None:
    stack = np.arange(received * 3, dtype=np.float64).reshape(received, 3)
    name = type(aggregator).__name__

    with pytest.raises(NotEnoughResults, match=f"{name} needs at least {required} updates") as info:
        _combine(aggregator, stack, path)

    assert (info.value.received, info.value.required) == (received, required)
    assert f"a round needs at least {required} result" in str(info.value)
    assert f"got {received}." in str(info.value)


@pytest.mark.parametrize("aggregator", ROBUST, ids=repr)
def test_robust_rules_buffer_updates_in_the_default_fold(aggregator: Aggregator) -> None:
    fold = aggregator.fold(2, np.float32)
    for update in KRUM_POINTS[:, ::-1].copy():
        fold.add(update, 1.0)
    for update in KRUM_POINTS[:2]:
        fold.add(update, 1.0)
    stack = np.vstack([KRUM_POINTS[:, ::-1], KRUM_POINTS[:2]]).astype(np.float32)

    result = fold.result()

    assert isinstance(fold, BufferedFold)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, aggregator.aggregate(stack, np.ones(7, np.float32)))


# --- properties of every robust rule ----------------------------------------------------


@pytest.mark.parametrize("aggregator", ROBUST, ids=repr)
@FAST
@given(data=st.data())
def test_robust_rules_are_permutation_invariant(
    aggregator: Aggregator, data: st.DataObject
) -> None:
    """Bit for bit: ties are broken by content, never by position."""
    stack = data.draw(_stacks_for(aggregator))
    order = np.array(data.draw(st.permutations(range(len(stack)))), dtype=np.intp)
    weights = np.ones(len(stack))

    original = aggregator.aggregate(stack, weights)
    permuted = aggregator.aggregate(stack[order], weights)

    np.testing.assert_array_equal(permuted, original)


@pytest.mark.parametrize("aggregator", ROBUST, ids=repr)
@FAST
@given(data=st.data())
def test_robust_rules_preserve_shape_and_dtype(aggregator: Aggregator, data: st.DataObject) -> None:
    stack = data.draw(_stacks_for(aggregator))

    result = aggregator.aggregate(stack, np.ones(len(stack), dtype=stack.dtype))

    assert result.shape == (stack.shape[1],)
    assert result.dtype == stack.dtype


@pytest.mark.parametrize("aggregator", ROBUST, ids=repr)
@FAST
@given(data=st.data())
def test_robust_rules_leave_inputs_unchanged(aggregator: Aggregator, data: st.DataObject) -> None:
    stack = data.draw(_stacks_for(aggregator))
    weights = np.arange(1.0, len(stack) + 1.0)
    stack_before, weights_before = stack.copy(), weights.copy()

    result = aggregator.aggregate(stack, weights)

    np.testing.assert_array_equal(stack, stack_before)
    np.testing.assert_array_equal(weights, weights_before)
    assert not np.shares_memory(result, stack)


@pytest.mark.parametrize("aggregator", ROBUST, ids=repr)
@FAST
@given(data=st.data())
def test_robust_rules_of_identical_updates_are_that_update(
    aggregator: Aggregator, data: st.DataObject
) -> None:
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES))
    update = data.draw(finite_vectors(data.draw(st.integers(1, 16)), dtype=dtype))
    k = data.draw(st.integers(aggregator.min_results, aggregator.min_results + 4))

    result = aggregator.aggregate(np.tile(update, (k, 1)), np.ones(k))

    _assert_close(result, update, magnitude=float(np.abs(update).max()), num_updates=k)


@pytest.mark.parametrize("aggregator", COORDINATE_WISE, ids=repr)
@FAST
@given(data=st.data())
def test_coordinate_wise_rules_are_translation_equivariant(
    aggregator: Aggregator, data: st.DataObject
) -> None:
    stack = data.draw(_stacks_for(aggregator))
    shift = data.draw(finite_vectors(stack.shape[1], dtype=stack.dtype))
    weights = np.ones(len(stack))

    shifted = aggregator.aggregate(stack + shift, weights)
    expected = aggregator.aggregate(stack, weights) + shift

    magnitude = float(np.abs(stack).max() + np.abs(shift).max())
    _assert_close(shifted, expected, magnitude=magnitude, num_updates=len(stack))


@FAST
@given(stack=stacks(min_clients=5, max_clients=9))
def test_krum_returns_one_of_the_input_rows(stack: Array) -> None:
    result = Krum(f=1).aggregate(stack, np.ones(len(stack)))

    assert any(np.array_equal(result, row) for row in stack)


# --- robustness against attackers -------------------------------------------------------


@st.composite
def attacked_stacks(draw: st.DrawFn, *, honest: int, byzantine: int, spread: float) -> Any:
    """Honest rows anywhere within 1e3 and Byzantine rows up to 1e6, shuffled together.

    With ``spread`` finite, honest rows are a cluster: a centre plus noise within
    ``spread``, and each Byzantine row is the centre plus 1e4 to 1e6 in every coordinate.
    Returns the stack and a mask of its honest rows.
    """
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    dim = draw(st.integers(1, 8))
    if np.isfinite(spread):
        centre = draw(finite_vectors(dim, dtype=dtype))
        noise = draw(arrays(dtype, (honest, dim), elements=finite_floats(dtype, bound=spread)))
        far = st.one_of(st.floats(-1e6, -1e4), st.floats(1e4, 1e6))
        offsets = draw(arrays(np.float64, (byzantine, dim), elements=far))
        good = (centre + noise).astype(dtype)
        bad = (centre + offsets).astype(dtype)
    else:
        good = draw(arrays(dtype, (honest, dim), elements=finite_floats(dtype)))
        bad = draw(arrays(dtype, (byzantine, dim), elements=finite_floats(dtype, bound=1e6)))
    order = np.array(draw(st.permutations(range(honest + byzantine))), dtype=np.intp)
    stack = np.concatenate([good, bad])[order]
    is_honest = order < honest
    return stack, is_honest


def _assert_within_honest_range(result: Array, stack: Array, is_honest: NDArray[np.bool_]) -> None:
    honest = stack[is_honest]
    slack = _tolerance(stack.dtype, float(np.abs(honest).max()), len(stack))
    assert np.all(result >= honest.min(axis=0) - slack)
    assert np.all(result <= honest.max(axis=0) + slack)


@FAST
@given(data=st.data(), n=st.integers(1, 11))
def test_median_stays_within_the_honest_range_with_a_byzantine_minority(
    data: st.DataObject, n: int
) -> None:
    byzantine = data.draw(st.integers(0, (n - 1) // 2), label="byzantine")
    stack, is_honest = data.draw(
        attacked_stacks(honest=n - byzantine, byzantine=byzantine, spread=np.inf)
    )

    result = Median().aggregate(stack, np.ones(n))

    _assert_within_honest_range(result, stack, is_honest)


@FAST
@given(data=st.data(), n=st.integers(1, 12), beta=st.floats(0.0, 0.49))
def test_trimmed_mean_stays_within_the_honest_range_with_at_most_beta_n_attackers(
    data: st.DataObject, n: int, beta: float
) -> None:
    aggregator = TrimmedMean(beta=beta)
    byzantine = data.draw(st.integers(0, aggregator.trimmed(n)), label="byzantine")
    stack, is_honest = data.draw(
        attacked_stacks(honest=n - byzantine, byzantine=byzantine, spread=np.inf)
    )

    result = aggregator.aggregate(stack, np.ones(n))

    _assert_within_honest_range(result, stack, is_honest)


@FAST
@given(stack=stacks(max_clients=10), beta=st.floats(0.0, 0.49), data=st.data())
def test_trimmed_mean_ignores_how_extreme_the_trimmed_values_are(
    stack: Array, beta: float, data: st.DataObject
) -> None:
    """Push each coordinate's trimmed values anywhere beyond the kept ones: nothing changes."""
    aggregator = TrimmedMean(beta=beta)
    k, dim = stack.shape
    trim = aggregator.trimmed(k)
    ranks = np.argsort(stack, axis=0, kind="stable")
    ordered = np.sort(stack, axis=0)
    excess = st.floats(0.0, 1e6)
    below = data.draw(arrays(np.float64, (trim, dim), elements=excess))
    above = data.draw(arrays(np.float64, (trim, dim), elements=excess))
    moved = stack.copy()
    np.put_along_axis(moved, ranks[:trim], (ordered[trim] - below).astype(stack.dtype), axis=0)
    np.put_along_axis(
        moved, ranks[k - trim :], (ordered[k - trim - 1] + above).astype(stack.dtype), axis=0
    )

    result = aggregator.aggregate(moved, np.ones(k))

    np.testing.assert_array_equal(result, aggregator.aggregate(stack, np.ones(k)))


@FAST
@given(data=st.data(), f=st.integers(0, 3), extra=st.integers(0, 3))
def test_krum_chooses_an_honest_update_when_attackers_are_far(
    data: st.DataObject, f: int, extra: int
) -> None:
    n = 2 * f + 3 + extra
    stack, is_honest = data.draw(attacked_stacks(honest=n - f, byzantine=f, spread=1.0))

    result = Krum(f=f).aggregate(stack, np.ones(n))

    assert any(np.array_equal(result, row) for row in stack[is_honest])


@FAST
@given(data=st.data(), f=st.integers(0, 3), extra=st.integers(0, 3))
def test_multikrum_averages_exactly_the_honest_updates_when_attackers_are_far(
    data: st.DataObject, f: int, extra: int
) -> None:
    n = 2 * f + 3 + extra
    stack, is_honest = data.draw(attacked_stacks(honest=n - f, byzantine=f, spread=1.0))

    result = MultiKrum(f=f).aggregate(stack, np.ones(n))

    # m = n - f: the n - f best scores are exactly the honest updates.
    honest = stack[is_honest]
    expected = honest.astype(np.float64).mean(axis=0).astype(stack.dtype)
    _assert_close(result, expected, magnitude=float(np.abs(honest).max()), num_updates=n)


@FAST
@given(data=st.data(), f=st.integers(0, 2), extra=st.integers(0, 3))
def test_bulyan_stays_within_the_honest_range_when_attackers_are_far(
    data: st.DataObject, f: int, extra: int
) -> None:
    n = 4 * f + 3 + extra
    stack, is_honest = data.draw(attacked_stacks(honest=n - f, byzantine=f, spread=1.0))

    result = Bulyan(f=f).aggregate(stack, np.ones(n))

    _assert_within_honest_range(result, stack, is_honest)
