"""The round loop over an in-process channel: failures, initial weights, history, callbacks."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

from fedloom.client import FunctionClient
from fedloom.core import (
    ClientContext,
    Config,
    FitRes,
    Metrics,
    Weights,
    WeightsLike,
    derive_seed,
)
from fedloom.errors import ConfigError, NotEnoughResults
from fedloom.server import (
    Callback,
    EarlyStopping,
    History,
    KeepBest,
    Orchestrator,
    RoundRecord,
    RunResult,
    StopAfter,
    StopAtMetric,
)
from fedloom.strategies import Strategy, fedavg
from fedloom.transport.inprocess import InProcessChannel

FitFn = Callable[[Weights, Config], tuple[WeightsLike, int, Metrics]]
ClientEvaluateFn = Callable[[Weights, Config], tuple[float, int, Metrics]]

ZEROS = {"x": np.zeros(3)}
"""The global model of most tests: one float64 tensor 'x' of shape (3,)."""


def _returns(values: list[float], num_examples: int, metrics: Metrics | None = None) -> FitFn:
    """A fit function that always returns x = `values`."""
    return lambda weights, config: ({"x": np.asarray(values)}, num_examples, metrics or {})


def _step(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
    """A fit function that adds 1 to every coordinate: the global x grows by 1 a round."""
    return {"x": weights["x"] + 1.0}, 1, {}


def _client_fn(
    fits: Mapping[str, FitFn],
    *,
    evaluates: Mapping[str, ClientEvaluateFn] | None = None,
) -> Callable[[ClientContext], FunctionClient]:
    """Client `cid` fits with ``fits[cid]`` (and evaluates with ``evaluates[cid]``)."""

    def client_fn(context: ClientContext) -> FunctionClient:
        cid = context.client_id
        evaluate = None if evaluates is None else evaluates[cid]
        return FunctionClient(weights=ZEROS, fit=fits[cid], evaluate=evaluate)

    return client_fn


def _run(
    fits: Mapping[str, FitFn],
    *,
    rounds: int = 1,
    strategy: Strategy | None = None,
    initial_weights: WeightsLike | None = ZEROS,
    evaluates: Mapping[str, ClientEvaluateFn] | None = None,
    **options: Any,
) -> RunResult:
    """Run the clients of `fits` ("0", "1", ...) through an Orchestrator over InProcessChannel."""
    channel = InProcessChannel(_client_fn(fits, evaluates=evaluates), num_clients=len(fits))
    orchestrator = Orchestrator(
        channel,
        strategy if strategy is not None else fedavg(fraction_evaluate=0),
        rounds=rounds,
        **options,
    )
    return orchestrator.run(initial_weights)


def _scripted(values: list[float], name: str = "acc") -> Callable[[Weights, int], Metrics]:
    """A central evaluate_fn that reports ``{name: values[server_round]}``."""
    return lambda weights, server_round: {name: values[server_round]}


# Rejected results ---------------------------------------------------------------------------------

BAD_RESULTS = [
    pytest.param(
        {"x": np.zeros(2)},
        ["client '2'", "tensor 'x'", "shape (2,) float64", "expected (3,) float64"],
        id="wrong-shape",
    ),
    pytest.param(
        {"y": np.zeros(3)},
        ["client '2'", "missing ['x']", "unexpected ['y']"],
        id="wrong-name",
    ),
    pytest.param(
        {"x": np.zeros(3, dtype=np.float32)},
        ["client '2'", "tensor 'x'", "(3,) float32", "expected (3,) float64"],
        id="wrong-dtype",
    ),
    pytest.param(
        {"x": np.array([1.0, math.nan, 3.0])},
        ["client '2'", "tensor 'x'", "1 NaN or Inf values", "expected finite numbers"],
        id="nan",
    ),
]


@pytest.mark.parametrize(("bad_weights", "phrases"), BAD_RESULTS)
def test_orchestrator_rejects_mismatched_result_and_averages_the_rest(
    bad_weights: dict[str, np.ndarray],
    phrases: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fits = {
        "0": _returns([1.0, 2.0, 3.0], num_examples=1),
        "1": _returns([4.0, 5.0, 6.0], num_examples=3),
        "2": lambda weights, config: (bad_weights, 100, {}),
    }
    caplog.set_level(logging.WARNING, logger="fedloom.server.orchestrator")

    result = _run(fits)

    record = result.history[-1]
    assert record.server_round == 1
    assert record.num_results == 2
    assert list(record.failures) == ["2"]
    for phrase in phrases:
        assert phrase in record.failures["2"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "client '2'" in warnings[0].getMessage()
    assert phrases[-1] in warnings[0].getMessage()
    # FedAvg of the good clients from x = 0 (client 2's 100 examples must not count):
    # (1 * [1, 2, 3] + 3 * [4, 5, 6]) / (1 + 3) = [13, 17, 21] / 4 = [3.25, 4.25, 5.25].
    assert np.array_equal(result.weights["x"], [3.25, 4.25, 5.25])


def test_orchestrator_client_that_raises_fails_only_its_own_task() -> None:
    def broken(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        raise RuntimeError("disk on fire")

    fits = {
        "0": _returns([2.0, 2.0, 2.0], num_examples=1),
        "1": broken,
        "2": _returns([4.0, 6.0, 8.0], num_examples=1),
    }

    result = _run(fits)

    record = result.history[-1]
    assert record.num_results == 2
    assert list(record.failures) == ["1"]
    assert "client '1'" in record.failures["1"]
    assert "RuntimeError: disk on fire" in record.failures["1"]
    # Equal weights: ([2, 2, 2] + [4, 6, 8]) / 2 = [3, 4, 5].
    assert np.array_equal(result.weights["x"], [3.0, 4.0, 5.0])


def test_orchestrator_too_few_results_raises_not_enough_results_naming_round_and_clients() -> None:
    def fails_in_round_2(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        if config["server_round"] == 2:
            raise RuntimeError("out of memory")
        return {"x": weights["x"] + 1.0}, 1, {}

    fits = {"0": _step, "1": fails_in_round_2, "2": fails_in_round_2}

    with pytest.raises(NotEnoughResults) as raised:
        _run(fits, rounds=3, strategy=fedavg(min_fit=2, fraction_evaluate=0))

    message = str(raised.value)
    assert raised.value.received == 1
    assert raised.value.required == 2
    assert "at least 2 results, got 1" in message
    assert "Round 2 sampled 3 clients" in message
    assert "'1': client '1' raised RuntimeError: out of memory" in message
    assert "'2': client '2' raised RuntimeError: out of memory" in message


# Initial weights --------------------------------------------------------------------------------


def test_orchestrator_takes_initial_weights_from_client_0_when_not_given() -> None:
    received: list[tuple[str, np.ndarray]] = []

    def client_fn(context: ClientContext) -> FunctionClient:
        cid = context.client_id

        def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
            received.append((cid, weights["x"].copy()))
            return weights, 1, {}

        # Each client's own model differs, so the global start tells who provided it.
        own = {"x": np.full(3, 10.0 + context.partition_id)}
        return FunctionClient(weights=own, fit=fit)

    channel = InProcessChannel(client_fn, num_clients=3)

    result = Orchestrator(channel, fedavg(fraction_evaluate=0), rounds=1).run()

    assert [cid for cid, _ in received] == ["0", "1", "2"]
    for _, weights in received:
        assert np.array_equal(weights, [10.0, 10.0, 10.0])
    assert np.array_equal(result.weights["x"], [10.0, 10.0, 10.0])


class _ListClient:
    """A client without a class from fedloom: get_weights and fit deal in lists of arrays."""

    def get_weights(self) -> list[np.ndarray]:
        return [np.array([1.0, 2.0]), np.array([[3.0]])]

    def fit(self, weights: Weights, config: Config) -> FitRes:
        return FitRes([array + 1.0 for array in weights.values()], 1)


def test_orchestrator_names_list_weights_by_position() -> None:
    channel = InProcessChannel(lambda context: _ListClient(), num_clients=2)

    result = Orchestrator(channel, fedavg(fraction_evaluate=0), rounds=1).run()

    assert list(result.weights) == ["0", "1"]
    # Both clients return start + 1: [1, 2] -> [2, 3] and [[3]] -> [[4]].
    assert np.array_equal(result.weights["0"], [2.0, 3.0])
    assert np.array_equal(result.weights["1"], [[4.0]])


def test_orchestrator_rejects_rounds_below_one() -> None:
    channel = InProcessChannel(_client_fn({"0": _step}), num_clients=1)

    with pytest.raises(ConfigError, match="rounds must be an int >= 1, got 0"):
        Orchestrator(channel, fedavg(), rounds=0)


# History ----------------------------------------------------------------------------------------


def test_history_round_0_holds_central_evaluation_of_initial_weights() -> None:
    def central(weights: Weights, server_round: int) -> Metrics:
        return {"loss": float(weights["x"].sum())}

    result = _run({"0": _step}, rounds=2, evaluate_fn=central)

    assert [record.server_round for record in result.history] == [0, 1, 2]
    first = result.history[0]
    # x starts at [0, 0, 0] (sum 0) and grows by 1 per round: sums 0, 3, 6.
    assert first.metrics == {"central.loss": 0.0}
    assert first.num_results == 0
    assert first.failures == {}
    assert result.history.series("central.loss") == [(0, 0.0), (1, 3.0), (2, 6.0)]


def test_history_without_evaluate_fn_has_no_round_0() -> None:
    result = _run({"0": _step}, rounds=2)

    assert [record.server_round for record in result.history] == [1, 2]


def _evaluates_with(loss: float, num_examples: int, accuracy: float) -> ClientEvaluateFn:
    return lambda weights, config: (loss, num_examples, {"accuracy": accuracy})


def test_history_metrics_are_namespaced_and_example_weighted() -> None:
    fits = {
        "0": _returns([0.0, 0.0, 0.0], num_examples=1, metrics={"loss": 2.0}),
        "1": _returns([0.0, 0.0, 0.0], num_examples=3, metrics={"loss": 6.0}),
    }
    evaluates = {
        "0": _evaluates_with(loss=1.0, num_examples=1, accuracy=0.0),
        "1": _evaluates_with(loss=3.0, num_examples=3, accuracy=1.0),
    }

    result = _run(
        fits,
        strategy=fedavg(),
        evaluates=evaluates,
        evaluate_fn=lambda weights, server_round: {"accuracy": 0.5},
    )

    metrics = result.history[1].metrics
    assert set(metrics) == {"fit.loss", "evaluate.loss", "evaluate.accuracy", "central.accuracy"}
    # fit.loss      = (1 * 2 + 3 * 6) / 4 = 20 / 4 = 5.0
    # evaluate.loss = (1 * 1 + 3 * 3) / 4 = 10 / 4 = 2.5
    # evaluate.accuracy = (1 * 0 + 3 * 1) / 4 = 0.75 (an unweighted mean would give 0.5)
    assert metrics["fit.loss"] == 5.0
    assert metrics["evaluate.loss"] == 2.5
    assert metrics["evaluate.accuracy"] == 0.75
    assert metrics["central.accuracy"] == 0.5


def test_history_series_and_last_read_one_metric() -> None:
    result = _run({"0": _step}, rounds=2, evaluate_fn=_scripted([0.1, 0.4, 0.3]))

    history = result.history

    assert history.series("central.acc") == [(0, 0.1), (1, 0.4), (2, 0.3)]
    assert history.last("central.acc") == 0.3
    assert history.series("central.missing") == []
    with pytest.raises(KeyError, match=r"no round recorded metric 'central\.missing'"):
        history.last("central.missing")


def test_history_to_dict_round_trips_through_json() -> None:
    def broken(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        raise ValueError("bad batch")

    result = _run(
        {"0": _returns([1.0, 1.0, 1.0], 2, {"loss": 0.5}), "1": broken},
        rounds=2,
        evaluate_fn=_scripted([0.1, 0.2, 0.3]),
    )

    data = result.history.to_dict()
    text = json.dumps(data, allow_nan=False)
    restored = History.from_dict(json.loads(text))

    assert list(restored) == list(result.history)
    assert [r["server_round"] for r in data["rounds"]] == [0, 1, 2]
    assert "client '1' raised ValueError: bad batch" in data["rounds"][1]["failures"]["1"]


def test_history_to_dict_writes_non_finite_metrics_as_none() -> None:
    history = History([RoundRecord(server_round=1, metrics={"central.loss": math.inf})])

    data = history.to_dict()

    assert data["rounds"][0]["metrics"] == {"central.loss": None}
    json.dumps(data, allow_nan=False)


# Callbacks --------------------------------------------------------------------------------------


class _Recorder(Callback):
    """Appends ``(name, hook, round)`` to a shared log at every hook."""

    def __init__(self, name: str, log: list[tuple[str, str, int | None]]) -> None:
        self.name = name
        self.log = log

    def on_round_start(self, server_round: int) -> None:
        self.log.append((self.name, "round_start", server_round))

    def on_aggregate(self, server_round: int, weights: Weights, metrics: Metrics) -> None:
        self.log.append((self.name, "aggregate", server_round))

    def on_evaluate(self, server_round: int, metrics: Metrics) -> None:
        self.log.append((self.name, "evaluate", server_round))

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        self.log.append((self.name, "round_end", record.server_round))
        return False

    def on_run_end(self, result: RunResult) -> None:
        self.log.append((self.name, "run_end", None))


def test_callback_hooks_run_in_order_for_each_callback() -> None:
    log: list[tuple[str, str, int | None]] = []
    callbacks = [_Recorder("a", log), _Recorder("b", log)]

    _run({"0": _step}, rounds=2, callbacks=callbacks)

    expected = []
    for server_round in (1, 2):
        for hook in ("round_start", "aggregate", "evaluate", "round_end"):
            expected += [("a", hook, server_round), ("b", hook, server_round)]
    expected += [("a", "run_end", None), ("b", "run_end", None)]
    assert log == expected


def test_callback_hooks_see_the_new_global_weights_and_metrics() -> None:
    seen: dict[str, Any] = {}

    class Spy(Callback):
        def on_aggregate(self, server_round: int, weights: Weights, metrics: Metrics) -> None:
            seen["aggregate"] = (server_round, weights["x"].copy(), sorted(metrics))

        def on_evaluate(self, server_round: int, metrics: Metrics) -> None:
            seen["evaluate"] = (server_round, sorted(metrics))

        def on_run_end(self, result: RunResult) -> None:
            seen["run_end"] = result

    fits = {"0": lambda weights, config: ({"x": weights["x"] + 1.0}, 1, {"loss": 1.0})}

    result = _run(fits, callbacks=[Spy()], evaluate_fn=_scripted([0.0, 1.0]))

    # One round of x + 1 from zeros.
    assert seen["aggregate"][0] == 1
    assert np.array_equal(seen["aggregate"][1], [1.0, 1.0, 1.0])
    assert seen["aggregate"][2] == ["fit.loss"]
    assert seen["evaluate"] == (1, ["central.acc", "fit.loss"])
    assert seen["run_end"] is result


def test_stop_after_stops_after_n_rounds_with_reason() -> None:
    result = _run({"0": _step}, rounds=5, callbacks=[StopAfter(rounds=2)])

    assert [record.server_round for record in result.history] == [1, 2]
    assert result.stop_reason == "reached 2 rounds"
    # Two steps of +1 from zeros.
    assert np.array_equal(result.weights["x"], [2.0, 2.0, 2.0])


def test_orchestrator_without_stop_rule_completes_all_rounds() -> None:
    result = _run({"0": _step}, rounds=3)

    assert len(result.history) == 3
    assert result.stop_reason == "completed 3 rounds"


@pytest.mark.parametrize(
    ("values", "mode", "target", "stop_round"),
    [
        # max: 0.3, 0.6 -> 0.6 >= 0.6 at round 2.
        pytest.param([0.1, 0.3, 0.6, 0.9, 0.95, 0.99], "max", 0.6, 2, id="max"),
        # min: 0.8, 0.5, 0.2 -> 0.2 <= 0.3 at round 3.
        pytest.param([1.0, 0.8, 0.5, 0.2, 0.1, 0.05], "min", 0.3, 3, id="min"),
    ],
)
def test_stop_at_metric_stops_when_target_is_reached(
    values: list[float], mode: str, target: float, stop_round: int
) -> None:
    stop = StopAtMetric(metric="central.acc", target=target, mode=mode)  # type: ignore[arg-type]

    result = _run({"0": _step}, rounds=5, evaluate_fn=_scripted(values), callbacks=[stop])

    assert result.history[-1].server_round == stop_round
    value = values[stop_round]
    assert result.stop_reason == f"central.acc = {value:.4g} reached target {target}"


def test_stop_at_metric_ignores_rounds_without_the_metric() -> None:
    stop = StopAtMetric(metric="central.acc", target=0.0)

    result = _run({"0": _step}, rounds=2, callbacks=[stop])

    assert len(result.history) == 2
    assert result.stop_reason == "completed 2 rounds"


def test_early_stopping_stops_after_patience_rounds_without_improvement() -> None:
    # Rounds 1..6: 0.5, 0.6 (best), 0.55 (stale 1), 0.6 (not > best: stale 2) -> stop after 4.
    values = [0.0, 0.5, 0.6, 0.55, 0.6, 0.9, 0.95]
    stop = EarlyStopping(metric="central.acc", patience=2)

    result = _run({"0": _step}, rounds=6, evaluate_fn=_scripted(values), callbacks=[stop])

    assert result.history[-1].server_round == 4
    assert result.stop_reason == "central.acc did not improve on 0.6 for 2 rounds"


def test_early_stopping_resets_patience_on_improvement_in_min_mode() -> None:
    # Rounds 1..6: 1.0, 1.1 (stale 1), 0.9 (best, reset), 0.95 (stale 1), 0.92 (stale 2) -> stop 5.
    values = [2.0, 1.0, 1.1, 0.9, 0.95, 0.92, 0.1]
    stop = EarlyStopping(metric="central.loss", patience=2, mode="min")

    result = _run(
        {"0": _step}, rounds=6, evaluate_fn=_scripted(values, name="loss"), callbacks=[stop]
    )

    assert result.history[-1].server_round == 5
    assert result.stop_reason == "central.loss did not improve on 0.9 for 2 rounds"


@pytest.mark.parametrize(
    ("values", "mode", "best_round"),
    [
        pytest.param([0.0, 0.2, 0.9, 0.4], "max", 2, id="max"),
        pytest.param([1.0, 0.5, 0.2, 0.9], "min", 2, id="min"),
    ],
)
def test_keep_best_keeps_the_best_rounds_global_weights(
    values: list[float], mode: str, best_round: int
) -> None:
    keep = KeepBest(metric="central.acc", mode=mode)  # type: ignore[arg-type]
    per_round: dict[int, Weights] = {}

    class Snapshot(Callback):
        def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
            per_round[record.server_round] = weights
            return False

    result = _run(
        {"0": _step, "1": _step},
        rounds=3,
        evaluate_fn=_scripted(values),
        callbacks=[keep, Snapshot()],
    )

    assert keep.server_round == best_round
    assert keep.value == values[best_round]
    assert keep.weights is not None
    assert keep.weights.equals(per_round[best_round])
    # x grows by 1 a round from zeros, so round r's weights are [r, r, r].
    assert np.array_equal(keep.weights["x"], [float(best_round)] * 3)
    assert not keep.weights.equals(result.weights)


def test_keep_best_is_empty_when_no_round_records_the_metric() -> None:
    keep = KeepBest(metric="central.acc")

    _run({"0": _step}, rounds=2, callbacks=[keep])

    assert (keep.weights, keep.server_round, keep.value) == (None, None, None)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: StopAtMetric(metric="m", target=1.0, mode="maximum"), id="stop"),
        pytest.param(lambda: EarlyStopping(metric="m", mode="maximum"), id="early"),
        pytest.param(lambda: KeepBest(metric="m", mode="maximum"), id="keep"),
    ],
)
def test_callback_invalid_mode_raises_config_error(build: Callable[[], Callback]) -> None:
    with pytest.raises(ConfigError, match="mode must be 'max' or 'min', got 'maximum'"):
        build()


def test_callback_invalid_counts_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="rounds must be >= 1, got 0"):
        StopAfter(rounds=0)
    with pytest.raises(ConfigError, match="patience must be >= 1, got 0"):
        EarlyStopping(metric="m", patience=0)


# Determinism ------------------------------------------------------------------------------------


def _noisy_run(seed: int, configs: list[tuple[str, dict[str, Any]]]) -> RunResult:
    """6 clients, half sampled per round, each adding noise drawn from its config's seed."""

    def noisy(cid: str) -> FitFn:
        def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
            configs.append((cid, dict(config)))
            noise = np.random.default_rng(int(config["seed"])).normal(size=3)
            return {"x": weights["x"] + noise}, 1, {}

        return fit

    strategy = fedavg(fraction_fit=0.5, fraction_evaluate=0)
    return _run({str(i): noisy(str(i)) for i in range(6)}, rounds=3, strategy=strategy, seed=seed)


