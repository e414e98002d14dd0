"""SecAgg+'s sparse communication graph: a random Harary graph (Bell et al. 2020).

Clients are placed on a ring in a random order; each is joined to the ``k / 2``
nearest on either side, so every client has ``k`` neighbours and the graph is
``k``-connected. With ``k >= n - 1`` it is the complete graph (SecAgg, Bonawitz
et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.core import ClientId

__all__ = ["harary_neighbours"]


def harary_neighbours(
    clients: Sequence[ClientId], *, num_neighbours: int, rng: np.random.Generator
) -> tuple[dict[ClientId, int], dict[ClientId, frozenset[ClientId]]]:
    """Each client's index (1..n, its Shamir x-coordinate) and its neighbours.

    Args:
        clients: the round's participants.
        num_neighbours: ``k``; even, or ``n - 1`` for the complete graph.
        rng: shuffles the ring.

    Example:
        >>> index, graph = harary_neighbours(list("abcde"), num_neighbours=2,
        ...                                  rng=np.random.default_rng(0))
        >>> sorted(len(peers) for peers in graph.values())
        [2, 2, 2, 2, 2]
    """
    n = len(clients)
    order = [clients[i] for i in rng.permutation(n)]
    index = {client: position + 1 for position, client in enumerate(order)}
    if num_neighbours >= n - 1:
        everyone = frozenset(clients)
        return index, {client: everyone - {client} for client in clients}
    half = num_neighbours // 2
    graph = {
        client: frozenset(
            order[(position + offset) % n] for offset in range(-half, half + 1) if offset != 0
        )
        for position, client in enumerate(order)
    }
    return index, graph
