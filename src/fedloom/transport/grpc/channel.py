"""`GrpcChannel`: the orchestrator's Channel to clients connected over gRPC.

It queues each task for its client and yields replies as they arrive. A
client that misses the deadline, stops beating, disconnects or restarts
fails only its own task; a result that arrives after its deadline is dropped
and logged by the service. Each reply holds the server's single upload slot
until the orchestrator asks for the next one, so a FedAvg round keeps one
client's decoded update in memory at a time.

For asynchronous schedules (FedBuff, FedAsync) it is an `AsyncChannel` too:
`submit` queues tasks and returns at once, `collect` hands out the next reply
of any submitted task. The same rules hold there: each task has its own
deadline (``timeout_s`` from when it was submitted), a dead or departed
client fails only its task, a late result is dropped, and a collected reply
holds the upload slot until the next `collect` (or `close`).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from fedloom._faults import broadcast_point
from fedloom.core import ClientId, FitIns, Reply, Task
from fedloom.secagg import is_stage_task
from fedloom.transport.grpc.fleet import Fleet, Pending, Replies

__all__ = ["GrpcChannel"]

_POLL_S = 0.25
_CLOSE_WAIT_S = 5.0
"""How long `close` waits for a reply that is being handed over as it expires the rest."""


class GrpcChannel:
    """A Channel (and AsyncChannel) over the clients registered in `fleet`."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._background: Replies = queue.Queue()  # replies of submitted tasks
        self._sent_at: dict[str, tuple[Pending, float]] = {}  # submitted tasks by task id
        self._awaited = 0  # submitted tasks whose reply was not collected yet
        self._held: Callable[[], None] | None = None  # frees the last collected reply's slot

    def clients(self) -> Sequence[ClientId]:
        return self._fleet.names()

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        self._release_held()
        replies: Replies = queue.Queue()
        self._send(tasks, replies)
        broadcast_point(tasks)  # a test hook: no-op unless FEDLOOM_FAULT_AT is set
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        remaining = len(tasks)
        while remaining:
            try:
                name, reply, release = replies.get(timeout=_POLL_S)
            except queue.Empty:
                self._fleet.names()  # reaps silent clients: their tasks fail into `replies`
                if deadline is not None and time.monotonic() >= deadline:
                    for pending in self._fleet.outstanding(replies):
                        self._fleet.expire(
                            pending, f"client '{pending.name}' missed the {timeout_s:g} s deadline"
                        )
                continue
            remaining -= 1
            try:
                yield name, reply
            finally:
                del reply  # the fold is done with it: free it before the next is decoded
                release()

    def submit(self, tasks: Mapping[ClientId, Task]) -> None:
        """Queue `tasks` for their clients and return; their replies come from `collect`.

        A client that is not connected fails its task at once (a `Failure` to collect).
        """
        now = time.monotonic()
        for pending in self._send(tasks, self._background):
            self._sent_at[pending.task_id] = (pending, now)
        self._awaited += len(tasks)

    def collect(self, *, timeout_s: float | None) -> tuple[ClientId, Reply] | None:
        """The next reply of a submitted task, in arrival order; None when none is awaited.

        Asking for it means the previous collected reply was used: its upload slot is
        freed first. A task still running `timeout_s` after it was submitted fails as a
        missed deadline; a client that stops beating or leaves fails its task.

        Returns:
            ``(client_id, reply)``; None at once when no submitted task is awaited, or
            when nothing arrived within `timeout_s` (None: wait as long as it takes).
        """
        self._release_held()
        if self._awaited == 0:
            return None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self._expire_overdue(timeout_s)  # each call: replies flowing must not hide one
            try:
                name, reply, release = self._background.get(timeout=_POLL_S)
            except queue.Empty:
                self._fleet.names()  # reaps silent clients: their tasks fail into the queue
                self._expire_overdue(timeout_s)
                overdue = deadline is not None and time.monotonic() >= deadline
                if overdue and self._background.empty():
                    return None
                continue
            self._awaited -= 1
            self._held = release
            return name, reply

    def close(self) -> None:
        """Stop awaiting submitted tasks and free the upload slot; later results are dropped.

        Call it when the run ends: a client still training an asynchronous task then
        finds its result refused as late instead of waiting for a slot that no one frees.
        """
        self._release_held()
        for pending in list(self._fleet.outstanding(self._background)):
            self._fleet.expire(pending, f"the run ended before client '{pending.name}' answered")
        self._sent_at.clear()
        deadline = time.monotonic() + _CLOSE_WAIT_S
        while self._awaited > 0:  # every awaited task puts exactly one reply on the queue
            try:
                _, _, release = self._background.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self._awaited -= 1
            release()

    def _send(self, tasks: Mapping[ClientId, Task], replies: Replies) -> list[Pending]:
        sent: list[Pending] = []
        for name, task in tasks.items():
            # only a fit returns weights to check against the model it was sent; a
            # secure-aggregation stage returns its own tensors (fedloom.secagg checks them)
            plain_fit = isinstance(task, FitIns) and not is_stage_task(task)
            expected = task.weights.spec if isinstance(task, FitIns) and plain_fit else None
            pending = self._fleet.send(name, task, expected=expected, replies=replies)
            if pending is not None:
                sent.append(pending)
        return sent

    def _expire_overdue(self, timeout_s: float | None) -> None:
        """Fail each submitted task older than `timeout_s`; forget those already answered."""
        now = time.monotonic()
        for task_id, (pending, sent) in list(self._sent_at.items()):
            if pending.done:
                del self._sent_at[task_id]
            elif timeout_s is not None and now - sent >= timeout_s:
                del self._sent_at[task_id]
                self._fleet.expire(
                    pending, f"client '{pending.name}' missed the {timeout_s:g} s deadline"
                )

    def _release_held(self) -> None:
        if self._held is not None:
            release, self._held = self._held, None
            release()
