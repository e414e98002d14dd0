"""The server's view of its clients: sessions, their task queues, and results in flight.

`Fleet` is shared by the gRPC servicer (which clients call) and `GrpcChannel`
(which the orchestrator calls). It holds no grpc objects, so its logic is
tested without a network. A client is known by its name; a client that joins
again under the same name takes its old place (its old session ends, and a
task it was running fails).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from fedloom.core import ClientId, Failure, Reply, Scalar, Task, VectorSpec
from fedloom.errors import ConfigError

__all__ = ["Fleet", "Pending", "Replies", "Session"]

logger = logging.getLogger(__name__)

Replies = queue.Queue[tuple[ClientId, Reply, Callable[[], None]]]
"""Where a round's replies arrive, each with the callback that frees its upload slot."""


@dataclass(eq=False)
class Session:
    """One connected client."""

    name: ClientId
    session_id: str
    metadata: Mapping[str, Scalar]
    joined_at: float
    last_seen: float
    tasks: queue.Queue[tuple[str, Task]] = field(default_factory=queue.Queue)
    alive: bool = True


@dataclass(eq=False)
class Pending:
    """A task sent to a client whose result has not come back yet."""

    task_id: str
    name: ClientId
    session_id: str
    expected: VectorSpec | None
    replies: Replies
    done: bool = False


