"""A Channel to clients that live in this process, built lazily from their id.

Each task builds its client with the user's ``client_fn`` and drops it when
the task is done, so memory grows with the clients of a round, not with the
federation. Tasks run one after another; a client that raises fails only its
own task.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

from fedloom.core import (
    ClientContext,
    ClientId,
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    GetWeightsIns,
    Partitioner,
    Reply,
    Task,
    Vector,
    WeightsRes,
)
from fedloom.core.protocols import Client

__all__ = ["ClientFn", "InProcessChannel"]

logger = logging.getLogger(__name__)

ClientFn = Callable[[ClientContext], Client]
"""Builds the client of one context: ``client_fn(context) -> Client``."""


class InProcessChannel:
    """Runs each task by building the client and calling it directly.

    For asynchronous schedules it simulates concurrency on a virtual clock:
    `submit` runs each task at once (the result depends only on its inputs)
    and files the reply to arrive ``latency(client_id)`` virtual seconds
    later; `collect` hands replies out in order of arrival.

    Args:
        client_fn: builds a client from its `ClientContext`.
        num_clients: clients are named "0" .. str(num_clients - 1).
        seed: the run seed, passed to every context.
        partitioner: how the data is split, passed to every context.
        latency: virtual seconds a client takes per task (default 1 for all).
    """

    def __init__(
        self,
        client_fn: ClientFn,
        *,
        num_clients: int,
        seed: int = 0,
        partitioner: Partitioner | None = None,
        latency: Callable[[ClientId], float] | None = None,
    ) -> None:
        self._client_fn = client_fn
        self._ids = tuple(str(index) for index in range(num_clients))
        self._seed = seed
        self._partitioner = partitioner
        self._states: dict[ClientId, dict[str, Vector]] = {}
        self._latency = latency
        self._clock = 0.0
        self._arrivals: list[tuple[float, int, ClientId, Reply]] = []
        self._submitted = 0

    def clients(self) -> Sequence[ClientId]:
        return self._ids

    def context(self, client_id: ClientId) -> ClientContext:
        """The context a client is built from."""
        return ClientContext(
            client_id=client_id,
            partition_id=self._ids.index(client_id),
            num_partitions=len(self._ids),
            seed=self._seed,
            partitioner=self._partitioner,
        )

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        for client_id, task in tasks.items():
            yield client_id, self._run_one(client_id, task)

    def submit(self, tasks: Mapping[ClientId, Task]) -> None:
        for client_id, task in tasks.items():
            delay = 1.0 if self._latency is None else float(self._latency(client_id))
            reply = self._run_one(client_id, task)
            self._submitted += 1
            heapq.heappush(self._arrivals, (self._clock + delay, self._submitted, client_id, reply))

    def collect(self, *, timeout_s: float | None) -> tuple[ClientId, Reply] | None:
        if not self._arrivals:
            return None
        arrival, _, client_id, reply = heapq.heappop(self._arrivals)
        self._clock = max(self._clock, arrival)
        return client_id, reply

    def _run_one(self, client_id: ClientId, task: Task) -> Reply:
        try:
            client = self._client_fn(self.context(client_id))
            if isinstance(task, FitIns) and task.config.get("plugins"):
                return self._fit_plugins(client_id, client, task)
            return _dispatch(client, task)
        except Exception as exc:  # a user's client must not take the run down
            logger.debug("client '%s' raised", client_id, exc_info=True)
            return Failure(
                client_id=client_id,
                reason=f"client '{client_id}' raised {type(exc).__name__}: {exc}",
                error=exc,
            )

    def _fit_plugins(self, client_id: ClientId, client: Client, task: FitIns) -> Reply:
        """Fit with plug-ins, keeping the client's plug-in state here between its tasks."""
        fit_plugins = getattr(client, "fit_plugins", None)
        if fit_plugins is None:
            raise TypeError(
                f"the strategy uses client plug-ins ({task.config['plugins']}) but "
                f"{type(client).__name__} does not apply plug-ins. Use TorchClient or "
                "GradientClient, or a strategy without plug-ins."
            )
        state = self._states.get(client_id, {})
        result, new_state = fit_plugins(task.weights, task.config, task.tensors, state)
        if not isinstance(result, FitRes):
            raise TypeError(f"fit_plugins() must return FitRes, got {type(result).__name__}")
        self._states[client_id] = dict(new_state)
        return result


def _dispatch(client: Client, task: Task) -> Reply:
    if isinstance(task, FitIns):
        result = client.fit(task.weights, task.config)
        if not isinstance(result, FitRes):
            raise TypeError(f"fit() must return FitRes, got {type(result).__name__}")
        return result
    if isinstance(task, EvaluateIns):
        evaluate = getattr(client, "evaluate", None)
        if evaluate is None:
            raise TypeError(f"{type(client).__name__} has no evaluate() method")
        evaluation = evaluate(task.weights, task.config)
        if not isinstance(evaluation, EvaluateRes):
            raise TypeError(f"evaluate() must return EvaluateRes, got {type(evaluation).__name__}")
        return evaluation
    if isinstance(task, GetWeightsIns):
        return WeightsRes(weights=client.get_weights())
    raise TypeError(f"unknown task type {type(task).__name__}")
