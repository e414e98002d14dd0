"""Simulated fleets: offline clients, stragglers past the deadline, and slow clients in FedBuff."""

from __future__ import annotations

import pytest

from fedloom import ClientContext, simulate
from fedloom.client import FunctionClient
from fedloom.errors import ConfigError, NotEnoughResults
from fedloom.simulation import Fleet
from fedloom.strategies import fedavg, fedbuff


def _client_fn(context: ClientContext) -> FunctionClient:
    """Client i moves the model to i squared: a FedAvg round averages the squares it gets."""
    target = float(context.partition_id) ** 2
    return FunctionClient(weights={"x": [0.0]}, fit=lambda w, config: ({"x": [target]}, 1, {}))


def test_fleet_offline_clients_fail_their_round_and_the_round_goes_on() -> None:
    fleet = Fleet(availability=0.5, seed=7)

    result = simulate(
        _client_fn,
        num_clients=20,
        rounds=3,
        strategy=fedavg(fraction_evaluate=0.0),
        fleet=fleet,
        initial_weights={"x": [0.0]},
    )

    offline_total = 0
    for record in result.history:
        # exactly the clients the seeded draw takes offline fail, each with the reason
        offline = {str(i) for i in range(20) if not fleet.online(str(i), record.server_round)}
        assert set(record.failures) == offline
        for client_id, reason in record.failures.items():
            assert f"client '{client_id}' is offline in round {record.server_round}" in reason
        assert record.num_results == 20 - len(offline)
        offline_total += len(offline)
    assert 0 < offline_total < 60  # about half of the 60 tasks


def test_fleet_straggler_past_the_deadline_is_dropped_like_a_deadline_miss() -> None:
    """Client "1" needs 5 virtual s; the deadline is 2 s: only clients 0 and 2 count."""
    fleet = Fleet(profile=lambda client_id: (5.0 if client_id == "1" else 1.0, 1.0))

    result = simulate(
        _client_fn,
        num_clients=3,
        rounds=1,
        strategy=fedavg(fraction_evaluate=0.0),
        fleet=fleet,
        fit_timeout_s=2.0,
        initial_weights={"x": [0.0]},
    )

    record = result.history[0]
    assert record.num_results == 2
    assert list(record.failures) == ["1"]
    assert "missed the deadline of round 1" in record.failures["1"]
    # the mean of 0^2 and 2^2 (with client 1 it would be 5/3)
    assert float(result.weights["x"][0]) == pytest.approx(2.0)


def test_fleet_too_few_online_clients_stop_the_run_with_the_reasons() -> None:
    with pytest.raises(NotEnoughResults, match="is offline in round 1"):
        simulate(
            _client_fn,
            num_clients=4,
            rounds=2,
            strategy=fedavg(fraction_evaluate=0.0, min_fit=4),
            fleet=Fleet(availability=0.3, seed=0),
            initial_weights={"x": [0.0]},
        )


def test_fleet_slow_client_arrives_stale_in_fedbuff() -> None:
    """Client "0" takes 4 virtual s, the others 1: its update arrives versions late.

    All 4 clients train at once; the 3 fast ones bring 3 results a virtual second,
    so with K = 2 the model moves 1.5 versions a second while client "0" trains.
    """
    strategy = fedbuff(buffer_size=2, concurrency=4)

    equal = simulate(_client_fn, num_clients=4, rounds=8, strategy=strategy, fleet=Fleet())
    skewed = simulate(
        _client_fn,
        num_clients=4,
        rounds=8,
        strategy=strategy,
        fleet=Fleet(profile=lambda client_id: (4.0 if client_id == "0" else 1.0, 1.0)),
    )

    # equal speeds: results trained on the last two versions; the slow one: 4 or more back
    assert max(value for _, value in equal.history.series("staleness.max")) <= 2
    assert max(value for _, value in skewed.history.series("staleness.max")) >= 4


def test_fleet_draws_are_seeded_per_client() -> None:
    fleet = Fleet(task_s=2.0, spread=1.0, availability=0.5, seed=3)
    again = Fleet(task_s=2.0, spread=1.0, availability=0.5, seed=3)

    speeds = [fleet.task_seconds(str(i)) for i in range(50)]

    assert speeds == [again.task_seconds(str(i)) for i in range(50)]
    assert len(set(speeds)) == 50  # a spread gives every client its own speed
    assert sorted(speeds)[25] == pytest.approx(2.0, rel=0.5)  # the median is about task_s
    assert Fleet(task_s=2.0).task_seconds("9") == 2.0
    online = [fleet.online("4", server_round) for server_round in range(1, 41)]
    assert online == [again.online("4", r) for r in range(1, 41)]
    assert 5 < sum(online) < 35


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task_s": 0.0}, "task_s must be a finite number > 0"),
        ({"spread": -1.0}, "spread must be a finite number >= 0"),
        ({"availability": 0.0}, r"availability must be in \(0, 1\]"),
        ({"availability": 1.5}, r"availability must be in \(0, 1\]"),
    ],
)
def test_fleet_rejects_invalid_parameters(options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Fleet(**options)  # type: ignore[arg-type]
