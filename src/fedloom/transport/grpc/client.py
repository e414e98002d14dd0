"""The client side of a deployment: connect out to the server and serve its tasks.

The client dials the server (so it works from behind NAT), joins under its
name, and loops: pull a task, run it, push the result. A heartbeat thread
keeps the session alive during long tasks. When the server cannot be reached
the client says which address it tried and retries with exponential backoff
and jitter — it never spins — then joins again under the same name and so
takes its old place. A refused token or certificate is final: it stops with
the server's reason.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import grpc

from fedloom.core import Client, ClientId, Failure, Scalar
from fedloom.core.dispatch import ClientState, run_task
from fedloom.core.hooks import CycleEvent, StopClient, fire
from fedloom.errors import ConfigError, ConnectError
from fedloom.proto import fleet_pb2, fleet_pb2_grpc
from fedloom.transport.grpc.security import TlsConfig, bearer_metadata, channel_credentials
from fedloom.transport.grpc.wire import (
    CHUNK_BYTES,
    NO_TASK,
    STOP,
    Limits,
    decode_task,
    encode_result,
    peek_header,
    scalars_to_proto,
)

__all__ = ["Backoff", "ClientRuntime"]

logger = logging.getLogger(__name__)

_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff: ``min(max_s, initial_s * factor^k)`` times U(1 - jitter, 1)."""

    initial_s: float = 0.5
    max_s: float = 15.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s and self.factor >= 1 and 0 <= self.jitter < 1):
            raise ConfigError(
                "backoff needs 0 < initial_s <= max_s, factor >= 1 and 0 <= jitter < 1, got "
                f"{self}.",
                field="backoff",
            )

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The waits before each retry."""
        for attempt in itertools.count():
            base = min(self.max_s, self.initial_s * self.factor**attempt)
            yield base * (1 - self.jitter * rng.random())


class ClientRuntime:
    """Serves one client's tasks for a server at `address`.

    Args:
        client: the user's client.
        address: the server's host:port.
        name: this client's name; a restarted client with the same name takes its place.
        token: the client's token (or the shared secret); None sends none.
        tls: the CA to trust (and a client certificate for mutual TLS); None is plain text.
        metadata: told to the server when joining (num_examples, framework, tags, ...).
        backoff: how long to wait between attempts to reach the server.
        poll_s: how long one request for a task waits on the server.
        limits: payload limits checked before allocating.
        chunk_bytes: size of the data frames sent.
        hooks: run at each step of the cycle (`fedloom.core.hooks`); one raising
            `StopClient` ends the cycle after that step.
    """

    def __init__(
        self,
        client: Client,
        *,
        address: str,
        name: ClientId,
        token: str | None = None,
        tls: TlsConfig | None = None,
        metadata: Mapping[str, Scalar] | None = None,
        backoff: Backoff | None = None,
        poll_s: float = 5.0,
        limits: Limits | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        hooks: Sequence[object] = (),
    ) -> None:
        self.client = client
        self.address = address
        self.name = name
        self._token = token
        self._tls = tls
        self._metadata = dict(metadata or {})
        self._backoff = backoff or Backoff()
        self._poll_s = poll_s
        self._limits = limits or Limits()
        self._chunk_bytes = chunk_bytes
        self._state: ClientState = {}
        self._session: str | None = None
        self._heartbeat_s = 2.0
        self._lock = threading.Lock()
        self._hooks = tuple(hooks)
        self.tasks_done = 0

    def run(self, stop: threading.Event | None = None) -> int:
        """Serve tasks until the server ends the run or `stop` is set; the number of tasks run.

        Raises:
            ConnectError: the server refused this client's token or certificate.
        """
        stop = stop or threading.Event()
        rng = random.Random()
        delays = self._backoff.delays(rng)
        options = [
            ("grpc.max_receive_message_length", self._chunk_bytes + (1 << 20)),
            ("grpc.max_send_message_length", self._chunk_bytes + (1 << 20)),
            # gRPC's own reconnect timer (default up to 120 s) follows the backoff too, so a
            # restarted server is reached within max_s of coming back
            ("grpc.initial_reconnect_backoff_ms", int(self._backoff.initial_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(self._backoff.initial_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self._backoff.max_s * 1000)),
        ]
        if self._tls is None:
            channel = grpc.insecure_channel(self.address, options=options)
        else:
            channel = grpc.secure_channel(self.address, channel_credentials(self._tls), options)
        stub = fleet_pb2_grpc.FleetStub(channel)
        beating, finished = threading.Event(), threading.Event()
        heart = threading.Thread(
            target=self._beat, args=(stub, stop, finished, beating), daemon=True
        )
        heart.start()
        ending = "stopped"
        try:
            while not stop.is_set():
                try:
                    if self._session is None:
                        self._join(stub)
                        beating.set()
                        delays = self._backoff.delays(rng)
                    if not self._serve_one(stub):
                        logger.info("the server ended the run")
                        ending = "the server ended the run"
                        break
                except StopClient as exc:
                    logger.info("a hook ended the client's cycle: %s", exc)
                    ending = f"a hook ended the cycle: {exc}"
                    break
                except grpc.RpcError as err:
                    code = err.code()
                    if code in _FATAL:
                        raise ConnectError(
                            f"the server at {self.address} refused client '{self.name}': "
                            f"{err.details()}"
                        ) from err
                    if "handshake failed" in (err.details() or "").lower():
                        raise ConnectError(
                            f"the TLS handshake with {self.address} failed, so client "
                            f"'{self.name}' cannot trust the server or was not trusted: "
                            f"{err.details()}. Check the CA (--ca or --certs) and the client "
                            "certificate."
                        ) from err
                    self._session = None
                    if code == grpc.StatusCode.NOT_FOUND:
                        continue  # the server forgot this session: join again at once
                    delay = next(delays)
                    logger.warning(
                        "cannot reach the server at %s (%s: %s); retrying in %.1f s",
                        self.address,
                        code.name,
                        err.details(),
                        delay,
                    )
                    stop.wait(delay)
        finally:
            finished.set()
            beating.clear()
            heart.join(timeout=5.0)
            self._leave(stub)
            channel.close()
            with contextlib.suppress(StopClient):
                self._fire("at_end", reason=ending)
        return self.tasks_done

    def _fire(
        self,
        step: str,
        *,
        task: str | None = None,
        server_round: object = None,
        reason: str | None = None,
    ) -> None:
        if not self._hooks:
            return
        event = CycleEvent(
            step=step,
            client=self.name,
            task=task,
            server_round=server_round if isinstance(server_round, int) else None,
            tasks_done=self.tasks_done,
            reason=reason,
        )
        fire(self._hooks, event)

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self._token) if self._token else ()

    def _join(self, stub: fleet_pb2_grpc.FleetStub) -> None:
        request = fleet_pb2.JoinRequest(name=self.name)
        scalars_to_proto(self._metadata, request.metadata)
        reply = stub.Join(request, metadata=self._call_metadata(), timeout=10.0)
        with self._lock:
            self._session = reply.session
            self._heartbeat_s = reply.heartbeat_s or 2.0
        logger.info("joined %s as '%s' (run %s)", self.address, self.name, reply.run_id)

    def _serve_one(self, stub: fleet_pb2_grpc.FleetStub) -> bool:
        """Pull one task and answer it; False when the server says the run is over."""
        assert self._session is not None
        frames = stub.Pull(
            fleet_pb2.PullRequest(session=self._session, wait_s=self._poll_s),
            metadata=self._call_metadata(),
            timeout=self._poll_s + 600.0,
        )
        header, stream = peek_header(frames, message="task stream")
        if header.kind == STOP:
            return False
        if header.kind == NO_TASK:
            return True
        kind = str(header.kind)
        self._fire("before_download", task=kind, server_round=_round_of(header))
        task_id, task = decode_task(stream, limits=self._limits)
        server_round = task.config.get("server_round")
        self._fire("after_download", task=kind, server_round=server_round)
        reply, self._state = run_task(self.client, task, self._state, client_id=self.name)
        if isinstance(reply, Failure):
            self._fire("on_failure", task=kind, server_round=server_round, reason=reply.reason)
        self._fire("before_upload", task=kind, server_round=server_round)
        ack = stub.Push(
            encode_result(task_id, reply, session=self._session, chunk_bytes=self._chunk_bytes),
            metadata=self._call_metadata(),
            timeout=600.0,
        )
        self.tasks_done += 1
        if not ack.accepted:
            logger.warning("the server did not take the result: %s", ack.reason)
        self._fire("after_upload", task=kind, server_round=server_round)
        return True

    def _beat(
        self,
        stub: fleet_pb2_grpc.FleetStub,
        stop: threading.Event,
        finished: threading.Event,
        beating: threading.Event,
    ) -> None:
        while not (stop.is_set() or finished.is_set()):
            if not beating.wait(timeout=0.1):  # not joined yet: beat as soon as it is
                continue
            with self._lock:
                session, interval = self._session, self._heartbeat_s
            if session is not None:
                try:
                    reply = stub.Beat(
                        fleet_pb2.BeatRequest(session=session),
                        metadata=self._call_metadata(),
                        timeout=interval,
                    )
                    if not reply.known:
                        logger.info("the server no longer knows this session; joining again")
                except grpc.RpcError:
                    pass  # the main loop reports and retries
            finished.wait(interval)

    def _leave(self, stub: fleet_pb2_grpc.FleetStub) -> None:
        if self._session is None:
            return
        with contextlib.suppress(grpc.RpcError):
            stub.Leave(
                fleet_pb2.BeatRequest(session=self._session),
                metadata=self._call_metadata(),
                timeout=2.0,
            )
        self._session = None


def _round_of(header: fleet_pb2.Header) -> int | None:
    """The task's round, read from its header before the payload is downloaded."""
    scalar = header.config.get("server_round")
    return int(scalar.i) if scalar is not None and scalar.WhichOneof("value") == "i" else None
