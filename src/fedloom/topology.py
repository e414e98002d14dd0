"""Federation graphs (OpenFed's topologies): a star, a tree of relays, or gossiping peers.

A `Topology` names its nodes and edges and is checked when it is built, so a
bad graph fails at configuration time with the nodes at fault named:

- ``"star"``: one root (the server) and clients directly under it;
- ``"tree"``: one or more roots, relays inside, clients at the leaves. Edges
  go ``[parent, child]``. Several roots are several servers that share one
  model: every round each aggregates its subtree and they exchange their
  aggregates, so all hold the global FedAvg;
- ``"gossip"``: peers with no server; edges are undirected and the graph must
  be connected. Each round every node averages with its neighbours.

In TOML (the ``[topology]`` section of a config)::

    [topology]
    kind = "tree"
    roots = ["server"]
    nodes = ["server", "relay-a", "relay-b", "0", "1", "2", "3", "4", "5"]
    edges = [["server", "relay-a"], ["server", "relay-b"],
             ["relay-a", "0"], ["relay-a", "1"], ["relay-a", "2"],
             ["relay-b", "3"], ["relay-b", "4"], ["relay-b", "5"]]

This module is pure: names in, names out, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fedloom.errors import ConfigError

__all__ = ["KINDS", "Kind", "Topology"]

Kind = Literal["star", "tree", "gossip"]
KINDS: tuple[Kind, ...] = ("star", "tree", "gossip")
_KEYS = ("kind", "nodes", "edges", "roots")


def _names(items: Sequence[str]) -> str:
    return ", ".join(f"'{item}'" for item in items)


@dataclass(frozen=True, kw_only=True)
class Topology:
    """A checked federation graph.

    Args:
        kind: ``"star"``, ``"tree"`` or ``"gossip"``.
        nodes: every node's name, in order; leaves (clients) get partitions in this order.
        edges: ``(parent, child)`` pairs for a star or tree, neighbour pairs for gossip.
            A star may leave them out: every node but the root is then its child.
        roots: the servers of a star or tree (one for a star); none for gossip.

    Raises:
        ConfigError: an unknown kind or node, a repeated node, a cycle or a node
            with two parents where a tree is needed, a node with no path to a
            root, or a gossip graph in pieces; the message names the nodes.

    Example:
        >>> Topology.ring(4).neighbours("n0")
        ('n1', 'n3')
        >>> Topology(kind="tree", roots=("s",), nodes=("s", "a", "b"), edges=(("s", "a"), ("a", "b"), ("b", "a")))
        Traceback (most recent call last):
        ...
        fedloom.errors.ConfigError: topology: node 'a' has 2 parents ('s', 'b'); a tree gives each node one parent. Remove all but one of the edges [parent, 'a'].
    """  # noqa: E501

    kind: Kind
    nodes: tuple[str, ...]
    edges: tuple[tuple[str, str], ...] = ()
    roots: tuple[str, ...] = ()
    _children: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"topology: kind must be one of {', '.join(KINDS)}, got {self.kind!r}.",
                field="topology.kind",
                value=self.kind,
            )
        self._check_nodes()
        if self.kind == "star" and not self.edges and len(self.roots) == 1:
            star = tuple((self.roots[0], node) for node in self.nodes if node != self.roots[0])
            object.__setattr__(self, "edges", star)
        self._check_edges()
        children: dict[str, list[str]] = {node: [] for node in self.nodes}
        if self.kind == "gossip":
            if self.roots:
                raise ConfigError(
                    f"topology: a gossip graph has no server, got roots {_names(self.roots)}. "
                    'Remove roots, or use kind = "tree".',
                    field="topology.roots",
                    value=list(self.roots),
                )
            for a, b in self.edges:
                for x, y in ((a, b), (b, a)):
                    if y not in children[x]:
                        children[x].append(y)
            self._check_connected(children)
        else:
            for parent, child in self.edges:
                children[parent].append(child)
            self._check_tree(children)
        object.__setattr__(
            self, "_children", {node: tuple(kids) for node, kids in children.items()}
        )

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def star(cls, root: str, clients: Sequence[str]) -> Topology:
        """A server `root` with `clients` directly under it."""
        return cls(kind="star", roots=(root,), nodes=(root, *clients))

    @classmethod
    def tree(cls, children: Mapping[str, Sequence[str]], *, roots: Sequence[str]) -> Topology:
        """A tree from ``{parent: [children, ...]}``; nodes in order of first mention."""
        nodes: dict[str, None] = dict.fromkeys(roots)
        for parent, kids in children.items():
            nodes.setdefault(parent)
            for kid in kids:
                nodes.setdefault(kid)
        edges = tuple((parent, kid) for parent, kids in children.items() for kid in kids)
        return cls(kind="tree", roots=tuple(roots), nodes=tuple(nodes), edges=edges)

    @classmethod
    def ring(cls, num_nodes: int, *, prefix: str = "n") -> Topology:
        """A gossip ring of `num_nodes` peers named ``n0``, ``n1``, ...; each has two neighbours."""
        if num_nodes < 3:
            raise ConfigError(f"a ring needs at least 3 nodes, got {num_nodes}.", field="num_nodes")
        nodes = tuple(f"{prefix}{index}" for index in range(num_nodes))
        edges = tuple((nodes[i], nodes[(i + 1) % num_nodes]) for i in range(num_nodes))
        return cls(kind="gossip", nodes=nodes, edges=edges)

    @classmethod
    def from_table(cls, data: Mapping[str, Any], *, where: str = "[topology]") -> Topology:
        """A topology from a TOML table (keys ``kind``, ``nodes``, ``edges``, ``roots``).

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or a bad graph.
        """
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {_names(unknown)}; the keys are {', '.join(_KEYS)}.",
                field=f"{where}.{unknown[0]}",
            )
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ConfigError(
                f"{where}.kind: required, one of {', '.join(KINDS)}; got {kind!r}.",
                field=f"{where}.kind",
                value=kind,
            )
        nodes = _strings(data.get("nodes"), f"{where}.nodes", '["server", "0", "1"]')
        roots_value = data.get("roots", [])
        roots = _strings(
            [roots_value] if isinstance(roots_value, str) else roots_value,
            f"{where}.roots",
            '["server"]',
        )
        edges_value = data.get("edges", [])
        if not isinstance(edges_value, list) or not all(
            isinstance(edge, list) and len(edge) == 2 and all(isinstance(n, str) for n in edge)
            for edge in edges_value
        ):
            raise ConfigError(
                f"{where}.edges: expected a list of [from, to] pairs of node names, e.g. "
                f'[["server", "0"], ["server", "1"]]; got {edges_value!r}.',
                field=f"{where}.edges",
                value=edges_value,
            )
        edges = tuple((a, b) for a, b in edges_value)
        return cls(kind=kind, nodes=nodes, edges=edges, roots=roots)  # type: ignore[arg-type]

    # -- queries ------------------------------------------------------------------------

    def children(self, node: str) -> tuple[str, ...]:
        """The nodes directly under `node` (star, tree)."""
        return self._children[self._known(node)]

    def neighbours(self, node: str) -> tuple[str, ...]:
        """The peers `node` averages with (gossip), in node order."""
        order = {name: index for index, name in enumerate(self.nodes)}
        return tuple(sorted(self._children[self._known(node)], key=order.__getitem__))

    @property
    def leaves(self) -> tuple[str, ...]:
        """The clients of a star or tree (every node of a gossip graph), in node order."""
        if self.kind == "gossip":
            return self.nodes
        return tuple(node for node in self.nodes if not self._children[node])

    @property
    def relays(self) -> tuple[str, ...]:
        """The nodes of a tree that are neither a root nor a client, in node order."""
        return tuple(
            node
            for node in self.nodes
            if self.kind != "gossip" and node not in self.roots and self._children[node]
        )

    # -- checks -------------------------------------------------------------------------

    def _known(self, node: str) -> str:
        if node not in self._children:
            raise ConfigError(f"topology has no node '{node}'.", field="node", value=node)
        return node

    def _check_nodes(self) -> None:
        if not self.nodes:
            raise ConfigError("topology: nodes is empty; list every node.", field="topology.nodes")
        repeated = sorted({node for node in self.nodes if self.nodes.count(node) > 1})
        if repeated:
            raise ConfigError(
                f"topology: node(s) {_names(repeated)} are listed more than once in nodes.",
                field="topology.nodes",
                value=repeated,
            )
        unknown = [root for root in self.roots if root not in self.nodes]
        if unknown:
            raise ConfigError(
                f"topology: unknown root(s) {_names(unknown)}; roots must be listed in nodes.",
                field="topology.roots",
                value=unknown,
            )

    def _check_edges(self) -> None:
        known = set(self.nodes)
        unknown = sorted({n for edge in self.edges for n in edge if n not in known})
        if unknown:
            raise ConfigError(
                f"topology: edges name unknown node(s) {_names(unknown)}. Add them to nodes "
                "or fix the spelling.",
                field="topology.edges",
                value=unknown,
            )
        loops = sorted({a for a, b in self.edges if a == b})
        if loops:
            raise ConfigError(
                f"topology: node(s) {_names(loops)} have an edge to themselves; remove it.",
                field="topology.edges",
                value=loops,
            )

    def _check_tree(self, children: Mapping[str, list[str]]) -> None:
        if not self.roots:
            raise ConfigError(
                f"topology: a {self.kind} needs its server(s) in roots, e.g. "
                f'roots = ["{self.nodes[0]}"].',
                field="topology.roots",
            )
        if self.kind == "star" and len(self.roots) != 1:
            raise ConfigError(
                f"topology: a star has one root, got {_names(self.roots)}. Use kind = "
                '"tree" for several servers that share a model.',
                field="topology.roots",
                value=list(self.roots),
            )
        parents: dict[str, list[str]] = {}
        for parent, child in self.edges:
            parents.setdefault(child, []).append(parent)
        for node in self.nodes:
            if len(parents.get(node, [])) > 1:
                raise ConfigError(
                    f"topology: node '{node}' has {len(parents[node])} parents "
                    f"({_names(parents[node])}); a tree gives each node one parent. Remove "
                    f"all but one of the edges [parent, '{node}'].",
                    field="topology.edges",
                    value=node,
                )
        if self.kind == "star":
            deep = [c for p, c in self.edges if p != self.roots[0]]
            if deep:
                raise ConfigError(
                    f"topology: a star has every node directly under the root, but "
                    f'{_names(deep)} are not. Use kind = "tree" for relays.',
                    field="topology.edges",
                    value=deep,
                )
        with_parent = [root for root in self.roots if root in parents]
        reached = self._reachable(children, self.roots)
        cycle = self._cycle(children, parents)
        if cycle:
            raise ConfigError(
                f"topology: the edges form a cycle {' -> '.join(cycle)}; a tree has none. "
                "Remove one of its edges.",
                field="topology.edges",
                value=cycle,
            )
        if with_parent:
            raise ConfigError(
                f"topology: root(s) {_names(with_parent)} have a parent; a root is a top server. "
                "Remove the edge into it, or drop it from roots.",
                field="topology.roots",
                value=with_parent,
            )
        orphans = [node for node in self.nodes if node not in reached]
        if orphans:
            raise ConfigError(
                f"topology: node(s) {_names(orphans)} have no path to a root "
                f"({_names(self.roots)}). Add an edge [parent, node] for each.",
                field="topology.edges",
                value=orphans,
            )
        idle = [root for root in self.roots if not children[root]]
        if idle:
            raise ConfigError(
                f"topology: root(s) {_names(idle)} have no clients under them. Add edges "
                "[root, client].",
                field="topology.edges",
                value=idle,
            )

    def _check_connected(self, neighbours: Mapping[str, list[str]]) -> None:
        reached = self._reachable(neighbours, self.nodes[:1])
        apart = [node for node in self.nodes if node not in reached]
        if apart:
            raise ConfigError(
                f"topology: gossip node(s) {_names(apart)} have no path to '{self.nodes[0]}'; "
                "the peers would never agree on one model. Add edges that connect them.",
                field="topology.edges",
                value=apart,
            )

    @staticmethod
    def _reachable(children: Mapping[str, Sequence[str]], starts: Sequence[str]) -> set[str]:
        seen = set(starts)
        stack = list(starts)
        while stack:
            for kid in children[stack.pop()]:
                if kid not in seen:
                    seen.add(kid)
                    stack.append(kid)
        return seen

    def _cycle(
        self, children: Mapping[str, Sequence[str]], parents: Mapping[str, Sequence[str]]
    ) -> list[str]:
        """A cycle of parent edges as ``[a, b, ..., a]``, or [] if there is none."""
        for start in self.nodes:
            path = [start]
            node = start
            while parents.get(node):
                node = parents[node][0]
                if node in path:
                    return [*path[path.index(node) :], node][::-1]
                path.append(node)
        return []


def _strings(value: object, where: str, example: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(
            f"{where}: expected a list of node names, e.g. {example}; got {value!r}.",
            field=where,
            value=value,
        )
    return tuple(value)
