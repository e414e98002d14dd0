"""Deployment: a server that runs the federation over gRPC, and clients that connect to it.

`serve` runs the same orchestrator as `simulate`, with a `GrpcChannel`
instead of in-process clients; `connect` serves one client's tasks. Both need
the ``grpc`` extra: ``pip install 'fedloom[grpc]'``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fedloom.core import Client, Scalar, WeightsLike
from fedloom.errors import ConnectError
from fedloom.server import Callback, EvaluateFn, Orchestrator, RunResult
from fedloom.strategies import Strategy, fedavg
from fedloom.transport.grpc.channel import GrpcChannel
from fedloom.transport.grpc.client import Backoff, ClientRuntime
from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.quotas import Quotas
from fedloom.transport.grpc.security import TlsConfig, Tokens
from fedloom.transport.grpc.service import start_server
from fedloom.transport.grpc.wire import Limits

__all__ = ["connect", "serve"]

logger = logging.getLogger(__name__)


def serve(
    *,
    rounds: int,
    strategy: Strategy | None = None,
    address: str = "0.0.0.0:8080",
    min_clients: int = 1,
    max_clients: int | None = None,
    join_timeout_s: float = 300.0,
    fit_timeout_s: float | None = 600.0,
    tls: TlsConfig | None = None,
    tokens: Tokens | None = None,
    seed: int = 0,
    initial_weights: WeightsLike | None = None,
    evaluate_fn: EvaluateFn | None = None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | Path | None = None,
    heartbeat_s: float = 2.0,
    on_ready: Callable[[int], None] | None = None,
    limits: Limits | None = None,
    quotas: Quotas | None = None,
) -> RunResult:
    """Listen on `address`, wait for `min_clients`, and run `rounds` rounds over gRPC.

    Args:
        rounds: the most rounds to run.
        strategy: defaults to `fedavg()`.
        address: host:port to listen on (port 0 picks a free one; see `on_ready`).
        min_clients: wait for this many clients before round 1.
        max_clients: admit at most this many clients at once.
        join_timeout_s: how long to wait for `min_clients`.
        fit_timeout_s: each round's deadline; late results are dropped.
        tls: the server's certificate (and client CA for mutual TLS); None is plain text.
        tokens: per-client tokens or a shared secret; None accepts any caller.
        seed: the run seed.
        initial_weights: the starting global weights (default: the first client's).
        evaluate_fn: central evaluation ``fn(weights, server_round) -> metrics``.
        callbacks: hooks into the round loop.
        run_dir: write history.json and weights.safetensors there.
        heartbeat_s: how often clients beat; three missed beats drop a client.
        on_ready: called with the port once the server listens.
        limits: what the server accepts in one result (default `Limits()`).
        quotas: per-client upload and join quotas (default `Quotas()`).

    Raises:
        ConnectError: fewer than `min_clients` joined within `join_timeout_s`.
    """
    fleet = Fleet(max_clients=max_clients, heartbeat_s=heartbeat_s)
    running = start_server(
        fleet, address=address, tls=tls, tokens=tokens, limits=limits, quotas=quotas
    )
    try:
        if on_ready is not None:
            on_ready(running.port)
        joined = fleet.wait_for(min_clients, timeout_s=join_timeout_s)
        if len(joined) < min_clients:
            raise ConnectError(
                f"only {len(joined)} of the {min_clients} clients needed joined within "
                f"{join_timeout_s:g} s (port {running.port}). Start more clients, check their "
                "address and token, or lower min_clients."
            )
        strategy = strategy if strategy is not None else fedavg()
        all_callbacks: list[Callback] = [
            _AwaitClients(fleet, count=strategy.min_fit, timeout_s=join_timeout_s),
            *callbacks,
        ]
        if run_dir is not None:
            from fedloom.store import RunFolder

            all_callbacks.append(RunFolder(run_dir))
        orchestrator = Orchestrator(
            GrpcChannel(fleet),
            strategy,
            rounds=rounds,
            seed=seed,
            evaluate_fn=evaluate_fn,
            callbacks=all_callbacks,
            fit_timeout_s=fit_timeout_s,
        )
        # hand the weights over without keeping a reference here for the whole run
        start = [initial_weights]
        del initial_weights
        return orchestrator.run(start.pop())
    finally:
        fleet.stop(wait_s=3 * heartbeat_s + 10.0)
        running.stop(grace_s=2.0)


class _AwaitClients(Callback):
    """Before each round, wait (bounded) until at least `count` clients are connected.

    Clients dropped for missed heartbeats usually rejoin within seconds; a round
    that starts before they do would fail for want of results.
    """

    def __init__(self, fleet: Fleet, *, count: int, timeout_s: float) -> None:
        self._fleet = fleet
        self._count = count
        self._timeout_s = timeout_s

    def on_round_start(self, server_round: int) -> None:
        joined = self._fleet.wait_for(self._count, timeout_s=self._timeout_s)
        if len(joined) < self._count:
            logger.warning(
                "round %d starts with %d clients; min_fit is %d",
                server_round,
                len(joined),
                self._count,
            )


def connect(
    client: Client,
    *,
    address: str,
    name: str,
    token: str | None = None,
    tls: TlsConfig | None = None,
    metadata: Mapping[str, Scalar] | None = None,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve `client`'s tasks for the server at `address` until the run ends.

    Returns:
        How many tasks the client ran.

    Raises:
        ConnectError: the server refused the token or certificate.
    """
    runtime = ClientRuntime(
        client,
        address=address,
        name=name,
        token=token,
        tls=tls,
        metadata=metadata,
        backoff=backoff,
    )
    return runtime.run(stop)
