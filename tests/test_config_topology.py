"""[topology] in a TOML config: checked at load time, run by ``fedloom simulate`` through relays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom.cli.main import main
from fedloom.config import load_config
from fedloom.errors import ConfigError
from fedloom.transport.codec import load_weights

MODULE = "topology_toy_task"

# Three clients pull one weight x toward their targets 1, 2 and 3 (one example each). A
# fit moves x halfway to the target, so FedAvg gives x <- x + (2 - x) / 2 and from x = 0,
# x_n = 2 * (1 - 0.5**n): 1.75 after 3 rounds, through relays or not.
TASK = """
from fedloom.client import FunctionClient

TARGETS = (1.0, 2.0, 3.0)


def client_fn(context):
    target = TARGETS[context.partition_id]

    def fit(weights, config):
        return {"x": weights["x"] + 0.5 * (target - weights["x"])}, 1, {}

    return FunctionClient(weights={"x": [0.0]}, fit=fit)
"""

HEAD = f"""
[run]
rounds = 3
name = "tree"

[clients]
app = "{MODULE}:client_fn"
num_clients = 3

[strategy]
name = "fedavg"
fraction_evaluate = 0.0
"""

TREE = """
[topology]
kind = "tree"
roots = ["server"]
nodes = ["server", "relay", "a", "b", "c"]
edges = [["server", "relay"], ["server", "c"], ["relay", "a"], ["relay", "b"]]
"""


def write(folder: Path, topology: str, head: str = HEAD) -> Path:
    (folder / f"{MODULE}.py").write_text(TASK)
    path = folder / "tree.toml"
    path.write_text(head + topology)
    return path


def test_config_topology_loads_as_a_checked_graph(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TREE))

    assert config.topology is not None
    assert config.topology.relays == ("relay",)
    assert config.topology.leaves == ("a", "b", "c")
    assert config.to_dict()["topology"]["roots"] == ["server"]


def test_simulate_runs_a_tree_topology_through_relays(tmp_path: Path) -> None:
    config = write(tmp_path, TREE)

    status = main(["simulate", str(config), "--run-dir", str(tmp_path / "runs"), "--no-progress"])

    assert status == 0
    weights = load_weights(tmp_path / "runs" / "tree" / "weights.safetensors")
    np.testing.assert_allclose(weights["x"], [1.75], atol=1e-6)


@pytest.mark.parametrize(
    ("topology", "message"),
    [
        (
            TREE.replace(
                'edges = [["server", "relay"], ["server", "c"], ["relay", "a"], ["relay", "b"]]',
                'edges = [["server", "a"], ["relay", "c"], ["c", "relay"], ["relay", "b"]]',
            ),
            r"\[topology\] in .*tree.toml: the edges form a cycle (relay -> c -> relay|c -> relay -> c)",
        ),
        (
            TREE.replace('["server", "c"]', '["ghost", "c"]'),
            r"\[topology\] in .*: edges name unknown node\(s\) 'ghost'",
        ),
        (
            TREE.replace('["server", "c"], ', ""),
            r"\[topology\] in .*: node\(s\) 'c' have no path to a root \('server'\)",
        ),
        (
            TREE.replace('"c"]\n', '"c", "d"]\n').replace(
                '["server", "c"]', '["server", "c"], ["server", "d"]'
            ),
            r"\[clients\].num_clients in .*: is 3, but \[topology\] has 4 clients \(its leaves: a, b, c, d\)",
        ),
    ],
    ids=["cycle", "unknown-node", "no-path-to-root", "num-clients"],
)
def test_config_bad_topology_is_refused_at_load_naming_the_nodes(
    tmp_path: Path, topology: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, topology))


def test_simulate_refuses_a_gossip_topology_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gossip = '[topology]\nkind = "gossip"\nnodes = ["a", "b", "c"]\nedges = [["a", "b"], ["b", "c"], ["c", "a"]]\n'
    config = write(tmp_path, gossip)

    status = main(["simulate", str(config), "--run-dir", str(tmp_path / "runs")])

    assert status == 2
    assert "simulate_gossip" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
