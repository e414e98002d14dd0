"""`GrpcChannel`: the orchestrator's Channel to clients connected over gRPC.

It queues each task for its client and yields replies as they arrive. A
client that misses the deadline, stops beating, disconnects or restarts
fails only its own task; a result that arrives after its deadline is dropped
and logged by the service. Each reply holds the server's single upload slot
until the orchestrator asks for the next one, so a FedAvg round keeps one
client's decoded update in memory at a time.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Mapping, Sequence

from fedloom._faults import broadcast_point
from fedloom.core import ClientId, FitIns, Reply, Task
from fedloom.transport.grpc.fleet import Fleet, Replies

__all__ = ["GrpcChannel"]

_POLL_S = 0.25


class GrpcChannel:
    """A Channel over the clients registered in `fleet`."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def clients(self) -> Sequence[ClientId]:
        return self._fleet.names()

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        replies: Replies = queue.Queue()
        for name, task in tasks.items():
            # only a fit returns weights to check against the model it was sent
            expected = task.weights.spec if isinstance(task, FitIns) else None
            self._fleet.send(name, task, expected=expected, replies=replies)
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
