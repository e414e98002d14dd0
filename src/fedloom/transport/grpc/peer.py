"""Gossip peers over gRPC: a node publishes its model of each round, neighbours fetch it.

`PeerModels` keeps a node's published models (the last `keep` rounds, so a slower
neighbour can still fetch the round it is on). `start_peer_server` serves them
through the ``Peer`` service (``GetModel``), behind the same token interceptor and
TLS as the fleet server; `fetch_model` asks a neighbour for a round, waiting with
backoff while it is not up or has not published that round yet, until a deadline.
Models travel as ``weights`` result streams of `fedloom.transport.grpc.wire`, so
their size is checked against `Limits` before anything is allocated and their
sha256 before they are used.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc

from fedloom.core import VectorSpec, Weights, WeightsRes
from fedloom.errors import ConfigError, ConnectError, DecodeError
from fedloom.proto import fleet_pb2, fleet_pb2_grpc
from fedloom.transport.grpc.client import Backoff
from fedloom.transport.grpc.security import (
    AuthInterceptor,
    TlsConfig,
    Tokens,
    bearer_metadata,
    channel_credentials,
    server_credentials,
)
from fedloom.transport.grpc.service import RunningServer
from fedloom.transport.grpc.wire import (
    CHUNK_BYTES,
    NO_TASK,
    Limits,
    decode_result,
    encode_result,
    encode_signal,
    peek_header,
)

__all__ = ["PeerLink", "PeerModels", "PeerService", "start_peer_server"]

logger = logging.getLogger(__name__)

MAX_WAIT_S = 5.0
"""The longest one ``GetModel`` call waits on the answering peer for its round."""

_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class PeerModels:
    """A node's published models by round, the last `keep` rounds only; thread-safe.

    Args:
        name: the node's name (in task ids and messages).
        keep: how many of the latest rounds stay available to neighbours.
    """

    def __init__(self, name: str, *, keep: int = 2) -> None:
        self.name = name
        self._keep = keep
        self._models: dict[int, Weights] = {}
        self._latest = -1
        self._fetched: dict[int, set[str]] = {}
        self._changed = threading.Condition()

    def publish(self, server_round: int, weights: Weights) -> None:
        """Make `weights` this node's model of `server_round`; drop rounds older than `keep`."""
        with self._changed:
            self._models[server_round] = weights
            self._latest = max(self._latest, server_round)
            for old in [r for r in self._models if r <= self._latest - self._keep]:
                del self._models[old]
            self._changed.notify_all()

    def wait_for(self, server_round: int, timeout_s: float) -> Weights | None:
        """The model of `server_round`, waiting up to `timeout_s`; None if not published yet.

        Raises:
            LookupError: the round is older than the ones this node keeps.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while server_round not in self._models:
                if server_round <= self._latest - self._keep:
                    raise LookupError(
                        f"peer '{self.name}' keeps rounds {self._latest - self._keep + 1}.."
                        f"{self._latest} only; round {server_round} is gone"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._models[server_round]

    def served(self, server_round: int, peer: str) -> None:
        """Note that `peer` fetched `server_round`."""
        with self._changed:
            self._fetched.setdefault(server_round, set()).add(peer)
            self._changed.notify_all()

    def wait_fetched(self, server_round: int, peers: set[str], timeout_s: float) -> set[str]:
        """Wait until every one of `peers` fetched `server_round`; those that did not."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while True:
                missing = peers - self._fetched.get(server_round, set())
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    return missing
                self._changed.wait(left)


class PeerService(fleet_pb2_grpc.PeerServicer):
    """Answers neighbours' ``GetModel`` calls from a `PeerModels`."""

    def __init__(self, models: PeerModels, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._models = models
        self._chunk_bytes = chunk_bytes

    def GetModel(  # noqa: N802 - the RPC's name
        self, request: fleet_pb2.ModelRequest, context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.Frame]:
        wait_s = min(max(request.wait_s, 0.0), MAX_WAIT_S)
        try:
            weights = self._models.wait_for(int(request.round), wait_s)
        except LookupError as exc:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{exc}. The asking peer '{request.name}' is too far behind to be mixed.",
            )
            raise AssertionError("grpc's abort raises") from None  # pragma: no cover
        if weights is None:
            yield from encode_signal(NO_TASK, session="")
            return
        task_id = f"{self._models.name}/{request.round}"
        yield from encode_result(
            task_id, WeightsRes(weights=weights), session="", chunk_bytes=self._chunk_bytes
        )
        self._models.served(int(request.round), request.name)


