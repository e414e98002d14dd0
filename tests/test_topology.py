"""Topology: graphs are checked when built; bad ones name the nodes at fault."""

from __future__ import annotations

import pytest

from fedloom.errors import ConfigError
from fedloom.topology import Topology


def test_topology_tree_knows_roots_relays_and_leaves() -> None:
    tree = Topology.tree({"s": ["r", "c9"], "r": ["c0", "c1"]}, roots=["s"])

    assert tree.relays == ("r",)
    assert tree.leaves == ("c9", "c0", "c1")
    assert tree.children("s") == ("r", "c9")


def test_topology_star_without_edges_puts_every_node_under_the_root() -> None:
    star = Topology(kind="star", roots=("server",), nodes=("server", "a", "b"))

    assert star.children("server") == ("a", "b")
    assert star.leaves == ("a", "b")
    assert star.relays == ()


def test_topology_ring_gives_each_node_two_neighbours() -> None:
    ring = Topology.ring(8)

    assert ring.neighbours("n0") == ("n1", "n7")
    assert all(len(ring.neighbours(node)) == 2 for node in ring.nodes)


def test_topology_cycle_where_a_tree_is_needed_names_the_cycle() -> None:
    edges = (("s", "c"), ("a", "b"), ("b", "a"))

    with pytest.raises(ConfigError, match=r"cycle a -> b -> a") as info:
        Topology(kind="tree", roots=("s",), nodes=("s", "c", "a", "b"), edges=edges)

    assert info.value.value == ["a", "b", "a"]


def test_topology_node_with_two_parents_is_refused() -> None:
    edges = (("s", "r1"), ("s", "r2"), ("r1", "c"), ("r2", "c"))

    with pytest.raises(ConfigError, match=r"node 'c' has 2 parents \('r1', 'r2'\)"):
        Topology(kind="tree", roots=("s",), nodes=("s", "r1", "r2", "c"), edges=edges)


def test_topology_node_without_path_to_root_is_named() -> None:
    with pytest.raises(ConfigError, match=r"node\(s\) 'lost', 'c2' have no path to a root \('s'\)"):
        Topology(
            kind="tree",
            roots=("s",),
            nodes=("s", "c1", "lost", "c2"),
            edges=(("s", "c1"), ("lost", "c2")),
        )


def test_topology_unknown_node_in_edges_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown node\(s\) 'ghost'.*Add them to nodes"):
        Topology(kind="tree", roots=("s",), nodes=("s", "c"), edges=(("s", "c"), ("s", "ghost")))


def test_topology_unknown_root_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown root\(s\) 'srv'"):
        Topology(kind="star", roots=("srv",), nodes=("s", "c"))


def test_topology_root_with_a_parent_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"root\(s\) 's2' have a parent"):
        Topology.tree({"s1": ["s2", "c1"], "s2": ["c2"]}, roots=["s1", "s2"])


def test_topology_star_with_relays_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"a star has every node directly under the root"):
        Topology(kind="star", roots=("s",), nodes=("s", "r", "c"), edges=(("s", "r"), ("r", "c")))


def test_topology_gossip_in_pieces_names_the_cut_off_nodes() -> None:
    with pytest.raises(ConfigError, match=r"gossip node\(s\) 'c', 'd' have no path to 'a'"):
        Topology(kind="gossip", nodes=("a", "b", "c", "d"), edges=(("a", "b"), ("c", "d")))


def test_topology_from_table_reads_toml_shape() -> None:
    table = {
        "kind": "tree",
        "roots": "server",
        "nodes": ["server", "relay", "0", "1"],
        "edges": [["server", "relay"], ["relay", "0"], ["relay", "1"]],
    }

    tree = Topology.from_table(table)

    assert tree.roots == ("server",)
    assert tree.relays == ("relay",)
    assert tree.leaves == ("0", "1")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "mesh", "nodes": ["a"]}, r"kind must be one of star, tree, gossip, got 'mesh'"),
        ({"kind": "tree", "nodes": "a,b"}, r"\[topology\].nodes: expected a list of node names"),
        ({"kind": "tree", "nodes": ["a"], "edges": [["a"]]}, r"list of \[from, to\] pairs"),
        ({"kind": "tree", "nodes": ["a"], "root": "a"}, r"unknown key\(s\) 'root'"),
        ({"kind": "tree", "nodes": ["a", "b", "a"]}, r"'a' are listed more than once"),
    ],
)
def test_topology_from_table_bad_values_raise_config_error(
    table: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Topology.from_table(table)
