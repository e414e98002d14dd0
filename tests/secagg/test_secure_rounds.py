"""Secure aggregation as a strategy option: refusals, simulated rounds, central DP on top."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedloom import simulate
from fedloom.aggregators import Bulyan, ClippedMean, Krum, Mean, Median, MultiKrum, TrimmedMean
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Weights
from fedloom.errors import ConfigError
from fedloom.privacy import central_dp
from fedloom.secagg import SecAggPlus
from fedloom.strategies import Scaffold, Strategy
from fedloom.strategies.schedules import Buffered

logging.getLogger("fedloom").setLevel(logging.ERROR)

DIM = 6


@pytest.mark.parametrize(
    ("aggregator", "reason"),
    [
        (Median(), "Median aggregator takes the coordinate-wise median"),
        (TrimmedMean(beta=0.1), "TrimmedMean aggregator sorts each coordinate"),
        (Krum(f=1), "Krum aggregator compares the individual updates"),
        (MultiKrum(f=1, m=2), "MultiKrum aggregator compares the individual updates"),
        (Bulyan(f=1), "Bulyan aggregator compares and sorts"),
        (ClippedMean(clip_norm=1.0), "ClippedMean aggregator clips each update on the server"),
    ],
)
def test_secure_aggregation_refuses_aggregators_that_need_individual_updates(
    aggregator: object, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        Strategy(aggregator=aggregator, secure_aggregation=SecAggPlus())  # type: ignore[arg-type]

    assert "shows the server only the sum" in str(caught.value)
    assert caught.value.field == "aggregator"


def test_secure_aggregation_refuses_async_schedules_and_server_side_plugins() -> None:
    with pytest.raises(ConfigError, match="synchronous rounds"):
        Strategy(schedule=Buffered(buffer_size=2, concurrency=4), secure_aggregation=SecAggPlus())
    with pytest.raises(ConfigError, match="scaffold plug-in adjusts each client's update"):
        Strategy(plugins=(Scaffold(),), secure_aggregation=SecAggPlus())


def _client_fn(context: ClientContext) -> FunctionClient:
    """Client i pulls the weights a quarter of the way towards i / 10, with i + 1 examples."""
    target = context.partition_id / 10.0

    def fit(
        weights: Weights, config: Config
    ) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        if context.partition_id == 3 and config["server_round"] == 2:
            raise RuntimeError("client 3 drops out in round 2")
        return {"x": weights["x"] + 0.25 * (target - weights["x"])}, context.partition_id + 1, {}

    return FunctionClient(weights={"x": np.zeros(DIM)}, fit=fit)


@pytest.mark.e2e
def test_simulate_with_secure_aggregation_matches_plain_fedavg_within_quantization_error() -> None:
    plain = simulate(_client_fn, num_clients=12, rounds=3, strategy=Strategy(evaluate_sampler=None))
    secure = simulate(
        _client_fn,
        num_clients=12,
        rounds=3,
        strategy=Strategy(evaluate_sampler=None, secure_aggregation=SecAggPlus(clipping_range=1.0)),
    )

    # each round's mean is off by less than one step (2 / (2^24 - 1) = 1.2e-7): 3 rounds
    assert np.abs(secure.weights.flat - plain.weights.flat).max() < 3 * 2.0 / (2**24 - 1)
    assert not np.array_equal(
        secure.weights.flat, plain.weights.flat
    )  # it went through quantization
    records = list(secure.history)
    assert [r.num_results for r in records] == [12, 11, 12]
    assert "client 3 drops out in round 2" in records[1].failures["3"]


@pytest.mark.e2e
@pytest.mark.parametrize("target_quantile", [None, 0.5])
def test_secure_aggregation_composes_with_central_dp(target_quantile: float | None) -> None:
    """Clients clip before masking and the server noises the unmasked sum: the same release
    as central DP alone (seeded noise), up to quantization. With adaptive clipping the
    count of updates within the clip norm is summed securely too."""

    def strategy(secure: SecAggPlus | None) -> Strategy:
        dp = central_dp(
            noise_multiplier=0.5,
            clip_norm=0.05,
            target_quantile=target_quantile,
            reproducible=True,
        )
        return Strategy(
            aggregator=Mean(), privacy=dp, evaluate_sampler=None, secure_aggregation=secure
        )

    plain = simulate(_client_fn, num_clients=8, rounds=2, strategy=strategy(None), seed=3)
    secure = simulate(
        _client_fn,
        num_clients=8,
        rounds=2,
        strategy=strategy(SecAggPlus(clipping_range=0.1)),
        seed=3,
    )

    assert np.abs(secure.weights.flat - plain.weights.flat).max() < 1e-6
    noise_free = np.full(DIM, 0.0)
    assert np.abs(secure.weights.flat - noise_free).max() > 1e-3  # noise was added
    last = secure.history[-1].metrics
    assert last["privacy.epsilon"] == plain.history[-1].metrics["privacy.epsilon"]
    if target_quantile is None:
        assert last["privacy.noise_std"] == pytest.approx(0.5 * 0.05 / 8)  # z * C / m
    else:  # the clip norm moved the same way: the same count of updates within it
        assert last["privacy.clip_norm"] == plain.history[-1].metrics["privacy.clip_norm"]
        assert last["privacy.clip_norm"] != 0.05