def start_peer_server(
    models: PeerModels,
    *,
    address: str,
    tls: TlsConfig | None,
    tokens: Tokens | None,
    chunk_bytes: int = CHUNK_BYTES,
    max_workers: int = 16,
) -> RunningServer:
    """Serve `models` on `address` (port 0 picks a free one) through the ``Peer`` service.

    Args:
        models: what this node publishes.
        address: host:port to listen on.
        tls: the node's server certificate (and a client CA for mutual TLS); None: plain text.
        tokens: accepted tokens (checked on every call by `AuthInterceptor`); None: any caller.
        chunk_bytes: size of the data frames sent.
        max_workers: threads serving calls.

    Raises:
        ConfigError: the address cannot be listened on.
    """
    interceptors: list[grpc.ServerInterceptor] = []
    if tokens is not None:
        interceptors.append(AuthInterceptor(tokens, fleet_pb2.DESCRIPTOR.services_by_name["Peer"]))
    message_bytes = chunk_bytes + (1 << 20)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", message_bytes),
            ("grpc.max_send_message_length", message_bytes),
        ],
    )
    fleet_pb2_grpc.add_PeerServicer_to_server(PeerService(models, chunk_bytes=chunk_bytes), server)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(tls))
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(
            f"peer '{models.name}' could not listen on {address}; is the port in use? Pick "
            "another address for it in [topology.addresses], or pass --address HOST:0.",
            field="address",
            value=address,
        )
    server.start()
    logger.info("peer '%s' serving on port %d (%s)", models.name, port, "TLS" if tls else "plain")
    return RunningServer(server=server, port=port)


@dataclass
class PeerLink:
    """This node's connection to one neighbour, to fetch its models round after round.

    Args:
        name: this node's name (told to the neighbour).
        peer: the neighbour's name.
        address: the neighbour's host:port.
        tls: the CA of the neighbour's certificate (and a client certificate); None: plain text.
        token: this node's token (or the shared secret); None sends none.
        backoff: the waits between attempts while the neighbour cannot be reached.
        limits: what a model stream may declare, checked before allocating.
    """

    name: str
    peer: str
    address: str
    tls: TlsConfig | None = None
    token: str | None = None
    backoff: Backoff | None = None
    limits: Limits | None = None

    def __post_init__(self) -> None:
        options = [("grpc.max_receive_message_length", CHUNK_BYTES + (1 << 20))]
        if self.tls is None:
            self._channel = grpc.insecure_channel(self.address, options=options)
        else:
            credentials = channel_credentials(self.tls)
            self._channel = grpc.secure_channel(self.address, credentials, options)
        self._stub = fleet_pb2_grpc.PeerStub(self._channel)
        self._metadata = bearer_metadata(self.token) if self.token else ()
        self._rng = random.Random()
        self.reachable = False
        """Whether the neighbour answered during the last `fetch`."""

    def fetch(
        self,
        server_round: int,
        *,
        expected: VectorSpec | None,
        deadline: float,
        patience: float | None = None,
    ) -> Weights:
        """The neighbour's model of `server_round`, retrying until a deadline (monotonic).

        Args:
            server_round: the round wanted.
            expected: this node's model layout; another one raises `ShapeMismatch`
                (None: any layout).
            deadline: give up by then while the neighbour cannot be reached.
            patience: give up by then while it answers but has not published the round
                (it is alive, maybe waiting on a peer of its own); default `deadline`.

        Raises:
            TimeoutError: no model in time (`reachable` says whether the neighbour answered).
            ConnectError: the neighbour refused this node's token or certificate.
            DecodeError: the neighbour's answer was malformed, damaged or too large.
            ShapeMismatch: the neighbour's model has another layout.
        """
        delays = (self.backoff or Backoff(initial_s=0.2, max_s=2.0)).delays(self._rng)
        last = "no answer"
        self.reachable = False
        while True:
            limit = max(deadline, patience or deadline) if self.reachable else deadline
            left = limit - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"peer '{self.peer}' at {self.address} gave no model of round "
                    f"{server_round} in time ({last})"
                )
            try:
                frames = self._stub.GetModel(
                    fleet_pb2.ModelRequest(
                        name=self.name, round=server_round, wait_s=min(MAX_WAIT_S, left)
                    ),
                    metadata=self._metadata,
                    timeout=max(left, 0.1) + 5.0,
                )
                header, stream = peek_header(frames)
                self.reachable = True
                if header.kind == NO_TASK:
                    last = "it has not published that round yet"
                    continue
                task_id, reply = decode_result(
                    stream,
                    limits=self.limits or Limits(),
                    expected=expected,
                    source=f"peer '{self.peer}'",
                    client_id=self.peer,
                )
            except grpc.RpcError as err:
                code = err.code()
                if code in _FATAL or "handshake failed" in (err.details() or "").lower():
                    raise ConnectError(
                        f"peer '{self.peer}' at {self.address} refused peer '{self.name}': "
                        f"{err.details()}. Check the CA (--certs/--ca) and the token."
                    ) from err
                if code == grpc.StatusCode.NOT_FOUND:
                    self.reachable = True
                    raise TimeoutError(f"peer '{self.peer}': {err.details()}") from err
                last = f"{code.name}: {err.details()}"
                time.sleep(min(next(delays), max(0.0, deadline - time.monotonic())))
                continue
            expected_id = f"{self.peer}/{server_round}"
            if task_id != expected_id or not isinstance(reply, WeightsRes):
                raise DecodeError(
                    f"peer '{self.peer}' answered the request for round {server_round} with "
                    f"{type(reply).__name__} '{task_id}', expected weights '{expected_id}'. "
                    "Check that [topology.addresses] gives each node its own address.",
                    client_id=self.peer,
                )
            weights = reply.weights
            assert isinstance(weights, Weights)  # decode_result returns Weights
            return weights

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()
