"""Clipping to an L2 ball, and adaptive clipping converging to its target quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedloom.errors import ConfigError
from fedloom.privacy import clip_update, l2_norm, next_clip_norm

finite_vectors = st.sampled_from([np.float32, np.float64]).flatmap(
    lambda dtype: arrays(
        dtype,
        st.integers(1, 64),
        elements=st.floats(-1e6, 1e6, allow_nan=False, width=32 if dtype is np.float32 else 64),
    )
)


@settings(max_examples=300, deadline=None)
@given(vector=finite_vectors, clip_norm=st.floats(1e-3, 1e3))
def test_clip_update_never_exceeds_the_clip_norm(vector: np.ndarray, clip_norm: float) -> None:
    before = vector.copy()

    clipped = clip_update(vector, clip_norm)

    assert l2_norm(clipped.astype(np.float64)) <= clip_norm * (1 + 1e-6)
    assert clipped.dtype == vector.dtype
    np.testing.assert_array_equal(vector, before)  # the input is left as it was


def test_clip_update_on_many_random_updates_stays_within_tolerance() -> None:
    """10^4 float32 updates of norms from 1e-3 to 1e3, clipped to C = 1: none above C(1 + 1e-6)."""
    rng = np.random.default_rng(0)
    updates = rng.standard_normal((10_000, 50)).astype(np.float32)
    updates *= (10.0 ** rng.uniform(-3, 3, size=(10_000, 1))).astype(np.float32)

    norms = [l2_norm(clip_update(u, 1.0).astype(np.float64)) for u in updates]

    assert max(norms) <= 1.0 + 1e-6


def test_clip_update_keeps_short_updates_and_scales_long_ones() -> None:
    # (3, 4) has norm 5: scaled by 1/5 to (0.6, 0.8); (0.3, 0.4) has norm 0.5 <= 1: unchanged
    np.testing.assert_allclose(clip_update(np.array([3.0, 4.0]), 1.0), [0.6, 0.8])
    np.testing.assert_array_equal(clip_update(np.array([0.3, 0.4]), 1.0), [0.3, 0.4])


@pytest.mark.parametrize("bad", [-1.0, 0.0, math.nan, math.inf, True, "1"])
def test_clip_update_refuses_a_clip_norm_that_is_not_positive(bad: object) -> None:
    with pytest.raises(ConfigError, match="clip_norm must be a finite number > 0") as info:
        clip_update(np.ones(3), bad)  # type: ignore[arg-type]

    assert info.value.field == "clip_norm"


def _share_within(clip_norm: float) -> float:
    """P(norm <= C) for norms ~ LogNormal(0, 0.5): Phi(ln C / 0.5)."""
    return 0.5 * (1 + math.erf(math.log(clip_norm) / 0.5 / math.sqrt(2)))


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_adaptive_clip_norm_converges_to_target_quantile(target: float) -> None:
    """Andrew et al.'s update on a synthetic stream of norms (log-normal around 1), the count
    noised as in a round of m = 100 clients (sigma_b = m / 20), starting 3x too low. The
    unclipped share (of norms at most C) jitters round to round with the sampled norms and
    the count's noise (sd ~0.03 at the median), so it is judged over windows of 10 rounds:
    rounds 41-50 and 71-80 each average the target +- 0.05."""
    rng = np.random.default_rng(1)
    clip_norm, m, sigma_b = 1 / 3, 100, 5.0
    shares = []

    for _ in range(80):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=m)
        noised = (int(np.sum(norms <= clip_norm)) + rng.normal(0.0, sigma_b)) / m
        clip_norm = next_clip_norm(
            clip_norm, fraction_within=noised, target_quantile=target, learning_rate=0.2
        )
        shares.append(_share_within(clip_norm))

    assert _share_within(1 / 3) < target - 0.1  # it did have to move
    assert abs(np.mean(shares[40:50]) - target) <= 0.05
    assert abs(np.mean(shares[70:80]) - target) <= 0.05