def test_orchestrator_same_seed_gives_bit_identical_weights() -> None:
    first_configs: list[tuple[str, dict[str, Any]]] = []
    second_configs: list[tuple[str, dict[str, Any]]] = []

    first = _noisy_run(7, first_configs)
    second = _noisy_run(7, second_configs)

    assert first.weights.equals(second.weights)
    assert first_configs == second_configs


def test_orchestrator_different_seed_gives_different_weights() -> None:
    first = _noisy_run(7, [])
    second = _noisy_run(8, [])

    assert not np.array_equal(first.weights.flat, second.weights.flat)


def test_orchestrator_sends_each_client_its_seed_and_round() -> None:
    configs: list[tuple[str, dict[str, Any]]] = []

    _noisy_run(7, configs)

    # Fraction 0.5 of 6 clients: ceil(3.0) = 3 clients in each of 3 rounds.
    assert len(configs) == 9
    rounds = [config["server_round"] for _, config in configs]
    assert rounds == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    for _, config in configs:
        assert isinstance(config["seed"], int)
    for server_round in (1, 2, 3):
        seeds = [c["seed"] for _, c in configs if c["server_round"] == server_round]
        assert len(set(seeds)) == 3  # every client of a round gets its own seed
    sampled = [[cid for cid, c in configs if c["server_round"] == r] for r in (1, 2, 3)]
    assert len({tuple(s) for s in sampled}) > 1  # sampling varies from round to round