class Fleet:
    """Registry of sessions and of tasks awaiting results.

    Args:
        max_clients: the most clients admitted at once (None: no limit).
        heartbeat_s: how often clients are asked to beat; a client silent for
            three intervals is considered dead.
        clock: time source (injectable for tests).
    """

    def __init__(
        self,
        *,
        max_clients: int | None = None,
        heartbeat_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_clients is not None and max_clients < 1:
            raise ConfigError(f"max_clients must be >= 1, got {max_clients}.", field="max_clients")
        self.max_clients = max_clients
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._lock = threading.Condition()
        self._sessions: dict[str, Session] = {}
        self._by_name: dict[ClientId, str] = {}
        self._pending: dict[str, Pending] = {}
        self._uploads = threading.Semaphore(1)
        self.run_id = uuid.uuid4().hex[:12]
        self.stopping = False
        self._received_bytes = 0
        self._received_lock = threading.Lock()

    # --- traffic ----------------------------------------------------------------------

    def count_received(self, num_bytes: int) -> None:
        """Add `num_bytes` (a request message the service received) to `received_bytes`."""
        with self._received_lock:
            self._received_bytes += num_bytes

    @property
    def received_bytes(self) -> int:
        """Bytes of every request message received from clients (serialized protobuf)."""
        with self._received_lock:
            return self._received_bytes

    # --- sessions ---------------------------------------------------------------------

    def join(self, name: ClientId, metadata: Mapping[str, Scalar]) -> Session:
        """Admit `name` (replacing its previous session), or raise ConfigError when full."""
        with self._lock:
            previous = self._by_name.get(name)
            full = self.max_clients is not None and len(self._live_names()) >= self.max_clients
            if previous is None and full:
                raise ConfigError(
                    f"the server admits at most {self.max_clients} clients and is full; "
                    f"'{name}' was refused. Try again later or raise max_clients.",
                    field="max_clients",
                )
            if previous is not None:
                self._end(previous, reason=f"client '{name}' joined again (restarted)")
            now = self._clock()
            session = Session(
                name=name,
                session_id=uuid.uuid4().hex,
                metadata=dict(metadata),
                joined_at=now,
                last_seen=now,
            )
            self._sessions[session.session_id] = session
            self._by_name[name] = session.session_id
            self._lock.notify_all()
        logger.info("client '%s' joined (%d connected)", name, len(self.names()))
        return session

    def leave(self, session_id: str) -> bool:
        """End a session at the client's request; False if it was unknown."""
        with self._lock:
            if session_id not in self._sessions:
                return False
            self._end(session_id, reason="client left")
            self._lock.notify_all()
            return True

    def touch(self, session_id: str) -> Session | None:
        """Record a sign of life; the session, or None if it is unknown or ended."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not session.alive:
                return None
            session.last_seen = self._clock()
            return session

    def names(self) -> list[ClientId]:
        """Live clients, in join order (dead ones are reaped first)."""
        with self._lock:
            self._reap()
            return self._live_names()

    def session_of(self, name: ClientId) -> Session | None:
        """The live session of client `name`, if it is connected."""
        with self._lock:
            session_id = self._by_name.get(name)
            return None if session_id is None else self._sessions[session_id]

    def metadata(self, name: ClientId) -> Mapping[str, Scalar]:
        """What `name` said about itself when it joined."""
        with self._lock:
            return self._sessions[self._by_name[name]].metadata

    def wait_for(self, count: int, *, timeout_s: float) -> list[ClientId]:
        """Block until at least `count` clients are live or `timeout_s` passes; the live names."""
        deadline = self._clock() + timeout_s
        with self._lock:
            while True:
                self._reap()
                names = self._live_names()
                remaining = deadline - self._clock()
                if len(names) >= count or remaining <= 0:
                    return names
                self._lock.wait(timeout=min(remaining, 0.5))

    def _live_names(self) -> list[ClientId]:
        return [s.name for s in self._sessions.values() if s.alive]

    def _reap(self) -> None:
        limit = 3 * self.heartbeat_s
        now = self._clock()
        for session in list(self._sessions.values()):
            if session.alive and now - session.last_seen > limit:
                logger.warning(
                    "client '%s' missed its heartbeats for %.1f s; dropping it",
                    session.name,
                    now - session.last_seen,
                )
                self._end(session.session_id, reason=f"client '{session.name}' stopped beating")

    def _end(self, session_id: str, *, reason: str) -> None:
        session = self._sessions.pop(session_id)
        session.alive = False
        session.tasks.put(_STOP)  # a request waiting on it returns, and the client joins again
        if self._by_name.get(session.name) == session_id:
            del self._by_name[session.name]
        for pending in list(self._pending.values()):
            if pending.session_id == session_id:
                self._fail(pending, reason)

    # --- tasks ------------------------------------------------------------------------

    def send(
        self,
        name: ClientId,
        task: Task,
        *,
        expected: VectorSpec | None,
        replies: Replies,
    ) -> Pending | None:
        """Queue `task` for `name`; None (with a Failure on `replies`) if it is not connected."""
        with self._lock:
            session_id = self._by_name.get(name)
            if session_id is None:
                replies.put(
                    (
                        name,
                        Failure(client_id=name, reason=f"client '{name}' is not connected"),
                        _nothing,
                    )
                )
                return None
            pending = Pending(
                task_id=uuid.uuid4().hex,
                name=name,
                session_id=session_id,
                expected=expected,
                replies=replies,
            )
            self._pending[pending.task_id] = pending
            self._sessions[session_id].tasks.put((pending.task_id, task))
            return pending

    def claim(self, task_id: str, session_id: str) -> Pending | str:
        """The pending task a result answers, or why the result cannot be accepted."""
        with self._lock:
            pending = self._pending.get(task_id)
            if pending is None:
                return f"task {task_id[:8]} is not awaited (late, already answered, or unknown)"
            if pending.session_id != session_id:
                return f"task {task_id[:8]} was sent to another client"
            return pending

    def deliver(self, pending: Pending, reply: Reply, *, holds_upload: bool) -> bool:
        """Hand `reply` to the round waiting for it.

        With `holds_upload`, the upload slot stays taken until the round has
        used the reply (folded it), so one decoded result is in memory at a time.
        Returns False if the round stopped waiting meanwhile.
        """
        with self._lock:
            if pending.done:
                return False
            pending.done = True
            del self._pending[pending.task_id]
        release = self.release_upload if holds_upload else _nothing
        pending.replies.put((pending.name, reply, release))
        return True

    def expire(self, pending: Pending, reason: str) -> None:
        """Stop waiting for `pending` (deadline passed); a result arriving later is dropped."""
        with self._lock:
            if not pending.done:
                self._fail(pending, reason)

    def _fail(self, pending: Pending, reason: str) -> None:
        pending.done = True
        self._pending.pop(pending.task_id, None)
        pending.replies.put(
            (pending.name, Failure(client_id=pending.name, reason=reason), _nothing)
        )

    def next_task(self, session: Session, *, wait_s: float) -> tuple[str, Task] | None:
        """The session's next task, waiting up to `wait_s`; None if none came (or stopping)."""
        try:
            item = session.tasks.get(timeout=max(0.0, wait_s))
        except queue.Empty:
            return None
        return None if item is _STOP else item

    def stop(self, *, wait_s: float = 0.0) -> None:
        """End the run: every waiting or later request for a task is told to stop.

        Waits up to `wait_s` for the clients to hear it and leave, so none is
        left retrying a server that is gone.
        """
        deadline = self._clock() + wait_s
        with self._lock:
            self.stopping = True
            for session in self._sessions.values():
                session.tasks.put(_STOP)
            while self._live_names() and self._clock() < deadline:
                self._reap()
                self._lock.wait(timeout=0.2)

    # --- upload gate: one decoded result in memory at a time ---------------------------

    def acquire_upload(self, timeout_s: float | None = None) -> bool:
        """Take the upload slot before reading a result's payload."""
        return self._uploads.acquire(timeout=timeout_s)

    def release_upload(self) -> None:
        """Free the upload slot (after the result was folded, or was refused)."""
        self._uploads.release()

    def outstanding(self, replies: Replies) -> Iterator[Pending]:
        """Pending tasks whose replies go to `replies`."""
        with self._lock:
            return iter([p for p in self._pending.values() if p.replies is replies])


_STOP: tuple[str, Task] = ("", None)  # type: ignore[assignment]
"""Queued to wake a waiting request when the run ends."""


def _nothing() -> None:
    """Release callback for replies that hold no upload slot."""
