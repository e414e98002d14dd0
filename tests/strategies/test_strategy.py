"""Strategy: composing a sampler, an aggregator and a server optimizer; presets and SGD."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import DTypeLike, NDArray

from fedloom.aggregators import Aggregator, Fold, WeightedMean
from fedloom.core import EvaluateIns, FitIns, Metrics, Weights, generator
from fedloom.errors import ConfigError, NotEnoughResults
from fedloom.strategies import (
    SGD,
    STRATEGIES,
    All,
    FitResult,
    Fraction,
    Strategy,
    StrategyState,
    fedavg,
)
from generators import FAST, client_ids

Array = NDArray[np.floating]
CLIENTS = ["a", "b", "c", "d"]


def _weights(values: list[float], dtype: str = "float64") -> Weights:
    return Weights({"w": np.array(values)}, dtype=dtype)


def _result(
    client_id: str, values: list[float], num_examples: int, metrics: Metrics | None = None
) -> FitResult:
    return FitResult(client_id, _weights(values), num_examples, metrics or {})


def _two_results() -> list[FitResult]:
    # The worked FedAvg example used throughout: from global [0, 0, 0],
    # (1 * [1, 2, 3] + 3 * [3, 2, 1]) / (1 + 3) = [10, 8, 6] / 4 = [2.5, 2.0, 1.5].
    return [
        _result("a", [1.0, 2.0, 3.0], 1, {"loss": 0.5}),
        _result("b", [3.0, 2.0, 1.0], 3, {"loss": 1.0}),
    ]


class RecordingFold:
    """Wraps a fold and notes each `add`, to see when results are pulled."""

    def __init__(self, inner: Fold, events: list[str]) -> None:
        self._inner = inner
        self._events = events

    @property
    def count(self) -> int:
        return self._inner.count

    def add(self, update: Array, weight: float) -> None:
        self._events.append(f"add {weight:g}")
        self._inner.add(update, weight)

    def result(self) -> Array:
        return self._inner.result()


class RecordingMean(Aggregator):
    """The weighted mean, with a recording fold and a configurable minimum."""

    def __init__(self, events: list[str], *, min_results: int = 1) -> None:
        self._events = events
        self._min_results = min_results

    @property
    def min_results(self) -> int:
        return self._min_results

    def aggregate(self, updates: Array, weights: Array) -> Array:
        return WeightedMean().aggregate(updates, weights)

    def fold(self, dim: int, dtype: DTypeLike) -> Fold:
        return RecordingFold(WeightedMean().fold(dim, dtype), self._events)


# --- construction ----------------------------------------------------------------------


def test_strategy_defaults_are_plain_fedavg() -> None:
    strategy = Strategy()

    assert strategy.sampler == All()
    assert strategy.aggregator == WeightedMean()
    assert strategy.server_opt == SGD(lr=1.0)
    assert strategy.evaluate_sampler == All()
    assert strategy.min_fit == 1
    assert strategy.config == {}


@pytest.mark.parametrize(("min_fit", "shown"), [(0, "0"), (-2, "-2"), (True, "True"), (1.5, "1.5")])
def test_strategy_rejects_min_fit_that_is_not_a_positive_int(min_fit: object, shown: str) -> None:
    with pytest.raises(ConfigError, match=f"min_fit must be an int >= 1, got {shown}") as info:
        Strategy(min_fit=min_fit)  # type: ignore[arg-type]

    assert info.value.field == "min_fit"


@pytest.mark.parametrize(
    ("value", "type_name"), [([1, 2], "list"), (None, "NoneType"), (np.zeros(2), "ndarray")]
)
def test_strategy_rejects_non_scalar_config_values(value: object, type_name: str) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"config\['layers'\] is {type_name}; client config values must be bool, int",
    ) as info:
        Strategy(config={"layers": value})  # type: ignore[dict-item]

    assert info.value.field == "config.layers"


def test_strategy_init_holds_the_weights_and_optimizer_state() -> None:
    weights = _weights([0.0, 0.0, 0.0])

    state = Strategy().init(weights)

    assert state.weights is weights
    assert state.optimizer == {}


# --- configure -------------------------------------------------------------------------


def test_strategy_configure_fit_sends_global_weights_and_config_with_round() -> None:
    strategy = Strategy(config={"local_epochs": 2, "lr": 0.1})
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    tasks = strategy.configure_fit(3, state, CLIENTS, generator(0, "round", 3))

    assert list(tasks) == CLIENTS
    for task in tasks.values():
        assert isinstance(task, FitIns)
        assert task.weights is state.weights
        assert task.config == {"local_epochs": 2, "lr": 0.1, "server_round": 3}


def test_strategy_configure_fit_sends_only_to_sampled_clients() -> None:
    strategy = Strategy(sampler=Fraction(fraction=0.5))
    state = strategy.init(_weights([0.0]))

    tasks = strategy.configure_fit(1, state, CLIENTS, generator(0, "round", 1))

    # ceil(0.5 * 4) = 2 of the 4 clients.
    assert len(tasks) == 2
    assert set(tasks) <= set(CLIENTS)


@FAST
@given(available=client_ids(min_size=1), seed=st.integers(0, 2**32 - 1))
def test_strategy_configure_fit_selection_is_reproducible_from_the_seed(
    available: list[str], seed: int
) -> None:
    strategy = Strategy(sampler=Fraction(fraction=0.3))
    state = strategy.init(_weights([0.0]))

    first = strategy.configure_fit(2, state, available, generator(seed, "round", 2))
    second = strategy.configure_fit(2, state, available, generator(seed, "round", 2))

    assert list(first) == list(second)


def test_strategy_configure_evaluate_sends_weights_and_round() -> None:
    strategy = Strategy(config={"batch_size": 32})
    state = strategy.init(_weights([0.0]))

    tasks = strategy.configure_evaluate(4, state, CLIENTS, generator(0, "evaluate", 4))

    assert list(tasks) == CLIENTS
    for task in tasks.values():
        assert isinstance(task, EvaluateIns)
        assert task.weights is state.weights
        assert task.config == {"batch_size": 32, "server_round": 4}


def test_strategy_without_evaluate_sampler_configures_no_evaluation() -> None:
    strategy = Strategy(evaluate_sampler=None)
    state = strategy.init(_weights([0.0]))

    tasks = strategy.configure_evaluate(1, state, CLIENTS, generator(0))

    assert tasks == {}


# --- aggregate_fit ---------------------------------------------------------------------


def test_strategy_aggregate_fit_is_example_weighted_fedavg() -> None:
    strategy = Strategy()
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    new_state, metrics = strategy.aggregate_fit(1, state, _two_results())

    # See _two_results: [2.5, 2.0, 1.5]. loss: (1 * 0.5 + 3 * 1.0) / 4 = 3.5 / 4 = 0.875.
    np.testing.assert_array_equal(new_state.weights.flat, [2.5, 2.0, 1.5])
    assert metrics == {"loss": 0.875}


def test_strategy_aggregate_fit_averages_updates_from_a_nonzero_global() -> None:
    strategy = Strategy()
    state = strategy.init(_weights([1.0, 1.0, 1.0]))
    results = [_result("a", [2.0, 3.0, 4.0], 1), _result("b", [4.0, 3.0, 2.0], 1)]

    new_state, metrics = strategy.aggregate_fit(1, state, results)

    # updates [1, 2, 3] and [3, 2, 1], mean [2, 2, 2]; [1, 1, 1] + [2, 2, 2] = [3, 3, 3].
    np.testing.assert_array_equal(new_state.weights.flat, [3.0, 3.0, 3.0])
    assert metrics == {}


def test_strategy_aggregate_fit_with_server_lr_half_takes_half_the_step() -> None:
    strategy = Strategy(server_opt=SGD(lr=0.5))
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    new_state, _ = strategy.aggregate_fit(1, state, _two_results())

    # 0.5 * [2.5, 2.0, 1.5] = [1.25, 1.0, 0.75]
    np.testing.assert_array_equal(new_state.weights.flat, [1.25, 1.0, 0.75])


def test_strategy_aggregate_fit_keeps_the_model_layout_and_dtype() -> None:
    strategy = Strategy()
    state = strategy.init(_weights([0.0, 0.0, 0.0], dtype="float32"))
    results = [
        FitResult("a", _weights([1.0, 2.0, 3.0], dtype="float32"), 1, {}),
        FitResult("b", _weights([3.0, 2.0, 1.0], dtype="float32"), 3, {}),
    ]

    new_state, _ = strategy.aggregate_fit(1, state, results)

    assert new_state.weights.spec == state.weights.spec
    assert new_state.weights.flat.dtype == np.float32
    np.testing.assert_array_equal(new_state.weights.flat, [2.5, 2.0, 1.5])


def test_strategy_aggregate_fit_does_not_mutate_the_old_state_or_results() -> None:
    strategy = Strategy()
    state = strategy.init(_weights([0.0, 0.0, 0.0]))
    results = _two_results()
    before = [r.weights.flat.copy() for r in results]

    new_state, _ = strategy.aggregate_fit(1, state, results)

    np.testing.assert_array_equal(state.weights.flat, [0.0, 0.0, 0.0])
    assert new_state is not state
    assert not np.shares_memory(new_state.weights.flat, state.weights.flat)
    for result, flat in zip(results, before, strict=True):
        np.testing.assert_array_equal(result.weights.flat, flat)


def test_strategy_aggregate_fit_consumes_results_lazily() -> None:
    """Each result is folded before the next is pulled, so a round holds one update at a time."""
    events: list[str] = []
    strategy = Strategy(aggregator=RecordingMean(events))
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    def arriving() -> Iterator[FitResult]:
        for result in _two_results():
            events.append(f"yield {result.client_id}")
            yield result

    new_state, _ = strategy.aggregate_fit(1, state, arriving())

    assert events == ["yield a", "add 1", "yield b", "add 3"]
    np.testing.assert_array_equal(new_state.weights.flat, [2.5, 2.0, 1.5])


def test_strategy_aggregate_fit_with_fewer_than_min_fit_raises() -> None:
    strategy = Strategy(min_fit=3)
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    with pytest.raises(NotEnoughResults, match="a round needs at least 3 results, got 2") as info:
        strategy.aggregate_fit(1, state, _two_results())

    assert (info.value.received, info.value.required) == (2, 3)


def test_strategy_aggregate_fit_with_no_results_raises() -> None:
    strategy = Strategy()
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    with pytest.raises(NotEnoughResults) as info:
        strategy.aggregate_fit(1, state, iter([]))

    assert (info.value.received, info.value.required) == (0, 1)


def test_strategy_aggregate_fit_requires_the_aggregators_minimum() -> None:
    strategy = Strategy(aggregator=RecordingMean([], min_results=3), min_fit=1)
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    with pytest.raises(NotEnoughResults) as info:
        strategy.aggregate_fit(1, state, _two_results())

    # max(min_fit = 1, aggregator.min_results = 3) = 3.
    assert (info.value.received, info.value.required) == (2, 3)


# --- SGD -------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [0.0, -1.0, np.nan, np.inf])
def test_sgd_rejects_a_learning_rate_that_is_not_positive_and_finite(lr: float) -> None:
    with pytest.raises(ConfigError, match=f"lr must be a positive number, got {lr}") as info:
        SGD(lr=lr)

    assert info.value.field == "lr"


def test_sgd_step_moves_params_by_lr_times_update() -> None:
    params = np.array([1.0, 2.0, 3.0])
    update = np.array([2.0, -2.0, 4.0])
    optimizer = SGD(lr=0.5)

    new_params, state = optimizer.step(params, update, optimizer.init(params))

    # [1, 2, 3] + 0.5 * [2, -2, 4] = [1 + 1, 2 - 1, 3 + 2] = [2, 1, 5]
    np.testing.assert_array_equal(new_params, [2.0, 1.0, 5.0])
    assert state == {}
    np.testing.assert_array_equal(params, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("lr", [1.0, 0.5])
def test_sgd_step_keeps_float32(lr: float) -> None:
    params = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    update = np.array([2.0, -2.0, 4.0], dtype=np.float32)

    new_params, _ = SGD(lr=lr).step(params, update, {})

    # lr 1: [1, 2, 3] + [2, -2, 4] = [3, 0, 7]; lr 0.5: [2, 1, 5] as above.
    expected = [3.0, 0.0, 7.0] if lr == 1.0 else [2.0, 1.0, 5.0]
    np.testing.assert_array_equal(new_params, expected)
    assert new_params.dtype == np.float32


# --- presets and config ----------------------------------------------------------------


def test_strategies_registry_names_fedavg() -> None:
    assert STRATEGIES["fedavg"] is fedavg


def test_fedavg_defaults_compose_the_plain_parts() -> None:
    strategy = fedavg()

    assert strategy == Strategy(
        sampler=All(),
        aggregator=WeightedMean(),
        server_opt=SGD(lr=1.0),
        evaluate_sampler=All(),
        min_fit=1,
        config={},
    )


def test_fedavg_builds_the_configured_parts() -> None:
    strategy = fedavg(
        fraction_fit=0.5,
        min_fit_clients=2,
        fraction_evaluate=0.0,
        min_fit=2,
        server_lr=0.5,
        config={"local_epochs": 2},
    )

    assert strategy.sampler == Fraction(fraction=0.5, min_clients=2)
    assert strategy.aggregator == WeightedMean()
    assert strategy.server_opt == SGD(lr=0.5)
    assert strategy.evaluate_sampler is None
    assert strategy.min_fit == 2
    assert strategy.config == {"local_epochs": 2}


def test_fedavg_samples_a_fraction_for_evaluation() -> None:
    strategy = fedavg(fraction_evaluate=0.25)

    sampler = strategy.evaluate_sampler

    assert sampler == Fraction(fraction=0.25, min_clients=1)


def test_strategy_get_config_lists_every_part() -> None:
    strategy = fedavg(fraction_fit=0.5, min_fit_clients=2, server_lr=0.5, config={"epochs": 2})

    config = strategy.get_config()

    assert config == {
        "sampler": {"name": "Fraction", "fraction": 0.5, "min_clients": 2},
        "aggregator": {"name": "WeightedMean"},
        "server_opt": {"name": "SGD", "lr": 0.5},
        "evaluate_sampler": {"name": "All"},
        "min_fit": 1,
        "config": {"epochs": 2},
        "plugins": [],
        "schedule": {"name": "Sync"},
        "privacy": None,
        "secure_aggregation": None,
    }


# --- conformance over every named strategy ---------------------------------------------

BUILDERS = sorted(STRATEGIES.items())
CONFORMANCE_CLIENTS = [f"c{i}" for i in range(7)]  # Bulyan(f=1) needs n >= 4f + 3 = 7


def _conformant_results(strategy: Strategy) -> list[FitResult]:
    """Seven distinct results carrying whatever the preset's plug-ins need."""
    tensors = {name: np.full(3, 0.1) for name in strategy.required_tensors}
    return [
        FitResult(
            client_id,
            _weights([float(i), 1.0 + i / 10, -1.0]),
            i + 1,
            {"loss": float(i), "fednova.a": 2},
            tensors,
        )
        for i, client_id in enumerate(CONFORMANCE_CLIENTS)
    ]