def test_orchestrator_seeds_fit_and_evaluate_tasks_with_derive_seed() -> None:
    """Every task's seed is ``derive_seed(seed, "client", client_id, server_round)``.

    The orchestrator derives a round's seeds in one `derive_seeds` call; runs with the
    same seed must keep the seeds they had when it called `derive_seed` per client.
    """
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def fit_of(cid: str) -> FitFn:
        def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
            seen.append(("fit", cid, dict(config)))
            return {"x": weights["x"]}, 1, {}

        return fit

    def evaluate_of(cid: str) -> ClientEvaluateFn:
        def evaluate(weights: Weights, config: Config) -> tuple[float, int, Metrics]:
            seen.append(("evaluate", cid, dict(config)))
            return 0.0, 1, {}

        return evaluate

    clients = [str(i) for i in range(5)]
    _run(
        {cid: fit_of(cid) for cid in clients},
        evaluates={cid: evaluate_of(cid) for cid in clients},
        rounds=2,
        strategy=fedavg(fraction_evaluate=1.0),
        seed=11,
    )

    # 5 clients, everyone sampled (fraction 1.0 for both), 2 rounds: 10 fits and 10 evaluations.
    assert sorted(kind for kind, _, _ in seen) == ["evaluate"] * 10 + ["fit"] * 10
    for _, cid, config in seen:
        assert config["seed"] == derive_seed(11, "client", cid, config["server_round"])


def test_keep_best_can_keep_the_initial_weights() -> None:
    """Round 0 (the initial weights' central evaluation) reaches callbacks too."""
    keep = KeepBest(metric="central.acc", mode="max")
    initial = Weights({"x": np.zeros(3)})

    _run(
        {"0": _step},
        rounds=2,
        evaluate_fn=_scripted([0.9, 0.1, 0.2]),
        callbacks=[keep],
        initial_weights=initial,
    )

    assert keep.server_round == 0
    assert keep.weights is not None
    assert keep.weights.equals(initial)
