"""The server's registry of clients and of tasks in flight, without a network."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from fedloom.core import Failure, FitIns, FitRes, GetWeightsIns, Weights
from fedloom.errors import ConfigError, ReplayedMessage
from fedloom.transport.grpc.channel import GrpcChannel
from fedloom.transport.grpc.fleet import Fleet, Replies


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _weights() -> Weights:
    return Weights({"w": np.zeros(2)})


def test_fleet_join_under_the_same_name_takes_the_old_place_and_fails_its_task() -> None:
    fleet = Fleet()
    first = fleet.join("a", {})
    replies: Replies = queue.Queue()
    fleet.send("a", GetWeightsIns(), expected=None, replies=replies)

    second = fleet.join("a", {"restarted": True})

    assert fleet.names() == ["a"]
    assert fleet.touch(first.session_id) is None
    assert fleet.touch(second.session_id) is second
    name, reply, _ = replies.get_nowait()
    assert name == "a"
    assert isinstance(reply, Failure)
    assert "joined again (restarted)" in reply.reason


def test_fleet_refuses_a_new_client_beyond_max_clients_but_admits_a_known_name() -> None:
    fleet = Fleet(max_clients=1)
    fleet.join("a", {})

    with pytest.raises(ConfigError, match="admits at most 1 clients and is full; 'b' was refused"):
        fleet.join("b", {})
    fleet.join("a", {})

    assert fleet.names() == ["a"]


def test_fleet_drops_a_client_after_three_missed_heartbeats() -> None:
    clock = Clock()
    fleet = Fleet(heartbeat_s=1.0, clock=clock)
    quiet = fleet.join("quiet", {})
    lively = fleet.join("lively", {})
    replies: Replies = queue.Queue()
    fleet.send("quiet", GetWeightsIns(), expected=None, replies=replies)

    clock.now = 2.5
    fleet.touch(lively.session_id)
    clock.now = 3.5  # quiet last seen at 0: 3.5 s > 3 heartbeats; lively at 2.5

    assert fleet.names() == ["lively"]
    assert fleet.touch(quiet.session_id) is None
    _, reply, _ = replies.get_nowait()
    assert isinstance(reply, Failure)
    assert "stopped beating" in reply.reason


def test_fleet_result_for_another_clients_task_is_refused() -> None:
    fleet = Fleet()
    a = fleet.join("a", {})
    b = fleet.join("b", {})
    replies: Replies = queue.Queue()
    pending = fleet.send("a", GetWeightsIns(), expected=None, replies=replies)
    assert pending is not None

    with pytest.raises(ReplayedMessage, match="which was sent to another client") as caught:
        fleet.claim(pending.task_id, b.session_id)

    assert caught.value.client_id == "b"
    assert fleet.claim(pending.task_id, a.session_id) is pending


def test_fleet_late_result_is_refused_after_the_deadline_expired_its_task() -> None:
    fleet = Fleet()
    a = fleet.join("a", {})
    replies: Replies = queue.Queue()
    pending = fleet.send("a", GetWeightsIns(), expected=None, replies=replies)
    assert pending is not None

    fleet.expire(pending, "missed the deadline")

    assert "late: it failed or expired" in str(fleet.claim(pending.task_id, a.session_id))
    assert not fleet.deliver(pending, Failure(client_id="a", reason="x"), holds_upload=False)
    _, reply, _ = replies.get_nowait()
    assert isinstance(reply, Failure)
    assert reply.reason == "missed the deadline"


def test_fleet_send_to_an_unknown_client_fails_at_once() -> None:
    fleet = Fleet()
    replies: Replies = queue.Queue()

    pending = fleet.send("ghost", GetWeightsIns(), expected=None, replies=replies)

    assert pending is None
    _, reply, _ = replies.get_nowait()
    assert isinstance(reply, Failure)
    assert reply.reason == "client 'ghost' is not connected"


def test_fleet_stop_wakes_a_waiting_request_for_a_task() -> None:
    fleet = Fleet()
    session = fleet.join("a", {})
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(fleet.next_task(session, wait_s=30)))
    waiter.start()

    fleet.stop()
    waiter.join(timeout=5)

    assert not waiter.is_alive()
    assert got == [None]
    assert fleet.stopping


def test_grpc_channel_yields_replies_as_they_arrive_and_fails_the_silent_at_the_deadline() -> None:
    fleet = Fleet()
    for name in ("fast", "silent"):
        fleet.join(name, {})
    channel = GrpcChannel(fleet)
    weights = _weights()
    tasks = {name: FitIns(weights=weights, config={}) for name in ("fast", "silent")}

    def answer_fast() -> None:
        session = fleet.session_of("fast")
        assert session is not None
        task_id, _ = session.tasks.get(timeout=5)
        pending = fleet.claim(task_id, session.session_id)
        assert not isinstance(pending, str)
        fleet.deliver(pending, FitRes(weights, 3), holds_upload=False)

    threading.Thread(target=answer_fast).start()
    replies = list(channel.run(tasks, timeout_s=0.5))

    assert [name for name, _ in replies] == ["fast", "silent"]
    assert isinstance(replies[0][1], FitRes)
    failure = replies[1][1]
    assert isinstance(failure, Failure)
    assert failure.reason == "client 'silent' missed the 0.5 s deadline"


def test_grpc_channel_holds_the_upload_slot_until_the_round_asks_for_the_next_reply() -> None:
    """One decoded result in memory at a time: the slot frees only when the fold moves on."""
    fleet = Fleet()
    fleet.join("a", {})
    channel = GrpcChannel(fleet)
    weights = _weights()

    def answer() -> None:  # plays the service: take the slot, decode, deliver
        session = fleet.session_of("a")
        assert session is not None
        task_id, _ = session.tasks.get(timeout=5)
        pending = fleet.claim(task_id, session.session_id)
        assert not isinstance(pending, str)
        assert fleet.acquire_upload(timeout_s=1)
        fleet.deliver(pending, FitRes(weights, 1), holds_upload=True)

    threading.Thread(target=answer).start()
    replies = channel.run({"a": FitIns(weights=weights, config={})}, timeout_s=5)
    next(replies)  # the round holds the reply
    held = not fleet.acquire_upload(timeout_s=0.1)
    list(replies)  # the round moved on

    assert held
    assert fleet.acquire_upload(timeout_s=1)
