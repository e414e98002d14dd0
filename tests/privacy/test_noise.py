"""Gaussian noise: its scale z*C/m, measured over 10^5 coordinates, and seeded draws."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.privacy import add_gaussian_noise, gaussian_noise_std, noised_mean


def test_noise_std_is_z_times_clip_over_m_within_two_percent() -> None:
    # z = 1.2, C = 0.5, m = 8: std = 1.2 * 0.5 / 8 = 0.075
    std = gaussian_noise_std(clip_norm=0.5, noise_multiplier=1.2, num_aggregated=8)

    noisy = add_gaussian_noise(np.zeros(100_000), std=std, rng=np.random.default_rng(7))

    assert std == pytest.approx(0.075)
    assert np.std(noisy) == pytest.approx(0.075, rel=0.02)
    assert abs(np.mean(noisy)) < 4 * 0.075 / np.sqrt(100_000)


def test_noised_mean_divides_by_count_and_adds_z_c_over_m() -> None:
    """A sum of m = 4 clipped updates, each 1.0 everywhere: the mean is 1.0 plus noise of
    std z * C / m = 2 * 1 / 4 = 0.5."""
    total = np.full(100_000, 4.0, dtype=np.float32)

    mean = noised_mean(
        total, count=4, clip_norm=1.0, noise_multiplier=2.0, rng=np.random.default_rng(3)
    )

    assert mean.dtype == np.float32
    assert np.mean(mean) == pytest.approx(1.0, abs=0.01)
    assert np.std(mean) == pytest.approx(0.5, rel=0.02)
    np.testing.assert_array_equal(total, 4.0)  # the input is left as it was


def test_add_gaussian_noise_is_reproducible_from_a_seeded_generator() -> None:
    first = add_gaussian_noise(np.ones(10), std=0.3, rng=np.random.default_rng(11))
    again = add_gaussian_noise(np.ones(10), std=0.3, rng=np.random.default_rng(11))
    other = add_gaussian_noise(np.ones(10), std=0.3, rng=np.random.default_rng(12))

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clip_norm": -1.0, "noise_multiplier": 1.0, "num_aggregated": 3}, "clip_norm"),
        ({"clip_norm": 1.0, "noise_multiplier": -0.5, "num_aggregated": 3}, "noise_multiplier"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "num_aggregated": 0}, "num_aggregated"),
    ],
)
def test_gaussian_noise_std_refuses_bad_settings(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        gaussian_noise_std(**kwargs)  # type: ignore[arg-type]

    assert info.value.field == field
