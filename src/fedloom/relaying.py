"""Relays over gRPC: a server to their own clients and a client to an upstream server.

`relay` listens for clients like `fedloom.serve`, waits for `min_clients`, then
joins the upstream server as one client whose fit runs a round of its own
federation (`fedloom.server.relay.Relay`) and sends back the mean of its
clients' weights with their total number of examples. When the upstream
server ends the run, the relay ends its own clients' run. Trees of any depth
are relays whose upstream is another relay. With ``forward_package`` the relay
first fetches the upstream server's compute package and hands it, signature
included, to its own clients (``fedloom client --package-dir``), who check it
as they would check the server's. Needs the ``grpc`` extra.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fedloom.deployment import fetch_package_offer
from fedloom.errors import ConnectError
from fedloom.server.relay import Relay
from fedloom.strategies.samplers import Sampler
from fedloom.transport.grpc.channel import GrpcChannel
from fedloom.transport.grpc.client import Backoff, ClientRuntime
from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.security import TlsConfig, Tokens
from fedloom.transport.grpc.service import start_server

__all__ = ["relay"]

logger = logging.getLogger(__name__)


def relay(
    *,
    upstream: str,
    name: str,
    address: str = "0.0.0.0:8081",
    seed: int = 0,
    min_clients: int = 1,
    max_clients: int | None = None,
    join_timeout_s: float = 300.0,
    fit_timeout_s: float | None = None,
    sampler: Sampler | None = None,
    min_fit: int = 1,
    tls: TlsConfig | None = None,
    tokens: Tokens | None = None,
    upstream_tls: TlsConfig | None = None,
    upstream_token: str | None = None,
    heartbeat_s: float = 2.0,
    backoff: Backoff | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    forward_package: bool = False,
) -> int:
    """Serve clients on `address` and relay their rounds to the server at `upstream`.

    Args:
        upstream: the upstream server's (or relay's) host:port.
        name: the relay's client name upstream (its token's owner there).
        address: host:port to listen on for the relay's clients (port 0: any free one).
        seed: the run seed: the upstream server's, so clients get their flat-run seeds.
        min_clients: wait for this many clients before joining upstream.
        max_clients: admit at most this many clients at once.
        join_timeout_s: how long to wait for `min_clients`.
        fit_timeout_s: the deadline of a downstream round (keep it below upstream's).
        sampler: who trains in the relay's subtree (default: all its clients).
        min_fit: the fewest downstream results a round needs; fewer fails this relay's task.
        tls: the relay's server certificate for its clients; None is plain text.
        tokens: the tokens the relay's clients must present; None accepts any.
        upstream_tls: the CA of the upstream server (and a client certificate).
        upstream_token: the relay's token upstream.
        heartbeat_s: how often the relay's clients beat.
        backoff: how long to wait between attempts to reach the upstream server.
        on_ready: called with the port once the relay listens.
        stop: set it to leave the upstream server and stop.
        forward_package: before listening, fetch the upstream server's compute package
            (retrying while upstream cannot be reached) and hand it to this relay's
            clients unchanged; its clients make the trust checks.

    Returns:
        How many upstream tasks the relay ran.

    Raises:
        ConnectError: fewer than `min_clients` joined in time, upstream refused the relay,
            or upstream offers no package to forward.
        DecodeError: the forwarded package's stream was damaged or too large.
    """
    offer = None
    if forward_package:
        from fedloom.package import PackageLimits

        offer = fetch_package_offer(
            upstream,
            name=name,
            token=upstream_token,
            tls=upstream_tls,
            max_bytes=PackageLimits().max_archive_bytes,
            backoff=backoff,
            stop=stop,
        )
        if offer is None:  # stopped while upstream could not be reached
            return 0
        logger.info("relay '%s' forwards package %s", name, offer.sha256[:12])
    fleet = Fleet(max_clients=max_clients, heartbeat_s=heartbeat_s)
    running = start_server(fleet, address=address, tls=tls, tokens=tokens, package=offer)
    try:
        if on_ready is not None:
            on_ready(running.port)
        joined = fleet.wait_for(min_clients, timeout_s=join_timeout_s)
        if len(joined) < min_clients:
            raise ConnectError(
                f"relay '{name}': only {len(joined)} of the {min_clients} clients needed joined "
                f"within {join_timeout_s:g} s (port {running.port}). Start more clients, check "
                "their address and token, or lower min_clients."
            )
        subtree = Relay(
            GrpcChannel(fleet),
            seed=seed,
            sampler=sampler,
            min_fit=min_fit,
            fit_timeout_s=fit_timeout_s,
            name=name,
        )
        runtime = ClientRuntime(
            subtree,
            address=upstream,
            name=name,
            token=upstream_token,
            tls=upstream_tls,
            metadata={"role": "relay", "clients": len(joined)},
            backoff=backoff,
        )
        logger.info("relay '%s' with %d clients joins %s", name, len(joined), upstream)
        return runtime.run(stop)
    finally:
        fleet.stop(wait_s=3 * heartbeat_s + 10.0)
        running.stop(grace_s=2.0)
