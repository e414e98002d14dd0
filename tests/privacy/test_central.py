"""Central DP in the strategy: clipping, noise z*C/m, dropouts, adaptive clipping, epsilon."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedloom import simulate
from fedloom.aggregators import Median
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Metrics, Weights, WeightsLike
from fedloom.errors import ConfigError
from fedloom.observe import format_metrics
from fedloom.privacy import AdaptiveClip, CentralDP, FixedClip, central_dp, l2_norm
from fedloom.strategies import Buffered, FitResult, Fraction, Scaffold, Strategy

DIM = 100_000


def _results(updates: list[np.ndarray], base: Weights) -> list[FitResult]:
    """Fit results whose update (new - global weights) is each of `updates`."""
    return [
        FitResult(f"c{i}", Weights({"x": base["x"] + update}), 10 * (i + 1), {})
        for i, update in enumerate(updates)
    ]


def _strategy(**privacy: object) -> Strategy:
    settings: dict[str, object] = {"noise_multiplier": 1.0, "clip_norm": 1.0, "reproducible": True}
    settings.update(privacy)
    return Strategy(privacy=central_dp(**settings))  # type: ignore[arg-type]


def test_central_dp_noise_std_is_z_c_over_m_within_two_percent() -> None:
    """m = 4 clients send zero updates: the new weights are pure noise, std z*C/m = 1.5*2/4."""
    strategy = _strategy(noise_multiplier=1.5, clip_norm=2.0)
    state = strategy.init(Weights({"x": np.zeros(DIM)}))

    new, _ = strategy.aggregate_fit(
        1, state, _results([np.zeros(DIM)] * 4, state.weights), rng=np.random.default_rng(0)
    )

    assert np.std(new.weights["x"]) == pytest.approx(1.5 * 2.0 / 4, rel=0.02)
    assert abs(np.mean(new.weights["x"])) < 4 * 0.75 / math.sqrt(DIM)


def test_central_dp_clips_each_update_and_ignores_example_counts() -> None:
    """Updates (3, 4) (norm 5) and (0, 0.5), C = 1: clipped to (0.6, 0.8) and (0, 0.5); their
    uniform mean is (0.3, 0.65), whatever their example counts (10 and 20). Noise is made
    negligible (z = 1e-9) to see the mean."""
    strategy = _strategy(noise_multiplier=1e-9)
    state = strategy.init(Weights({"x": np.zeros(2)}))
    updates = [np.array([3.0, 4.0]), np.array([0.0, 0.5])]

    new, _ = strategy.aggregate_fit(1, state, _results(updates, state.weights))

    np.testing.assert_allclose(new.weights["x"], [0.3, 0.65], atol=1e-6)


def test_dp_fold_never_sums_an_update_above_the_clip_norm() -> None:
    """Each update is folded alone: its contribution to the sum has norm <= C(1 + 1e-6)."""
    dp = CentralDP(clip=FixedClip(clip_norm=0.7), noise_multiplier=1.0)
    rng = np.random.default_rng(5)

    for scale in 10.0 ** np.arange(-3, 4):
        fold = dp.fold(dp.init(), 1000, np.float32)
        fold.add((rng.standard_normal(1000) * scale).astype(np.float32))
        assert l2_norm(fold.total) <= 0.7 * (1 + 1e-6)


@pytest.mark.parametrize(
    ("calibration", "expected_mean", "expected_std"),
    [
        # 4 of 5 planned clients return update 0.5 everywhere (norm <= C = 1000): "planned"
        # divides by 5 (mean 0.4, std z*C/5 = 0.02 * 1000 / 5 = 4); "actual" by 4 (0.5, 5)
        ("planned", 0.4, 4.0),
        ("actual", 0.5, 5.0),
    ],
)
def test_central_dp_dropouts_follow_the_calibration(
    calibration: str, expected_mean: float, expected_std: float
) -> None:
    strategy = _strategy(noise_multiplier=0.02, clip_norm=1000.0, calibration=calibration)
    state = strategy.init(Weights({"x": np.zeros(DIM)}))
    updates = [np.full(DIM, 0.5)] * 4
    assert l2_norm(updates[0]) < 1000.0

    new, _ = strategy.aggregate_fit(
        1, state, _results(updates, state.weights), num_sampled=5, rng=np.random.default_rng(1)
    )

    x = new.weights["x"]
    assert np.mean(x) == pytest.approx(expected_mean, abs=0.05)
    assert np.std(x) == pytest.approx(expected_std, rel=0.02)
    assert new.privacy is not None
    assert new.privacy.noise_std == pytest.approx(expected_std)


def test_central_dp_adaptive_clipping_moves_the_norm_and_splits_the_noise() -> None:
    """Every update has norm 5 > C = 1, so the noised unclipped share is about 0 and the norm
    grows by about exp(0.2 * 0.5). The update noise multiplier is (z^-2 - (2 sigma_b)^-2)^-1/2
    = (1 - 1/16)^-1/2 for z = 1, sigma_b = 2."""
    dp = CentralDP(
        clip=AdaptiveClip(initial_norm=1.0, target_quantile=0.5, count_noise_std=2.0),
        noise_multiplier=1.0,
        reproducible=True,
    )
    strategy = Strategy(privacy=dp)
    state = strategy.init(Weights({"x": np.zeros(4)}))
    updates = [np.array([3.0, 4.0, 0.0, 0.0])] * 200

    new, _ = strategy.aggregate_fit(
        1, state, _results(updates, state.weights), rng=np.random.default_rng(2)
    )

    assert new.privacy is not None
    assert dp.update_noise_multiplier(200) == pytest.approx((1 - 1 / 16) ** -0.5)
    assert new.privacy.fraction_unclipped == pytest.approx(0.0, abs=0.05)
    assert new.privacy.clip_norm == pytest.approx(math.exp(0.2 * 0.5), rel=0.02)
    assert strategy.privacy_metrics(new)["privacy.clip_norm"] == new.privacy.clip_norm


def _steady(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
    return {"x": weights["x"] + 0.1}, 5, {}


def _client_fn(context: ClientContext) -> FunctionClient:
    return FunctionClient(weights={"x": np.zeros(3)}, fit=_steady)


@pytest.mark.parametrize(
    ("accountant", "library", "fraction"),
    [("rdp", RDPAccountant, 1.0), ("rdp", RDPAccountant, 0.5), ("prv", PRVAccountant, 1.0)],
)
def test_central_dp_reported_epsilon_matches_the_accountant_library(
    accountant: str, library: Callable[[], RDPAccountant], fraction: float
) -> None:
    """5 rounds of 4 (or 2 of 4: sample rate 0.5) clients, z = 1.1: each round's
    privacy.epsilon is what Opacus' accountant reports after as many steps of (z, rate)."""
    dp = central_dp(noise_multiplier=1.1, clip_norm=1.0, delta=1e-5, accountant=accountant)
    strategy = Strategy(privacy=dp, sampler=Fraction(fraction=fraction))

    result = simulate(_client_fn, num_clients=4, rounds=5, strategy=strategy)

    reported = result.history.series("privacy.epsilon")
    reference = library()
    for _, epsilon in reported:
        reference.step(noise_multiplier=1.1, sample_rate=fraction)
        with np.errstate(divide="ignore"):  # PRV at rate 1 takes log(0) on the way
            expected = reference.get_epsilon(delta=1e-5)
        assert epsilon == pytest.approx(expected, rel=1e-9)
    assert [r for r, _ in reported] == [1, 2, 3, 4, 5]
    assert all(a < b for (_, a), (_, b) in itertools.pairwise(reported))
    assert result.history.last("privacy.delta") == 1e-5


