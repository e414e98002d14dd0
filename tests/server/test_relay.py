"""Relay: one round of its own federation per upstream task, forwarded as a weighted result."""

from __future__ import annotations

import pytest

from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Metrics, Weights, WeightsLike, derive_seed
from fedloom.errors import ConfigError, NotEnoughResults
from fedloom.server.relay import Relay
from fedloom.transport.inprocess import InProcessChannel


def _channel(seen: list[tuple[str, dict[str, object]]] | None = None) -> InProcessChannel:
    """Clients "a", "b", "c" with 1, 2 and 3 examples; fit sets x to 10 * (partition + 1)."""

    def client_fn(context: ClientContext) -> FunctionClient:
        index = context.partition_id

        def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
            if seen is not None:
                seen.append((context.client_id, dict(config)))
            return {"x": [10.0 * (index + 1)]}, index + 1, {"loss": float(index)}

        def evaluate(weights: Weights, config: Config) -> tuple[float, int, Metrics]:
            return float(index), index + 1, {"accuracy": 0.5 * index}

        return FunctionClient(weights={"x": [float(index)]}, fit=fit, evaluate=evaluate)

    return InProcessChannel(client_fn, num_clients=3, client_ids=["a", "b", "c"])


def test_relay_fit_returns_weighted_mean_and_total_examples() -> None:
    relay = Relay(_channel())

    result = relay.fit(Weights({"x": [0.0]}), {"server_round": 1})

    # (1 * 10 + 2 * 20 + 3 * 30) / 6 = 140 / 6; loss (1 * 0 + 2 * 1 + 3 * 2) / 6 = 8 / 6
    assert float(Weights(result.weights)["x"][0]) == pytest.approx(140 / 6)
    assert result.num_examples == 6
    assert result.metrics == {"loss": pytest.approx(8 / 6)}


def test_relay_forwards_config_and_derives_seeds_from_the_clients_own_ids() -> None:
    seen: list[tuple[str, dict[str, object]]] = []
    relay = Relay(_channel(seen), seed=11)

    relay.fit(Weights({"x": [0.0]}), {"server_round": 4, "seed": 999, "local_epochs": 2})

    assert [client_id for client_id, _ in seen] == ["a", "b", "c"]
    for client_id, config in seen:
        assert config["seed"] == derive_seed(11, "client", client_id, 4)  # as a flat server's
        assert config["server_round"] == 4
        assert config["local_epochs"] == 2


def test_relay_evaluate_forwards_weighted_loss_and_metrics() -> None:
    relay = Relay(_channel())

    result = relay.evaluate(Weights({"x": [0.0]}), {"server_round": 2})

    # losses 0, 1, 2 over 1, 2, 3 examples: 8 / 6; accuracy (0 + 2 * 0.5 + 3 * 1) / 6 = 4 / 6
    assert result.loss == pytest.approx(8 / 6)
    assert result.num_examples == 6
    assert result.metrics == {"accuracy": pytest.approx(4 / 6)}


def test_relay_get_weights_asks_its_first_client() -> None:
    assert Weights(Relay(_channel()).get_weights())["x"][0] == 0.0


def test_relay_refuses_client_plugins_and_tasks_without_a_round() -> None:
    relay = Relay(_channel())
    weights = Weights({"x": [0.0]})

    with pytest.raises(ConfigError, match=r"client plug-ins \(fedprox\) do not pass through"):
        relay.fit(weights, {"server_round": 1, "plugins": "fedprox"})
    with pytest.raises(ConfigError, match=r"without an integer 'server_round'"):
        relay.fit(weights, {})


def test_relay_with_too_few_results_fails_its_task() -> None:
    def client_fn(context: ClientContext) -> FunctionClient:
        raise RuntimeError("down")

    relay = Relay(InProcessChannel(client_fn, num_clients=2), min_fit=1)

    with pytest.raises(NotEnoughResults, match="needs at least 1 result, got 0"):
        relay.fit(Weights({"x": [0.0]}), {"server_round": 1})
