"""simulate_tree equals the flat federation of its leaves; gossip reaches the average."""

from __future__ import annotations

import numpy as np
import pytest

import fedloom
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Metrics, Weights, WeightsLike
from fedloom.errors import ConfigError
from fedloom.simulation.topology import mixing_weights, simulate_gossip, simulate_tree
from fedloom.strategies import fedadam, fedavg
from fedloom.topology import Topology

DIM = 5


def regression_client(context: ClientContext) -> FunctionClient:
    """Linear regression on a partition of its own size; minibatch order from config["seed"].

    Partition sizes differ (20, 25, 30, ...), so the weighting by num_examples
    matters, and the shuffle depends on the seed, so a client that got another
    seed (e.g. one derived from its relay's id) would train differently.
    """
    partition = int(context.partition_id)
    data_rng = np.random.default_rng(100 + partition)
    size = 20 + 5 * partition
    features = data_rng.normal(size=(size, DIM))
    target = features @ np.linspace(-1, 1, DIM) + 0.3 * partition

    def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
        w = np.array(weights["w"], dtype=np.float64)
        order = np.random.default_rng(int(config["seed"])).permutation(size)
        for _ in range(int(config.get("local_epochs", 1))):
            for start in range(0, size, 8):
                batch = order[start : start + 8]
                error = features[batch] @ w - target[batch]
                w -= 0.05 * features[batch].T @ error / len(batch)
        loss = float(np.mean((features @ w - target) ** 2))
        return {"w": w.astype(np.float32)}, size, {"loss": loss}

    def evaluate(weights: Weights, config: Config) -> tuple[float, int, Metrics]:
        error = features @ np.asarray(weights["w"], dtype=np.float64) - target
        return float(np.mean(error**2)), size, {"mae": float(np.mean(np.abs(error)))}

    return FunctionClient(weights={"w": np.zeros(DIM, np.float32)}, fit=fit, evaluate=evaluate)


TWO_LEVEL = Topology.tree(
    {"server": ["relay-a", "relay-b"], "relay-a": ["0", "1", "2"], "relay-b": ["3", "4", "5"]},
    roots=["server"],
)


def test_simulate_tree_two_levels_equals_flat_six_clients() -> None:
    """1 server, 2 relays x 3 clients: the same weights and metrics as 6 flat clients."""
    strategy = fedavg(config={"local_epochs": 2})

    flat = fedloom.simulate(regression_client, num_clients=6, rounds=3, strategy=strategy, seed=7)
    tree = simulate_tree(regression_client, topology=TWO_LEVEL, rounds=3, strategy=strategy, seed=7)

    np.testing.assert_allclose(tree.weights["w"], flat.weights["w"], rtol=0, atol=1e-6)
    assert np.abs(flat.weights["w"]).max() > 0.1  # it trained: the comparison is not 0 == 0
    for flat_round, tree_round in zip(flat.history, tree.history, strict=True):
        assert tree_round.metrics["fit.loss"] == pytest.approx(flat_round.metrics["fit.loss"])
        assert tree_round.metrics["evaluate.loss"] == pytest.approx(
            flat_round.metrics["evaluate.loss"]
        )
        assert tree_round.metrics["evaluate.mae"] == pytest.approx(
            flat_round.metrics["evaluate.mae"]
        )


def test_simulate_tree_three_levels_with_fedadam_equals_flat() -> None:
    """Any depth, and any server optimizer at the root: relays forward the exact mean."""
    deep = Topology.tree(
        {
            "server": ["r1", "r2"],
            "r1": ["r11", "0"],
            "r11": ["1", "2"],
            "r2": ["3", "r21"],
            "r21": ["4", "5"],
        },
        roots=["server"],
    )
    strategy = fedadam(server_lr=0.1, fraction_evaluate=0)

    flat = fedloom.simulate(regression_client, num_clients=6, rounds=3, strategy=strategy)
    tree = simulate_tree(regression_client, topology=deep, rounds=3, strategy=strategy)

    assert deep.relays == ("r1", "r2", "r11", "r21")
    np.testing.assert_allclose(tree.weights["w"], flat.weights["w"], rtol=0, atol=1e-6)