def test_central_dp_epsilon_is_in_the_progress_line() -> None:
    """The progress line shows at most 4 metrics, central first, plus privacy.epsilon always."""
    metrics = {
        "central.accuracy": 0.9,
        "central.loss": 0.3,
        "evaluate.accuracy": 0.8,
        "evaluate.loss": 0.4,
        "fit.loss": 0.5,
        "privacy.epsilon": 2.5,
        "privacy.clip_norm": 1.0,
    }

    line = format_metrics(metrics)

    assert line.endswith("privacy.epsilon=2.5000")
    assert "fit.loss" not in line


def test_central_dp_noise_comes_from_the_os_unless_reproducible() -> None:
    runs = {
        reproducible: [
            simulate(
                _client_fn,
                num_clients=3,
                rounds=1,
                strategy=Strategy(
                    privacy=central_dp(
                        noise_multiplier=1.0, clip_norm=1.0, reproducible=reproducible
                    )
                ),
                seed=4,
            ).weights["x"]
            for _ in range(2)
        ]
        for reproducible in (True, False)
    }

    np.testing.assert_array_equal(runs[True][0], runs[True][1])
    assert not np.array_equal(runs[False][0], runs[False][1])


@pytest.mark.parametrize(
    ("settings", "field", "phrase"),
    [
        ({"clip_norm": -1.0}, "clip_norm", "clip_norm must be a finite number > 0"),
        ({"noise_multiplier": -0.1}, "noise_multiplier", "noise_multiplier must be a finite"),
        ({"delta": 1.0}, "delta", r"delta must be a number in \(0, 1\)"),
        (
            {"target_quantile": 1.2},
            "target_quantile",
            r"target_quantile must be a number in \(0, 1\)",
        ),
        (
            {"target_quantile": 0.0},
            "target_quantile",
            r"target_quantile must be a number in \(0, 1\)",
        ),
        ({"calibration": "plan"}, "calibration", "Did you mean 'planned'"),
        ({"accountant": "gdp"}, "accountant", "choose one of: rdp, prv"),
        ({"count_noise_std": 2.0}, "count_noise_std", "applies to adaptive clipping only"),
        (
            {"target_quantile": 0.5, "count_noise_std": 0.4},
            "count_noise_std",
            "must exceed noise_multiplier / 2",
        ),
    ],
)
def test_central_dp_bad_settings_name_the_field(
    settings: dict[str, object], field: str, phrase: str
) -> None:
    values: dict[str, object] = {"noise_multiplier": 1.0, "clip_norm": 1.0, **settings}

    with pytest.raises(ConfigError, match=phrase) as info:
        central_dp(**values)  # type: ignore[arg-type]

    assert info.value.field == field


