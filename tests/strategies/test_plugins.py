"""Client plug-ins: their client config, validation, and server halves in Strategy and the loop."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedloom.core import Config, FitRes, Metrics, Vector, Weights, generator
from fedloom.errors import ConfigError, InvalidResult
from fedloom.server import Orchestrator
from fedloom.strategies import FitResult, Strategy
from fedloom.strategies.plugins import (
    Elastic,
    FedNova,
    FedProx,
    Lasso,
    LocalOptimizer,
    Plugin,
    Ridge,
    Scaffold,
)
from fedloom.transport.inprocess import InProcessChannel

CLIENTS = ["a", "b", "c", "d"]


def _weights(values: list[float]) -> Weights:
    return Weights({"w": np.array(values)})


def _result(
    client_id: str,
    values: list[float],
    num_examples: int,
    *,
    metrics: Metrics | None = None,
    **tensors: list[float],
) -> FitResult:
    """A checked fit result; keyword tensors are named with '__' for '.' (scaffold__delta_c)."""
    named = {name.replace("__", "."): np.array(value) for name, value in tensors.items()}
    return FitResult(client_id, _weights(values), num_examples, metrics or {}, named)


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(("mu", "shown"), [(-0.1, "-0.1"), (math.nan, "nan"), (True, "True")])
def test_fedprox_rejects_mu_that_is_not_a_number_at_least_0(mu: float, shown: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"mu must be a number >= 0, got {shown}\. Typical values are 0\.001"
    ) as info:
        FedProx(mu=mu)

    assert info.value.field == "mu"


@pytest.mark.parametrize("plugin", [Ridge, Lasso])
def test_regularizers_reject_negative_strength(plugin: type[Ridge | Lasso]) -> None:
    with pytest.raises(
        ConfigError, match=r"strength must be a number >= 0, got -1\.0\. Use e\.g\."
    ):
        plugin(strength=-1.0)


def test_local_optimizer_rejects_unknown_kind_listing_the_choices() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown local optimizer 'adamw'; choose one of: sgd, momentum, adam\.",
    ) as info:
        LocalOptimizer(kind="adamw")

    assert (info.value.field, info.value.value) == ("kind", "adamw")


@pytest.mark.parametrize(("lr", "shown"), [(0.0, "0.0"), (-0.1, "-0.1"), (math.inf, "inf")])
def test_local_optimizer_rejects_lr_that_is_not_positive(lr: float, shown: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"lr must be a positive number, got {shown}\. Pass the clients'"
    ) as info:
        LocalOptimizer(lr=lr)

    assert info.value.field == "lr"


@pytest.mark.parametrize("momentum", [1.0, -0.1])
def test_local_optimizer_rejects_momentum_outside_0_to_1(momentum: float) -> None:
    with pytest.raises(
        ConfigError, match=rf"momentum must be a number in \[0, 1\), got {momentum}\."
    ):
        LocalOptimizer(momentum=momentum)


def test_elastic_rejects_negative_tau() -> None:
    with pytest.raises(ConfigError, match=r"tau must be a number >= 0, got -0\.5\. The paper uses"):
        Elastic(tau=-0.5)


def test_strategy_rejects_a_plugin_given_twice() -> None:
    with pytest.raises(
        ConfigError, match=r"each client plug-in may appear once, got \['fedprox'\] more than once"
    ) as info:
        Strategy(plugins=(FedProx(mu=0.1), Scaffold(), FedProx(mu=0.2)))

    assert info.value.field == "plugins"
    assert info.value.value == ["fedprox", "scaffold", "fedprox"]


# --- client config ---------------------------------------------------------------------


def test_strategy_configure_fit_names_the_plugins_and_their_parameters() -> None:
    strategy = Strategy(
        config={"local_epochs": 2},
        plugins=(FedProx(mu=0.01), Ridge(strength=1e-4), LocalOptimizer(kind="adam", lr=0.001)),
    )
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    tasks = strategy.configure_fit(1, state, CLIENTS, generator(0, "round", 1))

    for task in tasks.values():
        config = task.config
        assert config["plugins"] == "fedprox,ridge,optimizer"
        assert config["fedprox.mu"] == 0.01
        assert config["ridge.strength"] == 1e-4
        assert (config["optimizer.kind"], config["optimizer.lr"]) == ("adam", 0.001)
        assert "optimizer.momentum" not in config  # only momentum SGD reads it
        assert (config["local_epochs"], config["server_round"]) == (2, 1)
        assert task.tensors == {}


def test_strategy_without_plugins_sends_no_plugin_keys_or_tensors() -> None:
    strategy = Strategy()
    state = strategy.init(_weights([0.0]))

    tasks = strategy.configure_fit(1, state, CLIENTS, generator(0, "round", 1))

    for task in tasks.values():
        assert task.config == {"server_round": 1}
        assert task.tensors == {}


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (FedProx(mu=0.01), {"fedprox.mu": 0.01}),
        (Lasso(strength=0.5), {"lasso.strength": 0.5}),
        (
            LocalOptimizer(kind="momentum", lr=0.1, momentum=0.5),
            {"optimizer.kind": "momentum", "optimizer.lr": 0.1, "optimizer.momentum": 0.5},
        ),
        (Scaffold(), {}),
        (FedNova(), {}),
        (Elastic(tau=0.25), {"elastic.tau": 0.25}),
    ],
)
def test_plugin_client_config_holds_exactly_its_parameters(
    plugin: Plugin, expected: dict[str, Any]
) -> None:
    assert plugin.client_config() == expected


def test_strategy_configure_fit_sends_only_scalar_config_values() -> None:
    strategy = Strategy(plugins=(Scaffold(), Elastic()))
    state = strategy.init(_weights([0.0]))

    tasks = strategy.configure_fit(1, state, CLIENTS, generator(0, "round", 1))

    for task in tasks.values():
        assert all(isinstance(v, bool | int | float | str) for v in task.config.values())


def test_strategy_get_config_with_plugins_round_trips_through_json() -> None:
    config = Strategy(plugins=(Scaffold(), Elastic(tau=0.25))).get_config()

    assert json.loads(json.dumps(config)) == config
    assert config["plugins"] == [{"name": "Scaffold"}, {"name": "Elastic", "tau": 0.25}]


def test_strategy_required_tensors_lists_every_plugins_tensors_in_order() -> None:
    strategy = Strategy(plugins=(FedProx(mu=0.1), Scaffold(), FedNova(), Elastic()))

    required = strategy.required_tensors

    # FedProx and FedNova need none; FedNova reads a metric, not a tensor.
    assert required == ("scaffold.delta_c", "elastic.sensitivity")
    assert Strategy().required_tensors == ()


# --- SCAFFOLD --------------------------------------------------------------------------


def test_scaffold_init_state_holds_a_zero_control_variate() -> None:
    strategy = Strategy(plugins=(Scaffold(),))

    state = strategy.init(_weights([1.0, 2.0, 3.0]))

    assert list(state.plugins) == ["scaffold.c"]
    np.testing.assert_array_equal(state.plugins["scaffold.c"], [0.0, 0.0, 0.0])
    assert state.plugins["scaffold.c"].dtype == np.float64


def test_scaffold_configure_fit_sends_c_and_names_the_plugin() -> None:
    strategy = Strategy(plugins=(Scaffold(),))
    state = strategy.init(_weights([1.0, 2.0, 3.0]))
    state = replace(state, plugins={"scaffold.c": np.array([0.5, -0.5, 1.0])})

    tasks = strategy.configure_fit(1, state, CLIENTS, generator(0, "round", 1))

    assert list(tasks) == CLIENTS
    for task in tasks.values():
        assert task.config["plugins"] == "scaffold"
        assert list(task.tensors) == ["scaffold.c"]
        np.testing.assert_array_equal(task.tensors["scaffold.c"], [0.5, -0.5, 1.0])


def test_scaffold_aggregate_fit_moves_c_by_the_sampled_share_of_the_mean_delta() -> None:
    strategy = Strategy(plugins=(Scaffold(),))
    state = strategy.init(_weights([0.0, 0.0, 0.0]))
    state = replace(state, plugins={"scaffold.c": np.array([1.0, 1.0, 1.0])})
    results = [
        _result("a", [1.0, 2.0, 3.0], 1, scaffold__delta_c=[4.0, 0.0, 0.0]),
        _result("b", [3.0, 2.0, 1.0], 3, scaffold__delta_c=[0.0, 4.0, 8.0]),
    ]

    new_state, _ = strategy.aggregate_fit(1, state, results, num_available=4)

    # mean(delta_c) = (1 * [4, 0, 0] + 3 * [0, 4, 8]) / 4 = [4, 12, 24] / 4 = [1, 3, 6];
    # |S| / N = 2 / 4 = 0.5, so c = [1, 1, 1] + 0.5 * [1, 3, 6] = [1.5, 2.5, 4].
    np.testing.assert_array_equal(new_state.plugins["scaffold.c"], [1.5, 2.5, 4.0])
    # The model moves as plain FedAvg: (1 * [1, 2, 3] + 3 * [3, 2, 1]) / 4 = [2.5, 2, 1.5].
    np.testing.assert_array_equal(new_state.weights.flat, [2.5, 2.0, 1.5])
    np.testing.assert_array_equal(state.plugins["scaffold.c"], [1.0, 1.0, 1.0])


def test_scaffold_aggregate_fit_without_num_available_takes_the_whole_mean_delta() -> None:
    strategy = Strategy(plugins=(Scaffold(),))
    state = strategy.init(_weights([0.0, 0.0, 0.0]))
    state = replace(state, plugins={"scaffold.c": np.array([1.0, 1.0, 1.0])})
    results = [
        _result("a", [1.0, 2.0, 3.0], 1, scaffold__delta_c=[4.0, 0.0, 0.0]),
        _result("b", [3.0, 2.0, 1.0], 3, scaffold__delta_c=[0.0, 4.0, 8.0]),
    ]

    new_state, _ = strategy.aggregate_fit(1, state, results)

    # N defaults to |S| = 2, so c = [1, 1, 1] + 1 * [1, 3, 6] = [2, 4, 7].
    np.testing.assert_array_equal(new_state.plugins["scaffold.c"], [2.0, 4.0, 7.0])


# --- FedNova ---------------------------------------------------------------------------


def test_fednova_aggregate_fit_rescales_the_normalized_mean_by_tau_eff() -> None:
    strategy = Strategy(plugins=(FedNova(),))
    state = strategy.init(_weights([0.0, 0.0, 0.0]))
    results = [
        _result("a", [2.0, 0.0, 1.0], 1, metrics={"fednova.a": 1}),
        _result("b", [4.0, 8.0, 0.0], 1, metrics={"fednova.a": 4}),
    ]

    new_state, metrics = strategy.aggregate_fit(1, state, results)

    # d_a = [2, 0, 1] / 1 = [2, 0, 1]; d_b = [4, 8, 0] / 4 = [1, 2, 0]; p = (1/2, 1/2):
    # mean d = [1.5, 1, 0.5]; tau_eff = (1 + 4) / 2 = 2.5; update = 2.5 * [1.5, 1, 0.5]
    # = [3.75, 2.5, 1.25]. (FedAvg would give [3, 4, 0.5], pulled towards b's 4 steps.)
    np.testing.assert_array_equal(new_state.weights.flat, [3.75, 2.5, 1.25])
    assert metrics == {"fednova.a": 2.5}


def test_fednova_aggregate_fit_weights_steps_and_updates_by_examples() -> None:
    strategy = Strategy(plugins=(FedNova(),))
    state = strategy.init(_weights([0.0, 0.0, 0.0]))
    results = [
        _result("a", [1.0, 1.0, 1.0], 3, metrics={"fednova.a": 1}),
        _result("b", [4.0, 8.0, 0.0], 1, metrics={"fednova.a": 4}),
    ]

    new_state, _ = strategy.aggregate_fit(1, state, results)

    # p = (3/4, 1/4); d_a = [1, 1, 1], d_b = [1, 2, 0]; mean d = [1, 1.25, 0.75];
    # tau_eff = 3/4 * 1 + 1/4 * 4 = 1.75; update = 1.75 * [1, 1.25, 0.75]
    # = [1.75, 2.1875, 1.3125].
    np.testing.assert_array_equal(new_state.weights.flat, [1.75, 2.1875, 1.3125])


@pytest.mark.parametrize(
    ("metrics", "shown"),
    [
        ({}, "None"),
        ({"fednova.a": 0}, "0"),
        ({"fednova.a": True}, "True"),
        ({"fednova.a": "4"}, "'4'"),
    ],
)
def test_fednova_aggregate_fit_rejects_a_result_without_positive_steps(
    metrics: Metrics, shown: str
) -> None:
    strategy = Strategy(plugins=(FedNova(),))
    state = strategy.init(_weights([0.0, 0.0, 0.0]))
    results = [
        _result("a", [1.0, 1.0, 1.0], 1, metrics={"fednova.a": 2}),
        _result("b", [1.0, 1.0, 1.0], 1, metrics=metrics),
    ]

    with pytest.raises(
        InvalidResult,
        match=rf"FedNova needs each client's metric 'fednova.a' \(its local steps, > 0\), "
        rf"got {shown}\. Use a client that applies the fednova plug-in\.",
    ):
        strategy.aggregate_fit(1, state, results)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_fednova_aggregate_fit_rejects_infinite_steps() -> None:
    strategy = Strategy(plugins=(FedNova(),))
    state = strategy.init(_weights([0.0, 0.0, 0.0]))
    results = [_result("a", [1.0, 1.0, 1.0], 1, metrics={"fednova.a": math.inf})]

    with pytest.raises(InvalidResult, match=r"fednova\.a"):
        strategy.aggregate_fit(1, state, results)


# --- Elastic ---------------------------------------------------------------------------


def test_elastic_aggregate_fit_scales_each_coordinate_by_zeta() -> None:
    strategy = Strategy(plugins=(Elastic(tau=0.5),))
    state = strategy.init(_weights([0.0, 0.0]))
    results = [
        _result("a", [2.0, 4.0], 1, elastic__sensitivity=[2.0, 0.0]),
        _result("b", [2.0, 4.0], 1, elastic__sensitivity=[0.0, 0.0]),
    ]

    new_state, _ = strategy.aggregate_fit(1, state, results)

    # Omega = ([2, 0] + [0, 0]) / 2 = [1, 0]; max 1; zeta = 1 + 0.5 - [1, 0] = [0.5, 1.5].
    # Mean update [2, 4] * zeta = [1, 6].
    np.testing.assert_array_equal(new_state.weights.flat, [1.0, 6.0])


def test_elastic_with_zero_sensitivity_scales_every_coordinate_by_one_plus_tau() -> None:
    strategy = Strategy(plugins=(Elastic(tau=0.25),))
    state = strategy.init(_weights([0.0, 0.0]))
    results = [_result("a", [2.0, 4.0], 1, elastic__sensitivity=[0.0, 0.0])]

    new_state, _ = strategy.aggregate_fit(1, state, results)

    # max(Omega) = 0, so zeta = 1 + 0.25 everywhere: [2, 4] * 1.25 = [2.5, 5].
    np.testing.assert_array_equal(new_state.weights.flat, [2.5, 5.0])


# --- the orchestrator checks plug-in tensors -------------------------------------------


class PluginStub:
    """A plug-in client returning fixed weights and tensors; it notes what it received."""

    def __init__(
        self,
        values: list[float],
        num_examples: int,
        tensors: Mapping[str, Any],
        received: list[tuple[Config, dict[str, Vector]]],
        metrics: Metrics | None = None,
    ) -> None:
        self._values = values
        self._num_examples = num_examples
        self._tensors = tensors
        self._received = received
        self._metrics = metrics or {}

    def get_weights(self) -> dict[str, Vector]:
        return {"x": np.zeros(3)}

    def fit(self, weights: Weights, config: Config) -> FitRes:
        raise AssertionError("a strategy with plug-ins calls fit_plugins")

    def fit_plugins(
        self,
        weights: Weights,
        config: Config,
        tensors: Mapping[str, Vector],
        state: Mapping[str, Vector],
    ) -> tuple[FitRes, dict[str, Vector]]:
        self._received.append((config, dict(tensors)))
        result = FitRes(
            {"x": np.array(self._values)}, self._num_examples, self._metrics, self._tensors
        )
        return result, {}


def _run_plugins(
    strategy: Strategy, clients: list[PluginStub]
) -> tuple[dict[str, str], int, NDArray[np.floating]]:
    channel = InProcessChannel(lambda context: clients[context.partition_id], num_clients=3)
    result = Orchestrator(channel, strategy, rounds=1).run({"x": np.zeros(3)})
    record = result.history[-1]
    return record.failures, record.num_results, result.weights["x"]


GOOD_DELTA = {"scaffold.delta_c": np.ones(3)}

BAD_TENSORS = [
    pytest.param({}, ["client '1'", "sent no ['scaffold.delta_c'] tensor"], id="missing"),
    pytest.param(
        {"scaffold.delta_c": np.ones(2)},
        ["client '1'", "'scaffold.delta_c' with shape (2,) float64", "expected (3,) floats"],
        id="wrong-shape",
    ),
    pytest.param(
        {"scaffold.delta_c": np.ones(3, dtype=np.int64)},
        ["client '1'", "'scaffold.delta_c' with shape (3,) int64", "expected (3,) floats"],
        id="integer",
    ),
    pytest.param(
        {"scaffold.delta_c": np.array([1.0, math.nan, 1.0])},
        ["client '1'", "'scaffold.delta_c' with NaN or Inf values"],
        id="nan",
    ),
]


@pytest.mark.parametrize(("bad_tensors", "phrases"), BAD_TENSORS)
def test_orchestrator_rejects_a_bad_plugin_tensor_and_aggregates_the_rest(
    bad_tensors: dict[str, Any], phrases: list[str]
) -> None:
    received: list[tuple[Config, dict[str, Vector]]] = []
    clients = [
        PluginStub([1.0, 2.0, 3.0], 1, GOOD_DELTA, received),
        PluginStub([100.0, 100.0, 100.0], 100, bad_tensors, received),
        PluginStub([3.0, 2.0, 1.0], 3, GOOD_DELTA, received),
    ]

    failures, num_results, weights = _run_plugins(
        Strategy(plugins=(Scaffold(),), evaluate_sampler=None), clients
    )

    assert list(failures) == ["1"]
    for phrase in phrases:
        assert phrase in failures["1"]
    assert num_results == 2
    # FedAvg of clients 0 and 2 only: (1 * [1, 2, 3] + 3 * [3, 2, 1]) / 4 = [2.5, 2, 1.5].
    np.testing.assert_array_equal(weights, [2.5, 2.0, 1.5])


def test_orchestrator_sends_plugin_config_and_tensors_to_each_client() -> None:
    received: list[tuple[Config, dict[str, Vector]]] = []
    clients = [PluginStub([1.0, 1.0, 1.0], 1, GOOD_DELTA, received) for _ in range(3)]

    _run_plugins(Strategy(plugins=(Scaffold(),), evaluate_sampler=None), clients)

    assert len(received) == 3
    for config, tensors in received:
        assert config["plugins"] == "scaffold"
        assert list(tensors) == ["scaffold.c"]
        np.testing.assert_array_equal(tensors["scaffold.c"], [0.0, 0.0, 0.0])


def test_orchestrator_client_without_fednova_steps_fails_only_its_own_task() -> None:
    received: list[tuple[Config, dict[str, Vector]]] = []
    steps = {"fednova.a": 2}
    clients = [
        PluginStub([1.0, 2.0, 3.0], 1, {}, received, steps),
        PluginStub([100.0, 100.0, 100.0], 100, {}, received, {}),
        PluginStub([3.0, 2.0, 1.0], 3, {}, received, steps),
    ]

    failures, num_results, weights = _run_plugins(
        Strategy(plugins=(FedNova(),), evaluate_sampler=None), clients
    )

    assert list(failures) == ["1"]
    assert "fednova.a" in failures["1"]
    assert num_results == 2
    # Both good clients ran a = 2 steps, so FedNova equals FedAvg: [2.5, 2, 1.5].
    np.testing.assert_array_equal(weights, [2.5, 2.0, 1.5])
