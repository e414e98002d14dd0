"""Gossip peers over gRPC in one process: tokens cover GetModel, limits are checked before
allocating, two rounds are kept, and a neighbour that never comes up is left out of the mix
with the other weights renormalized."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from fedloom.client import FunctionClient
from fedloom.core import Weights
from fedloom.errors import ConnectError, DecodeError
from fedloom.gossiping import GossipNodeResult, gossip
from fedloom.topology import Topology
from fedloom.transport.grpc.client import Backoff
from fedloom.transport.grpc.peer import PeerLink, PeerModels, start_peer_server
from fedloom.transport.grpc.security import Tokens
from fedloom.transport.grpc.wire import Limits

TOKEN = "peer-token-0123456789abcdef"
MODEL = Weights({"w": np.arange(4, dtype=np.float32)})


@pytest.fixture
def served() -> Iterator[tuple[PeerModels, str]]:
    models = PeerModels("n1", keep=2)
    running = start_peer_server(
        models, address="127.0.0.1:0", tls=None, tokens=Tokens(shared_secret=TOKEN)
    )
    yield models, f"127.0.0.1:{running.port}"
    running.stop(grace_s=0.5)


def test_a_neighbour_with_the_token_fetches_a_round_and_one_without_is_refused(
    served: tuple[PeerModels, str],
) -> None:
    models, address = served
    models.publish(1, MODEL)

    link = PeerLink(name="n0", peer="n1", address=address, token=TOKEN)
    got = link.fetch(1, expected=MODEL.spec, deadline=time.monotonic() + 10)
    np.testing.assert_array_equal(got["w"], MODEL["w"])
    stranger = PeerLink(name="n0", peer="n1", address=address)
    with pytest.raises(ConnectError, match="missing token"):
        stranger.fetch(1, expected=MODEL.spec, deadline=time.monotonic() + 10)
    link.close()
    stranger.close()


def test_a_model_over_the_limits_is_refused_before_it_is_read(
    served: tuple[PeerModels, str],
) -> None:
    models, address = served
    models.publish(1, MODEL)
    link = PeerLink(
        name="n0", peer="n1", address=address, token=TOKEN, limits=Limits(max_message_bytes=8)
    )

    with pytest.raises(DecodeError, match="max_message_bytes=8"):
        link.fetch(1, expected=None, deadline=time.monotonic() + 10)
    link.close()


def test_a_round_not_yet_published_is_waited_for_until_the_deadline(
    served: tuple[PeerModels, str],
) -> None:
    models, address = served
    link = PeerLink(name="n0", peer="n1", address=address, token=TOKEN)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not published that round yet"):
        link.fetch(2, expected=MODEL.spec, deadline=started + 0.5)
    assert link.reachable
    assert time.monotonic() - started < 5
    threading.Timer(0.3, models.publish, args=(2, MODEL)).start()
    got = link.fetch(2, expected=MODEL.spec, deadline=time.monotonic() + 10)
    np.testing.assert_array_equal(got["w"], MODEL["w"])
    link.close()


def test_a_peer_keeps_its_last_two_rounds_only() -> None:
    models = PeerModels("n1", keep=2)
    for server_round in (1, 2, 3):
        models.publish(server_round, MODEL)

    assert models.wait_for(2, 0.0) is MODEL
    assert models.wait_for(3, 0.0) is MODEL
    assert models.wait_for(4, 0.0) is None
    with pytest.raises(LookupError, match="round 1 is gone"):
        models.wait_for(1, 0.0)


def free_ports(count: int) -> list[int]:
    """Ports the OS hands out now (held together so they differ, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_a_neighbour_that_never_comes_up_is_left_out_and_the_weights_renormalized() -> None:
    """Ring n0-n1-n2-n3 without n3: n0 mixes (1/3 w0 + 1/3 w1) / (2/3) = (w0 + w1) / 2."""
    ring = Topology.ring(4)
    addresses = {
        node: f"127.0.0.1:{port}" for node, port in zip(ring.nodes, free_ports(4), strict=True)
    }  # nobody listens on n3's
    results: dict[str, GossipNodeResult] = {}

    def run(node: str, index: int) -> None:
        client = FunctionClient(
            weights={"w": np.full(2, float(index), dtype=np.float32)},
            fit=lambda w, config: (w, 1, {}),
        )
        results[node] = gossip(
            client,
            name=node,
            topology=ring,
            addresses=addresses,
            rounds=1,
            train=False,
            join_timeout_s=4.0,
            round_timeout_s=1.5,
            backoff=Backoff(initial_s=0.05, max_s=0.2),
        )

    threads = [
        threading.Thread(target=run, args=(node, i)) for i, node in enumerate(ring.nodes[:3])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)

    assert results["n0"].left_out == (("n3",),)
    np.testing.assert_allclose(results["n0"].weights["w"], [0.5, 0.5], atol=1e-7)
    assert results["n1"].left_out == ((),)
    np.testing.assert_allclose(results["n1"].weights["w"], [1.0, 1.0], atol=1e-7)  # (0+1+2)/3
    assert results["n2"].left_out == (("n3",),)
    np.testing.assert_allclose(results["n2"].weights["w"], [1.5, 1.5], atol=1e-7)