def test_central_dp_refuses_robust_aggregators_and_leaky_plugins() -> None:
    dp = central_dp(noise_multiplier=1.0, clip_norm=1.0)

    with pytest.raises(ConfigError, match="cannot use the Median aggregator"):
        Strategy(privacy=dp, aggregator=Median())
    with pytest.raises(ConfigError, match="scaffold plug-in sends each client's control"):
        Strategy(privacy=dp, plugins=(Scaffold(),))


def test_central_dp_with_an_async_buffer_plans_the_buffer_size() -> None:
    """FedBuff with K = 2 of 4 clients: each aggregation plans 2 updates (m = K) and is one
    step of the mechanism at sample rate 2/4 for the accountant; the clipped mean moves x."""
    strategy = Strategy(
        schedule=Buffered(buffer_size=2, concurrency=4),
        privacy=central_dp(noise_multiplier=1.0, clip_norm=10.0, reproducible=True),
    )

    result = simulate(_client_fn, num_clients=4, rounds=3, strategy=strategy)

    reference = RDPAccountant()
    for _, epsilon in result.history.series("privacy.epsilon"):
        reference.step(noise_multiplier=1.0, sample_rate=0.5)
        assert epsilon == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)
    assert result.history.last("privacy.noise_std") == pytest.approx(1.0 * 10.0 / 2)
    assert len(result.history.series("privacy.epsilon")) == 3
