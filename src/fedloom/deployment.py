"""Deployment: a server that runs the federation over gRPC, and clients that connect to it.

`serve` runs the same orchestrator as `simulate`, with a `GrpcChannel`
instead of in-process clients; `connect` serves one client's tasks. Both need
the ``grpc`` extra: ``pip install 'fedloom[grpc]'``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from fedloom.core import Client, Scalar, WeightsLike
from fedloom.errors import ConnectError
from fedloom.server import Callback, EvaluateFn, Orchestrator, RunResult
from fedloom.store.recorder import Recording, run_recorded
from fedloom.strategies import Strategy, fedavg
from fedloom.transport.codec import write_atomic
from fedloom.transport.grpc.channel import GrpcChannel
from fedloom.transport.grpc.client import Backoff, ClientRuntime
from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.quotas import Quotas
from fedloom.transport.grpc.security import TlsConfig, Tokens
from fedloom.transport.grpc.service import start_server
from fedloom.transport.grpc.wire import Limits

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from fedloom.package import PackageLimits
    from fedloom.transport.grpc.distribution import PackageOffer

__all__ = ["connect", "connect_package", "fetch_package_offer", "serve"]

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
    recording: Recording | None = None,
    on_connected: Callable[[Callable[[], list[str]]], None] | None = None,
    package: str | Path | None = None,
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
        run_dir: write history.json, weights.safetensors and TensorBoard event files there.
        heartbeat_s: how often clients beat; three missed beats drop a client.
        on_ready: called with the port once the server listens.
        on_connected: called once, before clients join, with a function that returns the
            names of the clients connected at the time it is called (e.g. for a dashboard).
        recording: record every round in a store, or resume the recorded run after
            its last recorded round (clients that were connected reconnect by themselves).
        package: a compute package (``fedloom package build``) handed to clients that
            ask for one (`connect_package`); it is checked before the server starts.
        limits: what the server accepts in one result (default `Limits()`).
        quotas: per-client upload and join quotas (default `Quotas()`).

    Raises:
        ConnectError: fewer than `min_clients` joined within `join_timeout_s`.
        PackageError: `package` is not a valid compute package.
    """
    offer = None
    if package is not None:
        from fedloom.package import check_package
        from fedloom.transport.grpc.distribution import PackageOffer

        offer = PackageOffer.from_file(package)
        check_package(package, sha256=offer.sha256)
        logger.info("handing out package %s (sha256 %s)", offer.filename, offer.sha256)
    fleet = Fleet(max_clients=max_clients, heartbeat_s=heartbeat_s)
    if on_connected is not None:
        on_connected(fleet.names)
    recorder, resume = (
        (None, None) if recording is None else recording.begin(roster=lambda: _roster(fleet))
    )
    running = start_server(
        fleet,
        address=address,
        tls=tls,
        tokens=tokens,
        limits=limits,
        quotas=quotas,
        package=offer,
    )
    channel = GrpcChannel(fleet)
    try:
        if on_ready is not None:
            on_ready(running.port)
        joined = fleet.wait_for(min_clients, timeout_s=join_timeout_s)
        if len(joined) < min_clients:
            if recorder is not None:
                recorder.mark("failed", f"only {len(joined)} of {min_clients} clients joined")
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
            from fedloom.observe.tensorboard import TensorBoardLogger
            from fedloom.store import RunFolder

            all_callbacks.extend([RunFolder(run_dir), TensorBoardLogger(run_dir)])
        if recorder is not None:
            all_callbacks.insert(0, recorder)
        orchestrator = Orchestrator(
            channel,
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
        if recorder is None:
            return orchestrator.run(start.pop())
        return run_recorded(recorder, lambda: orchestrator.run(start.pop(), resume=resume))
    finally:
        channel.close()  # asynchronous tasks still running: their results are dropped as late
        fleet.stop(wait_s=3 * heartbeat_s + 10.0)
        running.stop(grace_s=2.0)


def _roster(fleet: Fleet) -> dict[str, Mapping[str, Scalar]]:
    """The connected clients and their metadata (one that just left is skipped)."""
    sessions = {name: fleet.session_of(name) for name in fleet.names()}
    return {name: session.metadata for name, session in sessions.items() if session is not None}


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
    hooks: Sequence[object] = (),
) -> int:
    """Serve `client`'s tasks for the server at `address` until the run ends.

    `hooks` run at each step of the client's cycle (`fedloom.core.hooks`:
    `ClientHooks`, `StopAtVersion`, or any object with methods named after the steps).

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
        hooks=hooks,
    )
    return runtime.run(stop)


def connect_package(
    *,
    address: str,
    name: str,
    workdir: str | Path,
    token: str | None = None,
    tls: TlsConfig | None = None,
    trusted_keys: Sequence[Ed25519PublicKey] = (),
    sha256: str | None = None,
    data: str = "",
    limits: PackageLimits | None = None,
    train_timeout_s: float = 3600.0,
    validate_timeout_s: float = 600.0,
    metadata: Mapping[str, Scalar] | None = None,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
    hooks: Sequence[object] = (),
) -> int:
    """Fetch the server's compute package, check and unpack it, and serve its tasks.

    The package is trusted only after its checks: the digest the server sent (and
    `sha256`, when pinned), a signature from one of `trusted_keys` when any are
    given, and every member's path, type and size (`check_package`). It is
    unpacked inside `workdir` and its entry points run as subprocesses there.

    Args:
        address: the server's host:port.
        name: this client's name.
        workdir: where the package is stored and unpacked.
        token: the client's token; tls: the CA to trust (and a client certificate).
        trusted_keys: allow-listed signers (`fedloom.package.load_public_keys`).
        sha256: the digest the package must have, when pinned.
        data: what the commands' ``{data}`` placeholder stands for.
        limits: package sizes accepted.
        train_timeout_s: the most a ``train`` run may take; validate_timeout_s likewise.
        metadata: as for `connect`.
        backoff: as for `connect`.
        stop: as for `connect`.
        hooks: as for `connect`.

    Returns:
        How many tasks the client ran.

    Raises:
        PackageError: the package failed a check; nothing of it ran.
        ConnectError: the server refused this client, or offers no package.
    """
    from fedloom.package import PackageClient, PackageLimits, check_package, unpack_package

    limits = limits or PackageLimits()
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    offer = fetch_package_offer(
        address,
        name=name,
        token=token,
        tls=tls,
        max_bytes=limits.max_archive_bytes,
        backoff=backoff,
        stop=stop,
    )
    if offer is None:
        return 0
    archive = folder / f"{offer.sha256}.tar.gz"
    write_atomic(archive, offer.data)
    package = check_package(
        archive,
        sha256=sha256 or offer.sha256,
        signature=offer.signature or None,
        trusted_keys=trusted_keys,
        limits=limits,
    )
    client = PackageClient(
        unpack_package(package, folder / "unpacked"),
        data=data,
        name=name,
        train_timeout_s=train_timeout_s,
        validate_timeout_s=validate_timeout_s,
    )
    logger.info("client '%s' runs package %s", name, package.sha256[:12])
    return connect(
        client,
        address=address,
        name=name,
        token=token,
        tls=tls,
        metadata=metadata,
        backoff=backoff,
        stop=stop,
        hooks=hooks,
    )


def fetch_package_offer(
    address: str,
    *,
    name: str,
    token: str | None,
    tls: TlsConfig | None,
    max_bytes: int,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
) -> PackageOffer | None:
    """Fetch the compute package the server at `address` offers, retrying while it is down.

    Only the stream's own digest is checked here; trusting the package (a pinned
    digest, an allow-listed signature, its members) is `check_package`'s job.

    Args:
        address: the server's (or relay's) host:port.
        name: the caller's name there (its token's owner).
        token: the caller's token; tls: the CA to trust (and a client certificate).
        max_bytes: the largest archive accepted.
        backoff: how long to wait between attempts while the server cannot be reached.
        stop: set it to give up waiting.

    Returns:
        The offer (bytes, sha256, file name, signature), or None when `stop` was set first.

    Raises:
        ConnectError: the server refused the caller, or offers no package.
        DecodeError: the stream is damaged or larger than `max_bytes`.
    """
    from fedloom.transport.grpc.distribution import fetch_package

    stop = stop or threading.Event()
    delays = (backoff or Backoff()).delays(random.Random())
    while True:
        try:
            return fetch_package(address, name=name, token=token, tls=tls, max_bytes=max_bytes)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise ConnectError(
                    f"the server at {address} did not hand '{name}' a package: "
                    f"{err.code().name}: {err.details()}"
                ) from err
            delay = next(delays)
            logger.warning("cannot reach the server at %s; retrying in %.1f s", address, delay)
            if stop.wait(delay):
                return None
