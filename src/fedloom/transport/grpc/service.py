"""The gRPC service clients call (join, beat, pull a task, push a result), and its server.

Every refusal is logged on the server and explained to the client; the
server keeps serving the others. Results are decoded one at a time (the
fleet's upload slot), checked against the task they answer (its id binds run,
round and client), and handed to the waiting round.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import NoReturn

import grpc

from fedloom.core import Failure
from fedloom.errors import ConfigError, FedloomError
from fedloom.proto import fleet_pb2, fleet_pb2_grpc
from fedloom.transport.grpc.distribution import PackageOffer, encode_package
from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.security import (
    AuthInterceptor,
    TlsConfig,
    Tokens,
    caller_identity,
    server_credentials,
)
from fedloom.transport.grpc.wire import (
    CHUNK_BYTES,
    NO_TASK,
    STOP,
    Limits,
    decode_result,
    encode_signal,
    encode_task,
    peek_header,
    scalars_from_proto,
)

__all__ = ["FleetService", "RunningServer", "start_server"]

logger = logging.getLogger(__name__)

MAX_POLL_S = 20.0


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with `code` and a message the client shows its user."""
    context.abort(code, message)
    raise AssertionError("grpc's abort raises")  # pragma: no cover


class FleetService(fleet_pb2_grpc.FleetServicer):
    """Answers clients' calls on behalf of a `Fleet`."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        tokens: Tokens | None,
        limits: Limits,
        chunk_bytes: int = CHUNK_BYTES,
        package: PackageOffer | None = None,
    ) -> None:
        self._fleet = fleet
        self._tokens = tokens
        self._limits = limits
        self._chunk_bytes = chunk_bytes
        self._package = package

    def Join(  # noqa: N802 - the RPC's name
        self, request: fleet_pb2.JoinRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.JoinReply:
        self._fleet.count_received(request.ByteSize())
        if self._tokens is not None:
            owner = caller_identity(context, self._tokens)
            if owner not in ("*", request.name):
                logger.warning(
                    "refused join of '%s' from %s: its token belongs to '%s'",
                    request.name,
                    context.peer(),
                    owner,
                )
                _abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this token does not belong to client '{request.name}'. Join with the "
                    "name the token was issued for, or ask for a token for this name.",
                )
        if not request.name:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a client must join with a name.")
        try:
            metadata = scalars_from_proto(request.metadata)
            session = self._fleet.join(request.name, metadata)
        except ConfigError as exc:
            logger.warning("refused join of '%s': %s", request.name, exc)
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return fleet_pb2.JoinReply(
            session=session.session_id,
            run_id=self._fleet.run_id,
            heartbeat_s=self._fleet.heartbeat_s,
        )

    def Beat(  # noqa: N802
        self, request: fleet_pb2.BeatRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.BeatReply:
        self._fleet.count_received(request.ByteSize())
        return fleet_pb2.BeatReply(known=self._fleet.touch(request.session) is not None)

    def Leave(  # noqa: N802
        self, request: fleet_pb2.BeatRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.BeatReply:
        self._fleet.count_received(request.ByteSize())
        return fleet_pb2.BeatReply(known=self._fleet.leave(request.session))

    def Pull(  # noqa: N802
        self, request: fleet_pb2.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.Frame]:
        self._fleet.count_received(request.ByteSize())
        session = self._fleet.touch(request.session)
        if session is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                "unknown session (the server restarted?): join again.",
            )
        item = None
        if not self._fleet.stopping:
            item = self._fleet.next_task(session, wait_s=min(request.wait_s, MAX_POLL_S))
        if item is None:
            kind = STOP if self._fleet.stopping else NO_TASK
            yield from encode_signal(kind, session=session.session_id)
            return
        task_id, task = item
        for frame in encode_task(
            task_id, task, session=session.session_id, chunk_bytes=self._chunk_bytes
        ):
            yield frame
            self._fleet.touch(session.session_id)  # moving data is a sign of life

    def Push(  # noqa: N802
        self, request_iterator: Iterator[fleet_pb2.Frame], context: grpc.ServicerContext
    ) -> fleet_pb2.PushReply:
        request_iterator = _counted(request_iterator, self._fleet)
        try:
            header, frames = peek_header(request_iterator)
        except FedloomError as exc:
            return self._refuse(context, str(exc))
        session = self._fleet.touch(header.session)
        if session is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, "unknown session: join again.")
        claim = self._fleet.claim(header.task_id, session.session_id)
        if isinstance(claim, str):
            return self._refuse(context, f"dropped a result from '{session.name}': {claim}")
        while not self._fleet.acquire_upload(timeout_s=1.0):
            self._fleet.touch(session.session_id)  # waiting its turn to upload is not silence
        try:
            _, reply = decode_result(
                _touching(frames, self._fleet, session.session_id),
                limits=self._limits,
                expected=claim.expected,
                source=f"client '{session.name}'",
                client_id=session.name,
            )
        except FedloomError as exc:
            self._fleet.release_upload()
            self._fleet.deliver(
                claim, Failure(client_id=session.name, reason=str(exc)), holds_upload=False
            )
            return self._refuse(context, str(exc))
        except BaseException:
            self._fleet.release_upload()
            raise
        if not self._fleet.deliver(claim, reply, holds_upload=True):
            self._fleet.release_upload()
            return self._refuse(context, "the round stopped waiting for this result")
        return fleet_pb2.PushReply(accepted=True)

    def FetchPackage(  # noqa: N802
        self, request: fleet_pb2.PackageRequest, context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.Frame]:
        if self._package is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                "this server hands out no compute package; start the client with its own "
                "code (a config or --app), or the server with --package FILE.",
            )
        logger.info("sending package %s to '%s'", self._package.sha256[:12], request.name)
        yield from encode_package(self._package, chunk_bytes=self._chunk_bytes)

    def _refuse(self, context: grpc.ServicerContext, reason: str) -> fleet_pb2.PushReply:
        logger.warning("refused a result from %s: %s", context.peer(), reason)
        return fleet_pb2.PushReply(accepted=False, reason=reason)


def _counted(frames: Iterator[fleet_pb2.Frame], fleet: Fleet) -> Iterator[fleet_pb2.Frame]:
    """`frames`, each one's size added to the fleet's received bytes as it arrives."""
    for frame in frames:
        fleet.count_received(frame.ByteSize())
        yield frame


def _touching(
    frames: Iterator[fleet_pb2.Frame], fleet: Fleet, session_id: str
) -> Iterator[fleet_pb2.Frame]:
    """`frames`, noting the session alive as each arrives: a long upload is not silence."""
    for frame in frames:
        fleet.touch(session_id)
        yield frame


@dataclass(frozen=True)
class RunningServer:
    """A started gRPC server and the port it listens on."""

    server: grpc.Server
    port: int

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving; calls in progress get `grace_s` to finish."""
        self.server.stop(grace_s).wait(timeout=grace_s + 5)


