"""Gossip averaging over gRPC: peers with no central server, one process (or machine) each.

`gossip` runs one node of a ``"gossip"`` topology. Every round r it trains its
client from its model (config ``server_round = r`` and the ``seed`` that
`fedloom.simulation.simulate_gossip` gives the node, so a deployment equals the
simulation), publishes the trained model as its round-r model, fetches each
neighbour's round-r model (``Peer.GetModel``) and mixes them with
`fedloom.simulation.mixing_weights`, exactly as the simulation does.

Every wait is bounded. A neighbour that is not up yet is asked again with backoff
until the round's deadline (`join_timeout_s` for round 1, when peers are still
starting, `round_timeout_s` after); one that answers but has not published the round
yet (it is alive, perhaps waiting on a dead peer of its own) gets one deadline more.
A neighbour that gives no model by then is left out of that round's mix: the node's
weights over itself and the neighbours that answered are scaled to sum to 1 again
(``w_j / sum_{k answered or self} w_k``), it logs which peers it left out, and goes
on. A neighbour that could not be reached in the last round is only probed (for at
most a second) in the next ones, so a dead peer costs its neighbours one deadline,
not one per round; it rejoins the mix as soon as it answers. A node keeps its models
of the last two rounds, so a neighbour one round behind can still fetch them, and
after the last round it waits (up to `round_timeout_s`) until the neighbours that
answered it have fetched its last model before it stops. Needs the ``grpc`` extra.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fedloom.aggregators import WeightedMean
from fedloom.core import Client, FitIns, FitRes, Scalar, Weights
from fedloom.core.dispatch import ClientState, run_task
from fedloom.core.rng import derive_seed
from fedloom.errors import ConfigError, ConnectError, FedloomError
from fedloom.simulation.topology import mixing_weights
from fedloom.topology import Topology
from fedloom.transport.grpc.client import Backoff
from fedloom.transport.grpc.peer import PeerLink, PeerModels, start_peer_server
from fedloom.transport.grpc.security import TlsConfig, Tokens
from fedloom.transport.grpc.wire import Limits

__all__ = ["GossipNodeResult", "gossip"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GossipNodeResult:
    """What one gossip node returns.

    Attributes:
        weights: the node's model after the last round.
        left_out: for each round, the neighbours that gave no model in time (in node order).
        rounds: how many rounds ran.
    """

    weights: Weights
    left_out: tuple[tuple[str, ...], ...]
    rounds: int


def gossip(
    client: Client,
    *,
    name: str,
    topology: Topology,
    addresses: Mapping[str, str],
    rounds: int,
    seed: int = 0,
    train: bool = True,
    config: Mapping[str, Scalar] | None = None,
    address: str | None = None,
    tls: TlsConfig | None = None,
    tokens: Tokens | None = None,
    peer_tls: TlsConfig | None = None,
    peer_token: str | None = None,
    join_timeout_s: float = 300.0,
    round_timeout_s: float = 60.0,
    backoff: Backoff | None = None,
    limits: Limits | None = None,
    on_ready: Callable[[int], None] | None = None,
    on_round: Callable[[int, tuple[str, ...]], None] | None = None,
    stop: threading.Event | None = None,
) -> GossipNodeResult:
    """Run node `name` of the gossip `topology` for `rounds` rounds over gRPC.

    Args:
        client: the node's client (the one ``client_fn`` builds for it in simulation).
        name: this node's name in `topology`.
        topology: a ``"gossip"`` topology.
        addresses: host:port of every neighbour of `name` (and of `name` itself, unless
            `address` is given).
        rounds: how many rounds.
        seed: the run seed (the simulation's).
        train: False only averages (consensus on the initial models).
        config: sent to the client with each fit.
        address: where to listen (default ``addresses[name]``; port 0: any free one).
        tls: this node's server certificate; None is plain text.
        tokens: the tokens neighbours must present; None accepts any.
        peer_tls: the CA of the neighbours' certificates (and a client certificate).
        peer_token: this node's token towards its neighbours.
        join_timeout_s: round 1's deadline (the peers are starting).
        round_timeout_s: the deadline of every later round, and of the final wait.
        backoff: the waits between attempts to reach a neighbour.
        limits: what a neighbour's model stream may declare, checked before allocating.
        on_ready: called with the port once the node listens.
        on_round: called after each round's mix with the round and the peers left out.
        stop: set it to stop after the current round (the result has the rounds run).

    Returns:
        The node's final model and who was left out of each round.

    Raises:
        ConfigError: `topology` is not gossip, `name` is not a node, an address is missing,
            or the client's model differs in layout from a neighbour's.
        ConnectError: a neighbour refused this node's token or certificate.

    Example:
        >>> gossip(client, name="n0", topology=Topology.ring(4),  # doctest: +SKIP
        ...        addresses={f"n{i}": f"127.0.0.1:{9000 + i}" for i in range(4)}, rounds=10)
    """
    neighbours = _check(topology, name, addresses, address)
    listen = address if address is not None else addresses[name]
    current = _as_weights(client.get_weights(), name)
    spec = current.spec
    row = mixing_weights(topology)[name]
    mean = WeightedMean()
    models = PeerModels(name, keep=2)
    running = start_peer_server(models, address=listen, tls=tls, tokens=tokens)
    links = {
        peer: PeerLink(
            name=name,
            peer=peer,
            address=addresses[peer],
            tls=peer_tls,
            token=peer_token,
            backoff=backoff,
            limits=limits,
        )
        for peer in neighbours
    }
    pool = ThreadPoolExecutor(max_workers=max(1, len(neighbours)), thread_name_prefix="gossip")
    state: ClientState = {}
    left_out: list[tuple[str, ...]] = []
    answered: set[str] = set()
    down: set[str] = set()  # unreachable last round: probed briefly, not waited for
    down_s = min(1.0, round_timeout_s)
    try:
        if on_ready is not None:
            on_ready(running.port)
        for server_round in range(1, rounds + 1):
            if stop is not None and stop.is_set():
                break
            timeout = join_timeout_s if server_round == 1 else round_timeout_s
            deadline = time.monotonic() + timeout
            if train:
                current, state = _fit(client, current, state, name, server_round, seed, config)
            models.publish(server_round, current)
            fetched = {
                peer: pool.submit(
                    link.fetch,
                    server_round,
                    expected=spec,
                    deadline=min(deadline, time.monotonic() + down_s) if peer in down else deadline,
                    patience=deadline + timeout,
                )
                for peer, link in links.items()
            }
            received: dict[str, Weights] = {name: current}
            for peer, future in fetched.items():
                try:
                    received[peer] = future.result()
                except ConnectError:
                    raise
                except (TimeoutError, FedloomError) as exc:
                    logger.warning(
                        "round %d: left out peer '%s' of node '%s': %s",
                        server_round,
                        peer,
                        name,
                        exc,
                    )
            missing = tuple(peer for peer in neighbours if peer not in received)
            down = {peer for peer in missing if not links[peer].reachable}
            answered = set(received) - {name}
            # Row order as in simulate_gossip; WeightedMean divides by the weights' sum, so
            # leaving a neighbour out renormalizes over the ones that answered.
            kept = [peer for peer in row if peer in received]
            stacked = np.stack([received[peer].flat for peer in kept])
            vector = mean.aggregate(stacked, np.fromiter((row[p] for p in kept), dtype=np.float64))
            current = Weights.from_flat(spec, vector)
            left_out.append(missing)
            if on_round is not None:
                on_round(server_round, missing)
        last = len(left_out)
        if last and answered:
            late = models.wait_fetched(last, answered, round_timeout_s)
            if late:
                logger.warning(
                    "node '%s' stops although %s did not fetch its round-%d model",
                    name,
                    ", ".join(sorted(late)),
                    last,
                )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for link in links.values():
            link.close()
        running.stop(grace_s=1.0)
    return GossipNodeResult(weights=current, left_out=tuple(left_out), rounds=len(left_out))


def _check(
    topology: Topology, name: str, addresses: Mapping[str, str], address: str | None
) -> tuple[str, ...]:
    """The node's neighbours, after checking the topology, the name and the addresses."""
    if topology.kind != "gossip":
        raise ConfigError(
            f"gossip needs a gossip topology, got kind {topology.kind!r}. For a star or a "
            "tree, run `fedloom server`, `fedloom relay` and `fedloom client`.",
            field="topology.kind",
            value=topology.kind,
        )
    if name not in topology.nodes:
        raise ConfigError(
            f"node {name!r} is not in the topology; its nodes are {', '.join(topology.nodes)}. "
            "Pass one of them as the name.",
            field="name",
            value=name,
        )
    neighbours = topology.neighbours(name)
    needed = [*neighbours, *(() if address is not None else (name,))]
    missing = [node for node in needed if node not in addresses]
    if missing:
        raise ConfigError(
            f"node '{name}' needs the address of {', '.join(missing)} (its neighbours and "
            "itself); add them under [topology.addresses], e.g. "
            f'{missing[0]} = "127.0.0.1:9000".',
            field="topology.addresses",
            value=missing[0],
        )
    return neighbours


def _fit(
    client: Client,
    weights: Weights,
    state: ClientState,
    name: str,
    server_round: int,
    seed: int,
    config: Mapping[str, Scalar] | None,
) -> tuple[Weights, ClientState]:
    """One local fit with the simulation's config and seed; a failure keeps `weights`."""
    task = FitIns(
        weights=weights,
        config={
            **dict(config or {}),
            "server_round": server_round,
            "seed": derive_seed(seed, "client", name, server_round),
        },
    )
    reply, state = run_task(client, task, state, client_id=name)
    if isinstance(reply, FitRes):
        return weights.conform(reply.weights, client_id=name), state
    logger.warning(
        "round %d: node '%s' failed to train, mixing its model as it is: %s",
        server_round,
        name,
        getattr(reply, "reason", reply),
    )
    return weights, state


def _as_weights(value: object, name: str) -> Weights:
    """Weights from what get_weights() returned; a list of arrays gets names "0", "1", ..."""
    if isinstance(value, Weights):
        return value
    if isinstance(value, Mapping):
        return Weights(value)
    if isinstance(value, list | tuple):
        return Weights({str(index): array for index, array in enumerate(value)})
    raise ConfigError(
        f"node '{name}': get_weights() returned {type(value).__name__}; expected Weights, a "
        "name -> array mapping or a list of arrays.",
        field="get_weights",
    )
