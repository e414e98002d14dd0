"""Simulating a `Topology`: trees of relays through the one orchestrator, and gossip.

`simulate_tree` builds each relay as a `Relay` over the channel of its
children and runs the root's `Orchestrator` over the roots' children (or over
the roots themselves when several servers share the model). Clients keep the
names and partitions they have in the topology's node order, so a tree gives
the same clients, data and seeds as the flat federation of its leaves.

`simulate_gossip` has no server: every round each node trains from its own
model (optionally), then replaces it with a weighted mean of its own and its
neighbours' models, with Metropolis-Hastings weights
``w_ij = 1 / (1 + max(deg_i, deg_j))`` for neighbours and ``w_ii = 1 - sum_j w_ij``.
The mixing matrix is symmetric and doubly stochastic, so on a connected graph
the nodes' models converge to the average of the initial models (Xiao and
Boyd 2004, "Fast linear iterations for distributed averaging"). On a regular
graph such as a ring it is the plain average of each node and its neighbours.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedloom.aggregators import WeightedMean
from fedloom.core import (
    Channel,
    ClientId,
    FitIns,
    FitRes,
    Partitioner,
    Reply,
    Task,
    Weights,
    WeightsLike,
    derive_seed,
)
from fedloom.core.dispatch import run_task
from fedloom.errors import ConfigError
from fedloom.server import Callback, EvaluateFn, Orchestrator, RunResult
from fedloom.server.relay import Relay
from fedloom.store.recorder import Recording, run_recorded
from fedloom.strategies import Strategy, fedavg
from fedloom.topology import Topology
from fedloom.transport.inprocess import ClientFn, InProcessChannel

__all__ = ["GossipResult", "mixing_weights", "simulate_gossip", "simulate_tree"]


def simulate_tree(
    client_fn: ClientFn,
    *,
    topology: Topology,
    rounds: int,
    strategy: Strategy | None = None,
    seed: int = 0,
    partitioner: Partitioner | None = None,
    initial_weights: WeightsLike | None = None,
    evaluate_fn: EvaluateFn | None = None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | Path | None = None,
    recording: Recording | None = None,
) -> RunResult:
    """Run the federation of a star or tree `topology` for `rounds` rounds.

    Args:
        client_fn: builds a leaf client from its `ClientContext` (id = node name).
        topology: a ``"star"`` or ``"tree"`` topology.
        rounds: the most rounds to run.
        strategy: the root's strategy (default `fedavg()`); relays run plain FedAvg
            over every client under them.
        seed: the run seed, shared by the root and every relay.
        partitioner: how data is split across the leaves, in node order.
        initial_weights: the starting global weights (default: the first leaf's).
        evaluate_fn: central evaluation at the root.
        callbacks: hooks into the root's round loop.
        run_dir: write the root's history and weights there.
        recording: record every round in a store, or resume the recorded run (as
            for `simulate`).

    Raises:
        ConfigError: `topology` is a gossip graph.

    Example:
        >>> from fedloom.client import FunctionClient
        >>> def client_fn(context):
        ...     target = float(context.partition_id)
        ...     return FunctionClient(
        ...         weights={"x": [0.0]}, fit=lambda w, config: ({"x": [target]}, 1, {})
        ...     )
        >>> tree = Topology.tree({"s": ["r"], "r": ["0", "1"]}, roots=["s"])
        >>> float(simulate_tree(client_fn, topology=tree, rounds=1).weights["x"][0])
        0.5
    """
    if topology.kind == "gossip":
        raise ConfigError(
            "simulate_tree needs a star or tree topology, got a gossip graph. Use "
            "simulate_gossip for peers without a server.",
            field="topology.kind",
            value=topology.kind,
        )
    leaves = topology.leaves
    clients = InProcessChannel(
        client_fn,
        num_clients=len(leaves),
        seed=seed,
        partitioner=partitioner,
        client_ids=leaves,
    )
    relays: dict[str, Relay] = {}
    for node in reversed(topology.nodes):  # children come after parents in a built tree
        _build_relays(node, topology, clients, relays, seed)
    if len(topology.roots) == 1:
        top = _NodeChannel(topology.children(topology.roots[0]), clients, relays)
    else:  # several servers sharing a model: each aggregates, then they average
        top = _NodeChannel(topology.roots, clients, relays)
    all_callbacks = list(callbacks)
    if run_dir is not None:
        from fedloom.observe.tensorboard import TensorBoardLogger
        from fedloom.store import RunFolder

        all_callbacks.extend([RunFolder(run_dir), TensorBoardLogger(run_dir)])
    recorder, resume = None, None
    if recording is not None:
        recorder, resume = recording.begin(client_states=clients)
        all_callbacks.insert(0, recorder)
    orchestrator = Orchestrator(
        top,
        strategy if strategy is not None else fedavg(),
        rounds=rounds,
        seed=seed,
        evaluate_fn=evaluate_fn,
        callbacks=all_callbacks,
    )
    if recorder is None:
        return orchestrator.run(initial_weights)
    return run_recorded(recorder, lambda: orchestrator.run(initial_weights, resume=resume))


def _build_relays(
    node: str,
    topology: Topology,
    clients: InProcessChannel,
    relays: dict[str, Relay],
    seed: int,
) -> Relay | None:
    """The relay of `node` (building its child relays first); None for a leaf."""
    if node in relays:
        return relays[node]
    kids = topology.children(node)
    if not kids:
        return None
    for kid in kids:
        _build_relays(kid, topology, clients, relays, seed)
    relays[node] = Relay(_NodeChannel(kids, clients, relays), seed=seed, name=node)
    return relays[node]


class _NodeChannel:
    """The channel of one tree node to its children: leaf clients and child relays."""

    def __init__(
        self, children: Sequence[str], clients: InProcessChannel, relays: Mapping[str, Relay]
    ) -> None:
        self._children = tuple(children)
        self._clients = clients
        self._relays = relays

    def clients(self) -> Sequence[ClientId]:
        return self._children

    def run(
        self, tasks: Mapping[ClientId, Task], *, timeout_s: float | None
    ) -> Iterator[tuple[ClientId, Reply]]:
        for client_id, task in tasks.items():
            relay = self._relays.get(client_id)
            if relay is None:
                yield from self._clients.run({client_id: task}, timeout_s=timeout_s)
            else:
                reply, _ = run_task(relay, task, {}, client_id=client_id)
                yield client_id, reply


_: type[Channel] = _NodeChannel  # the protocol is structural; this checks it


def mixing_weights(topology: Topology) -> dict[str, dict[str, float]]:
    """Each gossip node's Metropolis-Hastings weights over itself and its neighbours.

    Example:
        >>> {peer: round(w, 4) for peer, w in mixing_weights(Topology.ring(4))["n0"].items()}
        {'n0': 0.3333, 'n1': 0.3333, 'n3': 0.3333}
    """
    degree = {node: len(topology.neighbours(node)) for node in topology.nodes}
    weights: dict[str, dict[str, float]] = {}
    for node in topology.nodes:
        row = {
            peer: 1.0 / (1 + max(degree[node], degree[peer])) for peer in topology.neighbours(node)
        }
        weights[node] = {node: 1.0 - sum(row.values()), **row}
    return weights


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipResult:
    """What a gossip run returns: each node's final model and the spread per round.

    Attributes:
        weights: the model of each node after the last round.
        spread: after each round, the largest distance (L2) of a node's model
            from the nodes' mean model; it goes to 0 as the nodes agree.
    """

    weights: Mapping[str, Weights]
    spread: tuple[float, ...]


def simulate_gossip(
    client_fn: ClientFn,
    *,
    topology: Topology,
    rounds: int,
    seed: int = 0,
    partitioner: Partitioner | None = None,
    train: bool = True,
    config: Mapping[str, bool | int | float | str] | None = None,
) -> GossipResult:
    """Decentralized learning on a gossip `topology`: train locally, average with neighbours.

    Each node starts from its own client's ``get_weights()``. Every round, each
    node fits from its model (if `train`; config ``server_round``, a ``seed``
    derived from the run seed and the node's name, and `config`), then all nodes
    mix at once with `mixing_weights`. A node whose fit fails keeps its model
    for that round's mix.

    Args:
        client_fn: builds a node's client from its `ClientContext` (id = node name).
        topology: a ``"gossip"`` topology (e.g. ``Topology.ring(8)``).
        rounds: how many rounds.
        seed: the run seed.
        partitioner: how data is split across the nodes, in node order.
        train: False only averages (consensus on the initial models).
        config: sent to every node with each fit.

    Raises:
        ConfigError: `topology` is not a gossip graph, or the nodes' models differ in shape.

    Example:
        >>> from fedloom.client import FunctionClient
        >>> def client_fn(context):
        ...     start = {"x": [float(context.partition_id)]}
        ...     return FunctionClient(weights=start, fit=lambda w, config: (w, 1, {}))
        >>> result = simulate_gossip(client_fn, topology=Topology.ring(4), rounds=60, train=False)
        >>> round(float(result.weights["n2"]["x"][0]), 6)  # (0 + 1 + 2 + 3) / 4
        1.5
    """
    if topology.kind != "gossip":
        raise ConfigError(
            f"simulate_gossip needs a gossip topology, got kind {topology.kind!r}. Use "
            "simulate_tree for a star or tree.",
            field="topology.kind",
            value=topology.kind,
        )
    nodes = topology.nodes
    channel = InProcessChannel(
        client_fn, num_clients=len(nodes), seed=seed, partitioner=partitioner, client_ids=nodes
    )
    models = {node: _as_weights(client_fn(channel.context(node)).get_weights()) for node in nodes}
    reference = models[nodes[0]]
    for node in nodes[1:]:
        models[node] = reference.conform(models[node], client_id=node)
    mixing = mixing_weights(topology)
    mean = WeightedMean()
    spread: list[float] = []
    for server_round in range(1, rounds + 1):
        if train:
            models = _train(channel, models, server_round, seed, dict(config or {}))
        mixed: dict[str, Weights] = {}
        for node in nodes:
            row = mixing[node]
            stacked = np.stack([models[peer].flat for peer in row])
            vector = mean.aggregate(stacked, np.fromiter(row.values(), dtype=np.float64))
            mixed[node] = Weights.from_flat(reference.spec, vector)
        models = mixed
        center = np.mean([models[node].flat for node in nodes], axis=0)
        spread.append(max(float(np.linalg.norm(models[n].flat - center)) for n in nodes))
    return GossipResult(weights=models, spread=tuple(spread))


def _train(
    channel: InProcessChannel,
    models: Mapping[str, Weights],
    server_round: int,
    seed: int,
    config: dict[str, bool | int | float | str],
) -> dict[str, Weights]:
    tasks = {
        node: FitIns(
            weights=models[node],
            config={
                **config,
                "server_round": server_round,
                "seed": derive_seed(seed, "client", node, server_round),
            },
        )
        for node in models
    }
    trained = dict(models)
    for node, reply in channel.run(tasks, timeout_s=None):
        if isinstance(reply, FitRes):
            trained[node] = models[node].conform(reply.weights, client_id=node)
    return trained


def _as_weights(value: WeightsLike) -> Weights:
    """Weights from what get_weights() returned; a list of arrays gets names "0", "1", ..."""
    if isinstance(value, Weights):
        return value
    if isinstance(value, Mapping):
        return Weights(value)
    return Weights({str(index): array for index, array in enumerate(value)})