def _release_large_buffers_to_the_os() -> None:
    """Ask glibc to map every buffer of 1 MiB or more on its own (best effort, Linux only).

    Frames of up to 4 MiB are allocated and freed for every chunk received. By
    default glibc raises its mmap threshold after the first such free and then
    keeps later ones in per-thread heaps, so a server's resident memory grows by
    hundreds of MB beyond the model; with a fixed threshold freed frames go back
    to the OS at once.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        logger.debug("could not set the mmap threshold", exc_info=True)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def start_server(
    fleet: Fleet,
    *,
    address: str = "127.0.0.1:0",
    tls: TlsConfig | None,
    tokens: Tokens | None,
    limits: Limits | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    max_workers: int = 64,
    package: PackageOffer | None = None,
) -> RunningServer:
    """Serve `fleet` on `address` (port 0 picks a free one).

    Args:
        fleet: the sessions and tasks.
        address: host:port to listen on.
        tls: server certificate (and client CA for mutual TLS); None is plain text.
        tokens: accepted tokens; None accepts calls without one.
        limits: payload limits checked before allocating.
        chunk_bytes: size of the data frames sent.
        max_workers: threads serving calls (each waiting client holds one).
        package: the compute package handed to clients that ask for it.
    """
    _release_large_buffers_to_the_os()
    interceptors: list[grpc.ServerInterceptor] = []
    if tokens is not None:
        interceptors.append(AuthInterceptor(tokens, fleet_pb2.DESCRIPTOR.services_by_name["Fleet"]))
    message_bytes = chunk_bytes + (1 << 20)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", message_bytes),
            ("grpc.max_send_message_length", message_bytes),
        ],
    )
    service = FleetService(
        fleet,
        tokens=tokens,
        limits=limits or Limits(),
        chunk_bytes=chunk_bytes,
        package=package,
    )
    fleet_pb2_grpc.add_FleetServicer_to_server(service, server)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(tls))
    if port == 0:
        raise ConfigError(
            f"could not listen on {address}; is the port in use? Pick another or use port 0.",
            field="address",
        )
    server.start()
    logger.info("serving on port %d (%s)", port, "TLS" if tls else "plain text")
    return RunningServer(server=server, port=port)
