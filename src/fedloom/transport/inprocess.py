"""A Channel to clients that live in this process (or its workers), built lazily from their id.

Each task builds its client with the user's ``client_fn`` and drops it when
the task is done, so memory grows with the clients of a round, not with the
federation: the client ids are computed on demand, and nothing per client is
kept except the plug-in state a client carries between rounds, stored
compactly (`ClientStates`). Who runs the tasks is an `Executor`: one after
another in this process (`LocalExecutor`, the default), or the simulation's
process pool, Ray cluster or vectorized engine. A client that raises fails
only its own task.

Time is virtual. Each task takes its client's ``task_s`` virtual seconds (1
without a fleet model); a client the fleet says is offline for a round fails
that round's tasks, and a task slower than the round's deadline (``timeout_s``)
fails as a missed deadline, as a deployed client's would.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, overload

import numpy as np

from fedloom._faults import broadcast_point
from fedloom.core import (
    ClientContext,
    ClientId,
    Failure,
    FitIns,
    GetWeightsIns,
    Partitioner,
    Reply,
    Task,
    Vector,
)
from fedloom.core.context import SplitCache
from fedloom.core.dispatch import ClientState, run_task
from fedloom.core.protocols import Client
from fedloom.errors import ConfigError
from fedloom.secagg import is_stage_task

if TYPE_CHECKING:
    from fedloom.secagg.sessions import SecAggSessions

__all__ = [
    "ClientFn",
    "ClientIds",
    "ClientStates",
    "Executor",
    "FleetModel",
    "InProcessChannel",
    "Job",
    "LocalExecutor",
    "run_job",
]

logger = logging.getLogger(__name__)

ClientFn = Callable[[ClientContext], Client]
"""Builds the client of one context: ``client_fn(context) -> Client``."""


@dataclass(frozen=True, slots=True)
class Job:
    """One task for one client: who, built from which context, and the state it carries."""

    client_id: ClientId
    context: ClientContext
    task: Task
    state: ClientState


class Executor(Protocol):
    """Runs jobs: in this process, in worker processes, on a cluster, or batched."""

    def execute(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply, ClientState]]:
        """Run `jobs`; yield ``(index in jobs, reply, client state after it)``, each once.

        Replies may come in any order. Errors in a client's code are a `Failure`
        reply, never an exception.
        """
        ...

    def close(self) -> None:
        """Release what the executor holds (worker processes, a cluster connection)."""
        ...


class FleetModel(Protocol):
    """How fast each simulated client is and when it is online (see fedloom.simulation.Fleet)."""

    def task_seconds(self, client_id: ClientId) -> float:
        """Virtual seconds the client takes per task."""
        ...

    def online(self, client_id: ClientId, server_round: int) -> bool:
        """Whether the client is reachable in `server_round`."""
        ...


def run_job(client_fn: ClientFn, job: Job) -> tuple[Reply, ClientState]:
    """Build the job's client with `client_fn` and run its task (the same code in every engine).

    Never raises for errors in the user's code: they become a `Failure`.
    """
    try:
        client = client_fn(job.context)
    except Exception as exc:  # a user's factory must not take the run down
        logger.debug("building client '%s' raised", job.client_id, exc_info=True)
        reason = f"client '{job.client_id}' could not be built: {type(exc).__name__}: {exc}"
        return Failure(client_id=job.client_id, reason=reason, error=exc), job.state
    return run_task(client, job.task, job.state, client_id=job.client_id)


class LocalExecutor:
    """Runs jobs one after another in this process, as they are asked for (the sequential engine).

    Args:
        client_fn: builds a client from its `ClientContext`.
    """

    def __init__(self, client_fn: ClientFn) -> None:
        self.client_fn = client_fn

    def execute(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Reply, ClientState]]:
        for index, job in enumerate(jobs):
            reply, state = run_job(self.client_fn, job)
            yield index, reply, state

    def close(self) -> None:
        """Nothing to release."""


class ClientIds(Sequence[ClientId]):
    """The ids "0" .. str(n - 1), computed on demand: no per-client object for n clients.

    Example:
        >>> ids = ClientIds(100_000)
        >>> len(ids), ids[7], ids.index("99999"), "100000" in ids
        (100000, '7', 99999, False)
    """

    __slots__ = ("_count",)

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> ClientId: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ClientId]: ...

    def __getitem__(self, index: int | slice) -> ClientId | Sequence[ClientId]:
        if isinstance(index, slice):
            return [str(i) for i in range(self._count)[index]]
        return str(range(self._count)[index])

    def __iter__(self) -> Iterator[ClientId]:
        return map(str, range(self._count))

    def __contains__(self, value: object) -> bool:
        return self._position(value) is not None

    def index(self, value: object, start: int = 0, stop: int | None = None) -> int:
        position = self._position(value)
        end = self._count if stop is None else stop
        if position is None or not start <= position < end:
            raise ValueError(f"{value!r} is not a client id of this federation")
        return position

    def _position(self, value: object) -> int | None:
        if not isinstance(value, str) or not value.isdigit() or str(int(value)) != value:
            return None
        position = int(value)
        return position if position < self._count else None


class ClientStates:
    """Each client's plug-in state between its tasks, as one compact byte buffer per client.

    A state (``{"scaffold.c_i": vector, ...}``) is stored as its arrays end to
    end in one buffer plus a layout shared by every client with the same names,
    sizes and dtypes: no live client object, and no per-array object per client.

    Example:
        >>> states = ClientStates()
        >>> states.put("3", {"c": np.array([1.0, 2.0])})
        >>> states.get("3")["c"].tolist(), dict(states.get("4"))
        ([1.0, 2.0], {})
    """

    def __init__(self) -> None:
        self._layouts: dict[tuple[tuple[str, int, str], ...], int] = {}
        self._layout_list: list[tuple[tuple[str, int, str], ...]] = []
        self._buffers: dict[ClientId, tuple[int, bytes]] = {}

    def __len__(self) -> int:
        return len(self._buffers)

    def ids(self) -> list[ClientId]:
        """The clients that keep a state."""
        return list(self._buffers)

    def get(self, client_id: ClientId) -> ClientState:
        """The client's state as read-only arrays (empty when it kept none)."""
        stored = self._buffers.get(client_id)
        if stored is None:
            return {}
        layout_index, buffer = stored
        state: dict[str, np.ndarray] = {}
        offset = 0
        for name, size, dtype in self._layout_list[layout_index]:
            array = np.frombuffer(buffer, dtype=dtype, count=size, offset=offset)
            state[name] = array
            offset += array.nbytes
        return state

    def put(self, client_id: ClientId, state: ClientState) -> None:
        """Keep `state` for the client (an empty state forgets it)."""
        if not state:
            self._buffers.pop(client_id, None)
            return
        arrays = [np.ascontiguousarray(value).reshape(-1) for value in state.values()]
        layout = tuple(
            (name, int(array.size), array.dtype.str)
            for name, array in zip(state, arrays, strict=True)
        )
        layout_index = self._layouts.get(layout)
        if layout_index is None:
            layout_index = self._layouts[layout] = len(self._layout_list)
            self._layout_list.append(layout)
        self._buffers[client_id] = (layout_index, b"".join(array.tobytes() for array in arrays))


