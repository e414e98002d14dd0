"""`GrpcChannel.submit`/`collect` (asynchronous schedules) over a `Fleet`, without a network.

A helper plays the service's part for a client: it takes the client's queued
task, claims it, and delivers a reply (holding the upload slot when asked, as
the service does for a decoded result).
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from fedloom.core import Failure, FitIns, FitRes, Weights
from fedloom.transport.grpc.channel import GrpcChannel
from fedloom.transport.grpc.fleet import Fleet


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _weights() -> Weights:
    return Weights({"w": np.zeros(2)})


def _fit() -> FitIns:
    return FitIns(weights=_weights(), config={"server_round": 1})


def _answer(fleet: Fleet, name: str, num_examples: int, *, holds_upload: bool = False) -> bool:
    """Play the service for `name`: take its task and deliver a FitRes; whether it was accepted."""
    session = fleet.session_of(name)
    assert session is not None
    task_id, _ = session.tasks.get(timeout=5)
    pending = fleet.claim(task_id, session.session_id)
    if isinstance(pending, str):  # its task expired: the service drops the result
        return False
    if holds_upload:
        assert fleet.acquire_upload(timeout_s=5)
    accepted = fleet.deliver(pending, FitRes(_weights(), num_examples), holds_upload=holds_upload)
    if holds_upload and not accepted:
        fleet.release_upload()  # as the service does for a refused result
    return accepted


def test_grpc_channel_collect_returns_submitted_replies_in_arrival_order() -> None:
    fleet = Fleet()
    for name in ("a", "b"):
        fleet.join(name, {})
    channel = GrpcChannel(fleet)

    channel.submit({"a": _fit(), "b": _fit()})
    _answer(fleet, "b", 2)  # b answers first
    first = channel.collect(timeout_s=5)
    _answer(fleet, "a", 1)
    second = channel.collect(timeout_s=5)

    assert first is not None
    assert second is not None
    assert (first[0], second[0]) == ("b", "a")
    assert isinstance(first[1], FitRes)
    assert first[1].num_examples == 2
    assert channel.collect(timeout_s=5) is None  # nothing awaited: None at once, no wait


def test_grpc_channel_submit_to_a_client_not_connected_fails_its_task_at_once() -> None:
    channel = GrpcChannel(Fleet())

    channel.submit({"ghost": _fit()})
    arrival = channel.collect(timeout_s=5)

    assert arrival is not None
    name, reply = arrival
    assert name == "ghost"
    assert isinstance(reply, Failure)
    assert reply.reason == "client 'ghost' is not connected"


def test_grpc_channel_submitted_task_fails_at_its_deadline_while_others_answer() -> None:
    """The silent client fails only its task; the busy one's replies keep flowing."""
    fleet = Fleet()
    for name in ("busy", "silent"):
        fleet.join(name, {})
    channel = GrpcChannel(fleet)
    channel.submit({"busy": _fit(), "silent": _fit()})
    arrivals = []

    for _ in range(2):  # busy answers and gets its next task while silent's deadline runs
        answering = threading.Thread(target=_answer, args=(fleet, "busy", 1))
        answering.start()
        arrivals.append(channel.collect(timeout_s=0.6))
        answering.join(timeout=5)
        channel.submit({"busy": _fit()})
    arrivals.append(channel.collect(timeout_s=0.6))

    names = [arrival[0] for arrival in arrivals if arrival is not None]
    assert names == ["busy", "busy", "silent"]
    failure = arrivals[2][1] if arrivals[2] is not None else None
    assert isinstance(failure, Failure)
    assert failure.reason == "client 'silent' missed the 0.6 s deadline"
    session = fleet.session_of("silent")
    assert session is not None
    task_id, _ = session.tasks.get(timeout=5)
    assert "late" in str(fleet.claim(task_id, session.session_id))  # its result is dropped


def test_grpc_channel_task_of_a_client_that_stops_beating_fails_alone() -> None:
    clock = Clock()
    fleet = Fleet(heartbeat_s=1.0, clock=clock)
    dead = fleet.join("dead", {})
    alive = fleet.join("alive", {})
    channel = GrpcChannel(fleet)
    channel.submit({"dead": _fit(), "alive": _fit()})

    clock.now = 3.5  # dead was last seen at 0: more than 3 heartbeats ago
    fleet.touch(alive.session_id)
    arrival = channel.collect(timeout_s=5)

    assert arrival is not None
    assert arrival[0] == "dead"
    assert isinstance(arrival[1], Failure)
    assert "stopped beating" in arrival[1].reason
    assert fleet.touch(dead.session_id) is None
    assert channel.clients() == ["alive"]
    assert _answer(fleet, "alive", 1)  # the other task still counts
    late_arrival = channel.collect(timeout_s=5)
    assert late_arrival is not None
    assert late_arrival[0] == "alive"


def test_grpc_channel_client_that_joins_later_is_offered_to_the_next_submit() -> None:
    fleet = Fleet()
    fleet.join("early", {})
    channel = GrpcChannel(fleet)
    channel.submit({"early": _fit()})

    fleet.join("late", {})
    channel.submit({name: _fit() for name in channel.clients() if name == "late"})
    _answer(fleet, "late", 5)
    arrival = channel.collect(timeout_s=5)

    assert channel.clients() == ["early", "late"]
    assert arrival is not None
    assert arrival[0] == "late"


def test_grpc_channel_collected_reply_holds_the_upload_slot_until_the_next_collect() -> None:
    """One decoded result in memory at a time, as in synchronous rounds."""
    fleet = Fleet()
    for name in ("a", "b"):
        fleet.join(name, {})
    channel = GrpcChannel(fleet)
    channel.submit({"a": _fit(), "b": _fit()})
    _answer(fleet, "a", 1, holds_upload=True)

    assert channel.collect(timeout_s=5) is not None
    held = not fleet.acquire_upload(timeout_s=0.1)  # b's upload would wait here
    answering = threading.Thread(
        target=_answer, args=(fleet, "b", 2), kwargs={"holds_upload": True}
    )
    answering.start()
    second = channel.collect(timeout_s=5)  # frees a's slot, so b's upload goes through
    answering.join(timeout=5)

    assert held
    assert second is not None
    assert second[0] == "b"
    assert not fleet.acquire_upload(timeout_s=0.1)  # now b's reply holds it
    channel.close()
    assert fleet.acquire_upload(timeout_s=1)


def test_grpc_channel_close_drops_results_still_running_and_frees_the_slot() -> None:
    """At the end of a run no upload waits for a slot that no one would free."""
    fleet = Fleet()
    for name in ("done", "running"):
        fleet.join(name, {})
    channel = GrpcChannel(fleet)
    channel.submit({"done": _fit(), "running": _fit()})
    _answer(fleet, "done", 1, holds_upload=True)
    assert channel.collect(timeout_s=5) is not None
    outcome: queue.Queue[bool] = queue.Queue()
    threading.Thread(
        target=lambda: outcome.put(_answer(fleet, "running", 1, holds_upload=True))
    ).start()

    channel.close()

    assert outcome.get(timeout=5) is False  # its result came after the end: refused
    assert fleet.acquire_upload(timeout_s=1)
    assert channel.collect(timeout_s=5) is None
