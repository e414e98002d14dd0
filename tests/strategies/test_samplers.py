"""Samplers: who takes part in a round (All, Fraction, Count)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedloom.core import generator
from fedloom.errors import ConfigError
from fedloom.strategies import All, Count, Fraction, Sampler
from generators import FAST, client_ids

CLIENTS = [f"c{i}" for i in range(10)]


def _is_ordered_subset(chosen: list[str], available: list[str]) -> bool:
    """True when `chosen` holds distinct members of `available`, in `available`'s order."""
    positions = [available.index(client_id) for client_id in chosen]
    return positions == sorted(set(positions))


# --- All -------------------------------------------------------------------------------


def test_all_picks_every_available_client_in_order() -> None:
    chosen = All().sample(CLIENTS, generator(0))

    assert chosen == CLIENTS


def test_all_of_no_clients_is_empty() -> None:
    chosen = All().sample([], generator(0))

    assert chosen == []


# --- Fraction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        # ceil(fraction * 10): 0.1 -> 1, 0.25 -> ceil(2.5) = 3, 0.5 -> 5, 1.0 -> 10.
        (0.1, 1),
        (0.25, 3),
        (0.5, 5),
        (1.0, 10),
    ],
)
def test_fraction_picks_ceil_of_the_share(fraction: float, expected: int) -> None:
    chosen = Fraction(fraction=fraction).sample(CLIENTS, generator(0))

    assert len(chosen) == expected
    assert _is_ordered_subset(chosen, CLIENTS)


@pytest.mark.parametrize(
    ("fraction", "num_available", "expected"),
    [
        # The float product overshoots the whole number: 0.07 * 100 = 7.000000000000001,
        # 0.14 * 50 = 7.000000000000001, 0.28 * 25 = 7.000000000000001. 7% of 100 is 7.
        (0.07, 100, 7),
        (0.14, 50, 7),
        (0.28, 25, 7),
    ],
)
def test_fraction_share_has_no_float_rounding_error(
    fraction: float, num_available: int, expected: int
) -> None:
    available = [f"c{i}" for i in range(num_available)]

    chosen = Fraction(fraction=fraction).sample(available, generator(0))

    assert len(chosen) == expected


def test_fraction_picks_at_least_min_clients() -> None:
    sampler = Fraction(fraction=0.1, min_clients=3)

    chosen = sampler.sample(CLIENTS, generator(0))

    # ceil(0.1 * 10) = 1 < min_clients = 3, so 3.
    assert len(chosen) == 3


def test_fraction_picks_all_when_min_clients_exceeds_available() -> None:
    sampler = Fraction(fraction=0.5, min_clients=20)

    chosen = sampler.sample(CLIENTS, generator(0))

    assert chosen == CLIENTS


@FAST
@given(
    available=client_ids(),
    percent=st.integers(1, 100),
    min_clients=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
@example(available=[f"c{i}" for i in range(100)], percent=7, min_clients=1, seed=0)
def test_fraction_picks_the_right_number_of_available_clients_in_order(
    available: list[str], percent: int, min_clients: int, seed: int
) -> None:
    sampler = Fraction(fraction=percent / 100, min_clients=min_clients)

    chosen = sampler.sample(available, generator(seed, "round", 1))

    # ceil(percent * n / 100) in exact integer arithmetic, raised to min_clients, capped at n.
    share = -(-percent * len(available) // 100)
    assert len(chosen) == min(len(available), max(min_clients, share))
    assert _is_ordered_subset(chosen, available)


@pytest.mark.parametrize("fraction", [1.5, 0, 0.0, -0.1])
def test_fraction_rejects_a_fraction_outside_zero_one(fraction: float) -> None:
    with pytest.raises(
        ConfigError, match=rf"fraction must be in \(0, 1\], got {fraction}\. Pass a fraction"
    ) as info:
        Fraction(fraction=fraction)

    assert info.value.field == "fraction"
    assert info.value.value == fraction


def test_fraction_rejects_min_clients_below_one() -> None:
    with pytest.raises(ConfigError, match="min_clients must be >= 1, got 0") as info:
        Fraction(fraction=0.5, min_clients=0)

    assert info.value.field == "min_clients"


# --- Count -----------------------------------------------------------------------------


def test_count_picks_k_clients_in_available_order() -> None:
    chosen = Count(k=3).sample(CLIENTS, generator(0))

    assert len(chosen) == 3
    assert _is_ordered_subset(chosen, CLIENTS)


def test_count_picks_all_when_fewer_are_available() -> None:
    chosen = Count(k=20).sample(CLIENTS, generator(0))

    assert chosen == CLIENTS


@FAST
@given(available=client_ids(), k=st.integers(1, 25), seed=st.integers(0, 2**32 - 1))
def test_count_picks_min_of_k_and_available(available: list[str], k: int, seed: int) -> None:
    chosen = Count(k=k).sample(available, generator(seed))

    assert len(chosen) == min(k, len(available))
    assert _is_ordered_subset(chosen, available)


@pytest.mark.parametrize("k", [0, -1])
def test_count_rejects_k_below_one(k: int) -> None:
    with pytest.raises(
        ConfigError, match=f"k must be >= 1, got {k}. Pass how many clients"
    ) as info:
        Count(k=k)

    assert info.value.field == "k"


# --- determinism -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler", [All(), Fraction(fraction=0.3), Count(k=4)], ids=lambda s: type(s).__name__
)
@FAST
@given(available=client_ids(min_size=1), seed=st.integers(0, 2**32 - 1))
def test_sampler_is_deterministic_for_a_seeded_rng(
    sampler: Sampler, available: list[str], seed: int
) -> None:
    first = sampler.sample(available, generator(seed, "round", 3))

    second = sampler.sample(available, generator(seed, "round", 3))

    assert first == second


def test_sampler_draws_differ_across_seeds() -> None:
    sampler = Count(k=5)
    available = [f"c{i}" for i in range(100)]

    draws = {tuple(sampler.sample(available, generator(seed))) for seed in range(10)}

    # 10 draws of 5 out of 100 (75 287 520 subsets) repeat only by wild coincidence.
    assert len(draws) == 10
