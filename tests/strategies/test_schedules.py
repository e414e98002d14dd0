"""Schedules: the staleness functions (Constant, Polynomial, Hinge) and Buffered's validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedloom.errors import ConfigError
from fedloom.strategies.schedules import Buffered, Constant, Hinge, Polynomial, Staleness, Sync
from generators import FAST

# --- Staleness functions -----------------------------------------------------------------


@pytest.mark.parametrize("staleness", [0, 1, 7, 1000])
def test_constant_ignores_staleness(staleness: int) -> None:
    factor = Constant()(staleness)

    assert factor == 1.0


@pytest.mark.parametrize(
    ("a", "staleness", "expected"),
    [
        # (1 + 3)^-0.5 = 4^-0.5 = 1/2.
        pytest.param(0.5, 3, 0.5, id="sqrt"),
        # (1 + 1)^-1 = 1/2 and (1 + 3)^-1 = 1/4.
        pytest.param(1.0, 1, 0.5, id="a1-t1"),
        pytest.param(1.0, 3, 0.25, id="a1-t3"),
        # (1 + 2)^-2 = 1/9.
        pytest.param(2.0, 2, 1 / 9, id="a2-t2"),
        # a = 0 ignores staleness: (1 + 5)^0 = 1.
        pytest.param(0.0, 5, 1.0, id="a0"),
    ],
)
def test_polynomial_is_one_plus_staleness_to_the_minus_a(
    a: float, staleness: int, expected: float
) -> None:
    factor = Polynomial(a=a)(staleness)

    assert factor == pytest.approx(expected, rel=1e-12)


def test_polynomial_defaults_to_fedbuffs_square_root() -> None:
    factor = Polynomial()(3)

    # a = 0.5 by default: 4^-0.5 = 0.5.
    assert factor == 0.5


@pytest.mark.parametrize(
    ("staleness", "expected"),
    [
        # t <= b = 4: no discount.
        pytest.param(0, 1.0, id="fresh"),
        pytest.param(4, 1.0, id="at-b"),
        # t > b: 1 / (a (t - b) + 1) = 1 / (10 * 1 + 1) = 1/11, then 1 / (10 * 2 + 1) = 1/21.
        pytest.param(5, 1 / 11, id="b+1"),
        pytest.param(6, 1 / 21, id="b+2"),
    ],
)
def test_hinge_is_one_up_to_b_then_decays(staleness: int, expected: float) -> None:
    factor = Hinge(a=10.0, b=4)(staleness)

    assert factor == pytest.approx(expected, rel=1e-12)


def _staleness_functions() -> st.SearchStrategy[Staleness]:
    return st.one_of(
        st.just(Constant()),
        st.builds(Polynomial, a=st.floats(min_value=0.0, max_value=5.0)),
        st.builds(
            Hinge,
            a=st.floats(min_value=1e-3, max_value=100.0),
            b=st.integers(min_value=0, max_value=20),
        ),
    )


@FAST
@given(function=_staleness_functions(), staleness=st.integers(min_value=0, max_value=10_000))
def test_staleness_is_one_when_fresh_and_non_increasing(
    function: Staleness, staleness: int
) -> None:
    fresh = function(0)
    now = function(staleness)
    later = function(staleness + 1)

    assert fresh == 1.0
    assert 0.0 < later <= now <= 1.0
    assert math.isfinite(now)


def test_polynomial_negative_exponent_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"a must be >= 0, got -1") as raised:
        Polynomial(a=-1)

    assert raised.value.field == "a"


def test_polynomial_nan_exponent_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"a must be >= 0, got nan"):
        Polynomial(a=math.nan)


@pytest.mark.parametrize(
    ("a", "b", "field", "got"),
    [
        pytest.param(0.0, 4, "a", "got a=0.0, b=4", id="a-zero"),
        pytest.param(-1.0, 4, "a", "got a=-1.0, b=4", id="a-negative"),
        pytest.param(10.0, -1, "b", "got a=10.0, b=-1", id="b-negative"),
    ],
)
def test_hinge_invalid_parameters_raise_config_error(
    a: float, b: int, field: str, got: str
) -> None:
    with pytest.raises(ConfigError, match=r"hinge staleness needs a > 0 and b >= 0") as raised:
        Hinge(a=a, b=b)

    assert got in str(raised.value)
    assert raised.value.field == field


# --- Buffered ------------------------------------------------------------------------------


def test_buffered_defaults_to_fedbuff() -> None:
    schedule = Buffered(buffer_size=3, concurrency=10)

    assert schedule.staleness == Polynomial(a=0.5)
    assert schedule.relative_to == "trained"


def test_buffered_buffer_size_equal_to_concurrency_is_valid() -> None:
    schedule = Buffered(buffer_size=2, concurrency=2, relative_to="current")

    assert (schedule.buffer_size, schedule.concurrency) == (2, 2)


def test_buffered_zero_buffer_size_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"buffer_size must be >= 1, got 0") as raised:
        Buffered(buffer_size=0, concurrency=2)

    assert (raised.value.field, raised.value.value) == ("buffer_size", 0)


def test_buffered_concurrency_below_buffer_size_raises_config_error() -> None:
    with pytest.raises(
        ConfigError,
        match=r"concurrency \(2\) must be at least buffer_size \(3\).*could never fill",
    ) as raised:
        Buffered(buffer_size=3, concurrency=2)

    assert (raised.value.field, raised.value.value) == ("concurrency", 2)


def test_buffered_unknown_relative_to_raises_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"relative_to must be 'trained' or 'current', got 'x'"
    ) as raised:
        Buffered(buffer_size=1, concurrency=1, relative_to="x")  # type: ignore[arg-type]

    assert (raised.value.field, raised.value.value) == ("relative_to", "x")


def test_sync_and_buffered_are_frozen() -> None:
    schedule = Buffered(buffer_size=1, concurrency=1)

    with pytest.raises(AttributeError):
        schedule.buffer_size = 2  # type: ignore[misc]
    assert Sync() == Sync()