class InProcessChannel:
    """Runs each task by building the client and calling it, through an `Executor`.

    `run` (synchronous rounds) yields replies in order of virtual arrival
    (each client's ``task_s``; ties keep the task order). For asynchronous
    schedules `submit` files each task to arrive ``task_s`` virtual seconds
    later (it runs, batched with the others filed, when its reply is needed;
    a result depends only on its inputs); `collect` hands replies out in
    order of arrival.

    Args:
        client_fn: builds a client from its `ClientContext`.
        num_clients: clients are named "0" .. str(num_clients - 1).
        seed: the run seed, passed to every context.
        partitioner: how the data is split, passed to every context.
        latency: virtual seconds a client takes per task (default: the fleet's, else 1).
        executor: who runs the tasks (default: `LocalExecutor`, one after another here).
        fleet: per-client speed and availability (default: every client online, 1 s a task).
        device: the device every context names ("cpu", "cuda:0", ...).
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
        executor: Executor | None = None,
        fleet: FleetModel | None = None,
        device: str = "cpu",
        client_ids: Sequence[ClientId] | None = None,
    ) -> None:
        self._client_fn = client_fn
        self._ids: Sequence[ClientId] = ClientIds(num_clients)
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
        self._device = device
        self.states = ClientStates()
        """The plug-in state each client keeps between its tasks."""
        self._partitions = SplitCache()  # splits computed once, kept compactly
        self._latency = latency
        self._fleet = fleet
        self._executor: Executor = executor if executor is not None else LocalExecutor(client_fn)
        self._clock = 0.0
        self._arrivals: list[tuple[float, int, ClientId]] = []  # (arrival, order, client)
        self._outcomes: dict[int, Reply | Job] = {}  # by order: a reply, or a job not yet run
        self._submitted = 0
        self._secagg: SecAggSessions | None = None

    @property
    def clock(self) -> float:
        """Virtual seconds since the run started."""
        return self._clock

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
            device=self._device,
            cache=self._partitions,
        )

    def close(self) -> None:
        """Release the executor's workers."""
        self._executor.close()

    def client_states(self) -> dict[ClientId, dict[str, Vector]]:
        """What each client's plug-ins keep between tasks (e.g. SCAFFOLD's control variate).

        Virtual clients live in this process, so a checkpoint of a simulation
        saves this and a resumed one gives it back with `restore_client_states`.
        """
        return {
            client_id: {name: np.array(value) for name, value in self.states.get(client_id).items()}
            for client_id in self.states.ids()
        }

    def restore_client_states(self, states: Mapping[ClientId, Mapping[str, Vector]]) -> None:
        """Replace every client's kept state by `states` (from `client_states`)."""
        self.states = ClientStates()
        for client_id, state in states.items():
            self.states.put(client_id, dict(state))

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        broadcast_point(tasks)  # a test hook: no-op unless FEDLOOM_FAULT_AT is set
        secure = {cid: task for cid, task in tasks.items() if is_stage_task(task)}
        for client_id, task in secure.items():  # SecAgg+ stages are answered here, in order
            yield client_id, self._secure_stage(client_id, task)
        if secure:
            tasks = {cid: task for cid, task in tasks.items() if cid not in secure}
        planned: list[tuple[float, int, ClientId, Task | Failure]] = []
        for order, (client_id, task) in enumerate(tasks.items()):
            arrival, outcome = self._plan(client_id, task, timeout_s)
            planned.append((arrival, order, client_id, outcome))
        planned.sort(key=lambda entry: (entry[0], entry[1]))
        if planned:
            self._clock += planned[-1][0]
        jobs: list[Job] = []
        slots: list[int] = []  # the position in `planned` of each job
        for position, (_, _, client_id, outcome) in enumerate(planned):
            if not isinstance(outcome, Failure):
                jobs.append(self._job(client_id, outcome))
                slots.append(position)
        ready: dict[int, Reply] = {}
        next_position = 0
        replies = self._executor.execute(jobs) if jobs else iter(())
        try:
            while next_position < len(planned):
                _, _, client_id, outcome = planned[next_position]
                if isinstance(outcome, Failure):
                    next_position += 1
                    yield client_id, outcome
                    continue
                while next_position not in ready:  # replies may come out of order: keep them
                    index, reply, state = next(replies)
                    self._keep(jobs[index], state)
                    ready[slots[index]] = reply
                yield client_id, ready.pop(next_position)
                next_position += 1
        finally:
            close = getattr(replies, "close", None)
            if close is not None:  # let the executor tidy up now, not when collected
                close()

    def submit(self, tasks: Mapping[ClientId, Task]) -> None:
        """File each task to arrive ``task_s`` virtual seconds from now.

        A task runs when `collect` first needs a reply that is not ready, together
        with every other task filed by then, so an engine with workers runs them
        side by side. Its result depends only on its inputs, so when it runs
        changes nothing; a client has one task in flight at a time, so the state
        it carries is the one it would have had.
        """
        for client_id, task in tasks.items():
            arrival, outcome = self._plan(client_id, task, None)
            if isinstance(outcome, Failure):
                self._file(self._clock, client_id, outcome)
            else:
                self._file(self._clock + arrival, client_id, self._job(client_id, outcome))

    def collect(self, *, timeout_s: float | None) -> tuple[ClientId, Reply] | None:
        if not self._arrivals:
            return None
        arrival, order, client_id = self._arrivals[0]
        if timeout_s is not None and arrival - self._clock > timeout_s:
            self._clock += timeout_s  # waited the whole timeout; nothing came
            return None
        if isinstance(self._outcomes[order], Job):
            self._run_filed()
        heapq.heappop(self._arrivals)
        self._clock = max(self._clock, arrival)
        reply = self._outcomes.pop(order)
        assert not isinstance(reply, Job)
        return client_id, reply

    def _run_filed(self) -> None:
        """Run every filed task that has not run yet, as one batch."""
        orders: list[int] = []
        jobs: list[Job] = []
        for order, item in self._outcomes.items():
            if isinstance(item, Job):
                orders.append(order)
                jobs.append(item)
        for index, reply, state in self._executor.execute(jobs):
            self._keep(jobs[index], state)
            self._outcomes[orders[index]] = reply

    def _plan(
        self, client_id: ClientId, task: Task, timeout_s: float | None
    ) -> tuple[float, Task | Failure]:
        """When the task's reply arrives (virtual seconds from now), and the task or its failure."""
        if isinstance(task, GetWeightsIns):
            return 0.0, task
        server_round = int(task.config.get("server_round", 0))
        if self._fleet is not None and not self._fleet.online(client_id, server_round):
            reason = (
                f"client '{client_id}' is offline in round {server_round} (the simulated "
                "fleet's availability); its task was not delivered"
            )
            return 0.0, Failure(client_id=client_id, reason=reason)
        seconds = self._task_s(client_id)
        if timeout_s is not None and seconds > timeout_s:
            reason = (
                f"client '{client_id}' missed the deadline of round {server_round}: it needs "
                f"{seconds:.3g} virtual s per task, the deadline is {timeout_s:.3g} s; its late "
                "result is dropped"
            )
            return float(timeout_s), Failure(client_id=client_id, reason=reason)
        return seconds, task

    def _task_s(self, client_id: ClientId) -> float:
        if self._latency is not None:
            return float(self._latency(client_id))
        if self._fleet is not None:
            return float(self._fleet.task_seconds(client_id))
        return 1.0

    def _job(self, client_id: ClientId, task: Task) -> Job:
        return Job(client_id, self.context(client_id), task, self.states.get(client_id))

    def _keep(self, job: Job, state: ClientState) -> None:
        if state is not job.state and (state or job.state):
            self.states.put(job.client_id, state)

    def _secure_stage(self, client_id: ClientId, task: Task) -> Reply:
        """Answer a SecAgg+ stage; the masked-input stage trains through the executor."""
        from fedloom.secagg.sessions import SecAggSessions  # loads cryptography when used

        if self._secagg is None:
            self._secagg = SecAggSessions()

        def fit(ins: FitIns) -> Reply:
            job = self._job(client_id, ins)
            replies = [(reply, state) for _, reply, state in self._executor.execute([job])]
            reply, state = replies[0]
            self._keep(job, state)
            return reply

        assert isinstance(task, FitIns)  # is_stage_task checked it
        return self._secagg.handle(client_id, task, fit)

    def _file(self, arrival: float, client_id: ClientId, outcome: Reply | Job) -> None:
        self._submitted += 1
        self._outcomes[self._submitted] = outcome
        heapq.heappush(self._arrivals, (arrival, self._submitted, client_id))
