"""The asynchronous schedule in the round loop: FedBuff (K arrivals) and FedAsync (K = 1).

Most tests use toy clients over a 3-dim model 'x': client i returns its
weights plus ``i + 1`` in every coordinate, and reports ``{"client": i}``, so
with K = 1 the round's ``fit.client`` metric says who arrived. The channel is
`InProcessChannel` on its virtual clock: with the default latency of 1 every
task takes one virtual second and ties arrive in submission order (FIFO).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from fedloom.aggregators import Mean
from fedloom.client import FunctionClient
from fedloom.core import (
    ClientContext,
    ClientId,
    Config,
    FitIns,
    Metrics,
    Reply,
    Task,
    Weights,
    WeightsLike,
)
from fedloom.errors import ConfigError, NotEnoughResults
from fedloom.server import Orchestrator, RunResult
from fedloom.strategies import SGD, All, Strategy
from fedloom.strategies.schedules import Buffered, Constant, Polynomial, Staleness
from fedloom.transport.inprocess import InProcessChannel

ZEROS = {"x": np.zeros(3)}
"""The initial global model: one float64 tensor 'x' of shape (3,)."""

MAX_SUBMITS = 200
"""More fit tasks than any test here needs: a runaway dispatch loop fails instead of hanging."""


def _fit_of(index: int, failing: frozenset[int]) -> Callable[..., tuple[WeightsLike, int, Metrics]]:
    """Client `index` returns ``x + (index + 1)``, or raises when it is in `failing`."""

    def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        if index in failing:
            raise RuntimeError(f"client {index} is broken")
        return {"x": weights["x"] + (index + 1.0)}, 1, {"client": index}

    return fit


def _client_fn(
    failing: frozenset[int] = frozenset(),
    evaluated: list[str] | None = None,
) -> Callable[[ClientContext], FunctionClient]:
    def client_fn(context: ClientContext) -> FunctionClient:
        def evaluate(weights: Weights, config: Config) -> tuple[float, int, Metrics]:
            assert evaluated is not None
            evaluated.append(context.client_id)
            return 0.0, 1, {}

        return FunctionClient(
            weights=ZEROS,
            fit=_fit_of(context.partition_id, failing),
            evaluate=None if evaluated is None else evaluate,
        )

    return client_fn


class _TracingChannel(InProcessChannel):
    """InProcessChannel that records every submitted fit task as (client, config, x[0])."""

    def __init__(self, client_fn: Callable[[ClientContext], Any], **options: Any) -> None:
        super().__init__(client_fn, **options)
        self.dispatched: list[tuple[ClientId, Config, float]] = []

    def submit(self, tasks: Mapping[ClientId, Task]) -> None:
        for client_id, task in tasks.items():
            assert isinstance(task, FitIns)
            self.dispatched.append((client_id, dict(task.config), float(task.weights["x"][0])))
        if len(self.dispatched) > MAX_SUBMITS:
            raise RuntimeError(f"runaway: more than {MAX_SUBMITS} fit tasks were submitted")
        super().submit(tasks)


def _strategy(
    *,
    buffer_size: int,
    concurrency: int,
    staleness: Staleness | None = None,
    relative_to: str = "trained",
    **options: Any,
) -> Strategy:
    schedule = Buffered(
        buffer_size=buffer_size,
        concurrency=concurrency,
        staleness=staleness if staleness is not None else Constant(),
        relative_to=relative_to,  # type: ignore[arg-type]
    )
    return Strategy(
        aggregator=Mean(),
        server_opt=SGD(lr=1.0),
        schedule=schedule,
        **({"evaluate_sampler": None} | options),
    )


def _run(
    strategy: Strategy,
    *,
    num_clients: int,
    rounds: int,
    failing: frozenset[int] = frozenset(),
    latency: Callable[[ClientId], float] | None = None,
    evaluated: list[str] | None = None,
    **options: Any,
) -> tuple[RunResult, _TracingChannel]:
    channel = _TracingChannel(
        _client_fn(failing, evaluated), num_clients=num_clients, latency=latency
    )
    result = Orchestrator(channel, strategy, rounds=rounds, **options).run(ZEROS)
    return result, channel


def _per_round(result: RunResult, name: str) -> list[Any]:
    return [value for _, value in result.history.series(name)]


def _x(result: RunResult) -> float:
    x = result.weights["x"]
    assert np.all(x == x[0])  # every toy update is the same in all coordinates
    return float(x[0])


# --- Hand-computed runs ----------------------------------------------------------------------


def test_buffered_fedasync_trace_of_the_first_three_versions() -> None:
    strategy = _strategy(buffer_size=1, concurrency=2)

    result, channel = _run(strategy, num_clients=2, rounds=3)

    # Clients "0" (+1) and "1" (+2), concurrency 2, K = 1, Constant, latency 1 (FIFO), x0 = 0:
    #   t=0  dispatch "0"@v0 (x=0) and "1"@v0 (x=0)
    #   t=1  "0" arrives (trained v0, staleness 0): x1 = 0 + (1 - 0) = 1; dispatch "0"@v1 (x=1)
    #   t=1  "1" arrives (trained v0, staleness 1): x2 = 1 + (2 - 0) = 3; dispatch "1"@v2 (x=3)
    #   t=2  "0" arrives (trained v1, staleness 1): x3 = 3 + (2 - 1) = 4
    trace = [(cid, config["server_round"], x) for cid, config, x in channel.dispatched]
    assert trace[:4] == [("0", 1, 0.0), ("1", 1, 0.0), ("0", 2, 1.0), ("1", 3, 3.0)]
    assert _per_round(result, "fit.client") == [0.0, 1.0, 0.0]
    assert _per_round(result, "staleness.mean") == [0.0, 1.0, 1.0]
    assert _per_round(result, "staleness.max") == [0, 1, 1]
    assert [record.num_results for record in result.history] == [1, 1, 1]
    assert _x(result) == 4.0


def test_buffered_single_client_fedasync_is_never_stale() -> None:
    """One client training alone is sequential SGD: it always trains from the newest version."""
    strategy = _strategy(buffer_size=1, concurrency=1, relative_to="current")

    result, channel = _run(strategy, num_clients=1, rounds=3)

    # "0" returns x + 1 from the version it got: x1 = 1, x2 = 2, x3 = 3, each with staleness 0.
    assert [x for _, _, x in channel.dispatched[:3]] == [0.0, 1.0, 2.0]
    assert _per_round(result, "staleness.max") == [0, 0, 0]
    assert _x(result) == 3.0


def test_buffered_polynomial_staleness_scales_stale_updates() -> None:
    strategy = _strategy(buffer_size=2, concurrency=3, staleness=Polynomial(a=1.0))

    result, _ = _run(strategy, num_clients=3, rounds=2)

    # Clients "0" (+1), "1" (+2), "2" (+3), concurrency 3, K = 2, s(t) = 1 / (1 + t), x0 = 0:
    #   t=0  dispatch "0", "1", "2" @v0
    #   t=1  "0" (v0, t=0, update 1) and "1" (v0, t=0, update 2) fill the buffer;
    #        "0" is re-dispatched @v0 after its arrival (the buffer was not full yet)
    #        x1 = 0 + mean(1, 2) = 1.5
    #   t=1  "2" (v0, staleness 1): (3 - 0) / 2 = 1.5
    #   t=2  "0" (its v0 task, staleness 1): (1 - 0) / 2 = 0.5
    #        x2 = 1.5 + mean(1.5, 0.5) = 2.5
    assert _per_round(result, "staleness.mean") == [0.0, 1.0]
    assert _per_round(result, "staleness.max") == [0, 1]
    assert [record.num_results for record in result.history] == [2, 2]
    assert _x(result) == 2.5


@pytest.mark.parametrize(
    ("relative_to", "expected"),
    [
        # FedBuff: y - x_trained = 2 - 0 = 2, so x2 = 1 + 2 = 3.
        pytest.param("trained", 3.0, id="fedbuff"),
        # FedAsync: y - x_current = 2 - 1 = 1, so x2 = 1 + 1 = 2 (x2 = y: lr 1 mixes y in fully).
        pytest.param("current", 2.0, id="fedasync"),
    ],
)
def test_buffered_relative_to_picks_the_base_of_a_stale_update(
    relative_to: str, expected: float
) -> None:
    strategy = _strategy(buffer_size=1, concurrency=2, relative_to=relative_to)

    result, _ = _run(strategy, num_clients=2, rounds=2)

    # Clients "0" (+1) and "1" (+2) both start from x0 = 0.
    # v1: "0" arrives fresh, y = 1: both bases are x0 = 0, so x1 = 0 + 1 = 1.
    # v2: "1" arrives trained on x0 with y = 0 + 2 = 2 while the current model is x1 = 1.
    assert _per_round(result, "staleness.max") == [0, 1]
    assert _x(result) == expected


def test_buffered_latency_makes_a_slow_client_arrive_later_and_staler() -> None:
    strategy = _strategy(buffer_size=1, concurrency=2)
    latencies = {"0": 1.0, "1": 3.0}

    equal, _ = _run(strategy, num_clients=2, rounds=3)
    slow, _ = _run(strategy, num_clients=2, rounds=3, latency=latencies.__getitem__)

    # Equal latency: "0", "1", "0" (FIFO); "1" trained on v0 arrives at v1, staleness 1.
    assert _per_round(equal, "fit.client") == [0.0, 1.0, 0.0]
    assert equal.history[1].metrics["staleness.max"] == 1
    # "1" takes 3 virtual seconds: "0" arrives at t=1 and t=2 (v1, v2) before "1" at t=3
    # (it wins the tie with "0"'s third task by submitting first). "1" trained on v0 and
    # arrives at v2: staleness 2. x3 = 1 + 1 + 2 = 4 (Constant, updates against v0's base).
    assert _per_round(slow, "fit.client") == [0.0, 0.0, 1.0]
    assert slow.history[2].metrics["staleness.max"] == 2
    assert _x(slow) == 4.0


# --- Failures --------------------------------------------------------------------------------


def test_buffered_failing_client_is_recorded_and_others_fill_the_buffer() -> None:
    strategy = _strategy(buffer_size=2, concurrency=3)

    result, _ = _run(strategy, num_clients=3, rounds=1, failing=frozenset({1}))

    record = result.history[-1]
    assert record.num_results == 2
    assert list(record.failures) == ["1"]
    assert "client '1' raised RuntimeError: client 1 is broken" in record.failures["1"]
    # "0" (+1) and "2" (+3) fill the buffer: x1 = 0 + mean(1, 3) = 2.
    assert _x(result) == 2.0


def test_buffered_every_client_failing_raises_not_enough_results() -> None:
    strategy = _strategy(buffer_size=1, concurrency=2)

    with pytest.raises(NotEnoughResults) as raised:
        _run(strategy, num_clients=2, rounds=2, failing=frozenset({0, 1}))

    message = str(raised.value)
    assert (raised.value.received, raised.value.required) == (0, 1)
    assert "Round 1 awaited 1 results" in message
    assert "'0': client '0' raised RuntimeError: client 0 is broken" in message
    assert "'1': client '1' raised RuntimeError: client 1 is broken" in message


# --- Seeds and dispatch ----------------------------------------------------------------------


def test_buffered_each_dispatched_task_gets_its_own_seed() -> None:
    """Even the same client dispatched twice from one version trains with a new seed."""
    strategy = _strategy(buffer_size=2, concurrency=2)

    _, channel = _run(strategy, num_clients=2, rounds=3)

    # K = 2 of 2 clients: "0" arrives first and is re-dispatched before "1" fills the buffer,
    # so "0" has two tasks from version 0 (server_round 1).
    first_round = [cid for cid, config, _ in channel.dispatched if config["server_round"] == 1]
    assert first_round.count("0") == 2
    seeds = [config["seed"] for _, config, _ in channel.dispatched]
    assert all(isinstance(seed, int) for seed in seeds)
    assert len(set(seeds)) == len(seeds)


def test_buffered_same_seed_gives_the_same_dispatches_and_weights() -> None:
    strategy = _strategy(buffer_size=2, concurrency=3, staleness=Polynomial(a=0.5))

    first, first_channel = _run(strategy, num_clients=3, rounds=4, seed=7)
    second, second_channel = _run(strategy, num_clients=3, rounds=4, seed=7)
    _, other_channel = _run(strategy, num_clients=3, rounds=4, seed=8)

    assert first.weights.equals(second.weights)
    assert first_channel.dispatched == second_channel.dispatched
    first_seeds = [config["seed"] for _, config, _ in first_channel.dispatched]
    other_seeds = [config["seed"] for _, config, _ in other_channel.dispatched]
    assert first_seeds != other_seeds


def test_buffered_dispatches_clients_beyond_the_first_concurrency() -> None:
    strategy = _strategy(buffer_size=1, concurrency=2)

    _, channel = _run(strategy, num_clients=4, rounds=30)

    # Each free slot is filled from 2-3 free clients; in 30 versions a fair pick reaches all 4
    # (the chance that one given client is never among ~30 picks is below (2/3)^29 ~ 1e-5).
    assert {cid for cid, _, _ in channel.dispatched} == {"0", "1", "2", "3"}


class _SyncOnlyChannel:
    """A channel that can only run a batch of tasks to completion (no submit/collect)."""

    def clients(self) -> Sequence[ClientId]:
        return ("0",)

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        raise AssertionError("never called")


def test_buffered_needs_a_channel_with_submit_and_collect() -> None:
    strategy = _strategy(buffer_size=1, concurrency=1)

    with pytest.raises(
        ConfigError,
        match=r"the Buffered \(asynchronous\) schedule needs a channel .*submit/collect.*"
        r"_SyncOnlyChannel does not",
    ) as raised:
        Orchestrator(_SyncOnlyChannel(), strategy, rounds=1)

    assert raised.value.field == "schedule"


# --- Evaluation ------------------------------------------------------------------------------


def test_buffered_skips_federated_evaluation_but_evaluates_centrally_each_version() -> None:
    evaluated: list[str] = []
    strategy = _strategy(buffer_size=1, concurrency=2, evaluate_sampler=All())

    result, _ = _run(
        strategy,
        num_clients=2,
        rounds=3,
        evaluated=evaluated,
        evaluate_fn=lambda weights, server_round: {"x": float(weights["x"][0])},
    )

    assert evaluated == []
    for record in result.history:
        assert not [name for name in record.metrics if name.startswith("evaluate.")]
    # Versions 0..3 with Constant updates against the trained base: x = 0, 1, 1 + 2, 3 + 1.
    assert result.history.series("central.x") == [(0, 0.0), (1, 1.0), (2, 3.0), (3, 4.0)]
