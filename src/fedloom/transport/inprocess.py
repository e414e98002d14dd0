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

import numpy as np
from numpy.typing import NDArray

from fedloom._faults import broadcast_point
from fedloom.core import (
    ClientContext,
    ClientId,
    Failure,
    Partitioner,
    Reply,
    Task,
    Vector,
)
from fedloom.core.dispatch import run_task
from fedloom.core.protocols import Client
from fedloom.errors import ConfigError

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
        client_ids: the clients' names instead of "0" ..; client i gets partition i.
    """

    def __init__(
        self,
        client_fn: ClientFn,
        *,
        num_clients: int,
        seed: int = 0,
        partitioner: Partitioner | None = None,
        latency: Callable[[ClientId], float] | None = None,
        client_ids: Sequence[ClientId] | None = None,
    ) -> None:
        self._client_fn = client_fn
        self._ids = tuple(str(index) for index in range(num_clients))
        if client_ids is not None:
            if len(client_ids) != num_clients or len(set(client_ids)) != num_clients:
                raise ConfigError(
                    f"client_ids must name {num_clients} distinct clients (num_clients), got "
                    f"{list(client_ids)}.",
                    field="client_ids",
                )
            self._ids = tuple(client_ids)
        self._seed = seed
        self._partitioner = partitioner
        self._states: dict[ClientId, dict[str, Vector]] = {}
        self._partitions: dict[bytes, list[NDArray[np.int64]]] = {}  # splits computed once
        self._latency = latency
        self._clock = 0.0
        self._arrivals: list[tuple[float, int, ClientId, Reply]] = []
        self._submitted = 0

    def clients(self) -> Sequence[ClientId]:
        return self._ids

    def client_states(self) -> dict[ClientId, dict[str, Vector]]:
        """What each client's plug-ins keep between tasks (e.g. SCAFFOLD's control variate).

        Virtual clients live in this process, so a checkpoint of a simulation
        saves this and a resumed one gives it back with `restore_client_states`.
        """
        return {client_id: dict(state) for client_id, state in self._states.items()}

    def restore_client_states(self, states: Mapping[ClientId, Mapping[str, Vector]]) -> None:
        """Replace every client's kept state by `states` (from `client_states`)."""
        self._states = {client_id: dict(state) for client_id, state in states.items()}

    def context(self, client_id: ClientId) -> ClientContext:
        """The context a client is built from."""
        return ClientContext(
            client_id=client_id,
            partition_id=self._ids.index(client_id),
            num_partitions=len(self._ids),
            seed=self._seed,
            partitioner=self._partitioner,
            cache=self._partitions,
        )

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        broadcast_point(tasks)  # a test hook: no-op unless FEDLOOM_FAULT_AT is set
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
        except Exception as exc:  # a user's factory must not take the run down
            logger.debug("building client '%s' raised", client_id, exc_info=True)
            reason = f"client '{client_id}' could not be built: {type(exc).__name__}: {exc}"
            return Failure(client_id=client_id, reason=reason, error=exc)
        reply, state = run_task(client, task, self._states.get(client_id, {}), client_id=client_id)
        if state:
            self._states[client_id] = dict(state)
        return reply