def test_simulate_tree_several_servers_sharing_a_model_equal_flat() -> None:
    shared = Topology.tree({"s1": ["0", "1", "2"], "s2": ["3", "4", "5"]}, roots=["s1", "s2"])
    strategy = fedavg(fraction_evaluate=0)

    flat = fedloom.simulate(regression_client, num_clients=6, rounds=3, strategy=strategy)
    tree = simulate_tree(regression_client, topology=shared, rounds=3, strategy=strategy)

    np.testing.assert_allclose(tree.weights["w"], flat.weights["w"], rtol=0, atol=1e-6)


def test_simulate_tree_failed_subtree_fails_only_its_relay() -> None:
    """Every client under relay-b raises: the round goes on with relay-a's clients alone."""

    def client_fn(context: ClientContext) -> FunctionClient:
        if context.client_id in ("3", "4", "5"):
            raise RuntimeError("this site is down")
        return regression_client(context)

    strategy = fedavg(fraction_evaluate=0)
    only_a = Topology.tree({"server": ["relay-a"], "relay-a": ["0", "1", "2"]}, roots=["server"])

    tree = simulate_tree(client_fn, topology=TWO_LEVEL, rounds=2, strategy=strategy)
    alone = simulate_tree(regression_client, topology=only_a, rounds=2, strategy=strategy)

    assert list(tree.history[0].failures) == ["relay-b"]
    assert "needs at least 1 result" in tree.history[0].failures["relay-b"]
    np.testing.assert_allclose(tree.weights["w"], alone.weights["w"], rtol=0, atol=1e-6)


def test_simulate_tree_refuses_gossip_graph() -> None:
    with pytest.raises(ConfigError, match="needs a star or tree topology"):
        simulate_tree(regression_client, topology=Topology.ring(3), rounds=1)


def test_simulate_gossip_ring_of_8_converges_to_average_of_initial_models() -> None:
    def client_fn(context: ClientContext) -> FunctionClient:
        start = np.random.default_rng(context.partition_id).normal(size=(2, 3))
        return FunctionClient(weights={"w": start}, fit=lambda w, config: (w, 1, {}))

    ring = Topology.ring(8)
    initial = [
        client_fn(ClientContext(client_id=n, partition_id=i, num_partitions=8))
        for i, n in enumerate(ring.nodes)
    ]
    average = np.mean([client.get_weights()["w"] for client in initial], axis=0)

    result = simulate_gossip(client_fn, topology=ring, rounds=120, train=False)

    for node in ring.nodes:
        np.testing.assert_allclose(result.weights[node]["w"], average, rtol=0, atol=1e-6)
    assert result.spread[0] > 0.1
    assert result.spread[-1] < 1e-6
    assert all(b <= a + 1e-12 for a, b in zip(result.spread, result.spread[1:], strict=False))


def test_simulate_gossip_with_training_fits_every_node_each_round() -> None:
    """Each node trains towards its own target; the mix pulls all to the targets' mean."""
    seen: list[tuple[str, int]] = []

    def client_fn(context: ClientContext) -> FunctionClient:
        target = float(context.partition_id)

        def fit(weights: Weights, config: Config) -> tuple[WeightsLike, int, Metrics]:
            seen.append((context.client_id, int(config["server_round"])))
            return {"x": weights["x"] + 0.5 * (target - weights["x"])}, 1, {}

        return FunctionClient(weights={"x": [0.0]}, fit=fit)

    result = simulate_gossip(client_fn, topology=Topology.ring(4), rounds=80)

    # a fixed point of "mix after half a step to the target" on a regular graph is the
    # mean of the targets (0 + 1 + 2 + 3) / 4 = 1.5, reached by the nodes' average
    mean = np.mean([result.weights[n]["x"][0] for n in ("n0", "n1", "n2", "n3")])
    assert mean == pytest.approx(1.5, abs=1e-6)
    assert len(seen) == 4 * 80
    assert ("n3", 80) in seen


def test_mixing_weights_are_doubly_stochastic_on_an_irregular_graph() -> None:
    # a star-shaped gossip graph: hub degree 3, spokes degree 1 -> spoke weight 1/(1+3)
    graph = Topology(
        kind="gossip", nodes=("h", "a", "b", "c"), edges=(("h", "a"), ("h", "b"), ("h", "c"))
    )

    weights = mixing_weights(graph)

    matrix = np.array([[weights[i].get(j, 0.0) for j in graph.nodes] for i in graph.nodes])
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    assert weights["a"] == {"a": 0.75, "h": 0.25}