@pytest.mark.parametrize(("name", "build"), BUILDERS, ids=[name for name, _ in BUILDERS])
def test_strategy_preset_get_config_is_json_and_covers_every_field(
    name: str, build: Callable[..., Strategy]
) -> None:
    strategy = build()

    config = strategy.get_config()

    assert json.loads(json.dumps(config)) == config
    assert set(config) == {f.name for f in dataclasses.fields(Strategy)}


@pytest.mark.parametrize(("name", "build"), BUILDERS, ids=[name for name, _ in BUILDERS])
def test_strategy_preset_repr_shows_every_field(name: str, build: Callable[..., Strategy]) -> None:
    strategy = build()

    text = repr(strategy)

    for f in dataclasses.fields(strategy):
        assert f"{f.name}=" in text


@pytest.mark.parametrize(("name", "build"), BUILDERS, ids=[name for name, _ in BUILDERS])
def test_strategy_preset_same_seed_gives_bit_identical_rounds(
    name: str, build: Callable[..., Strategy]
) -> None:
    strategy = build()

    def one_round() -> tuple[list[str], StrategyState]:
        state = strategy.init(_weights([0.0, 0.0, 0.0]))
        tasks = strategy.configure_fit(1, state, CONFORMANCE_CLIENTS, generator(7, "round", 1))
        results = [r for r in _conformant_results(strategy) if r.client_id in tasks]
        new_state, _ = strategy.aggregate_fit(1, state, results)
        return list(tasks), new_state

    first_clients, first_state = one_round()
    second_clients, second_state = one_round()

    assert first_clients == second_clients
    assert first_state.weights.equals(second_state.weights)


@pytest.mark.parametrize(("name", "build"), BUILDERS, ids=[name for name, _ in BUILDERS])
def test_strategy_preset_with_too_few_results_raises(
    name: str, build: Callable[..., Strategy]
) -> None:
    strategy = build()
    state = strategy.init(_weights([0.0, 0.0, 0.0]))

    with pytest.raises(NotEnoughResults):
        strategy.aggregate_fit(1, state, [])


@pytest.mark.parametrize(("name", "build"), BUILDERS, ids=[name for name, _ in BUILDERS])
def test_strategy_preset_does_not_mutate_inputs(name: str, build: Callable[..., Strategy]) -> None:
    strategy = build()
    state = strategy.init(_weights([0.0, 0.0, 0.0]))
    results = _conformant_results(strategy)
    before = [state.weights.flat.copy(), *(r.weights.flat.copy() for r in results)]

    strategy.aggregate_fit(1, state, results)

    after = [state.weights.flat, *(r.weights.flat for r in results)]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
