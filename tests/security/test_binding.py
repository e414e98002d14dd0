"""Messages bound to run, round and client; sessions bound to their token; quotas; mTLS refusals.

A real gRPC server on 127.0.0.1 (OS-assigned port) with per-client tokens; the
tests play clients through the raw stub so they can replay and forge.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedloom.client import FunctionClient
from fedloom.core import Failure, FitIns, FitRes, Weights
from fedloom.errors import ConfigError, ConnectError, QuotaExceeded
from fedloom.proto import fleet_pb2, fleet_pb2_grpc
from fedloom.transport.grpc import decode_task, encode_result, peek_header
from fedloom.transport.grpc.client import Backoff, ClientRuntime
from fedloom.transport.grpc.fleet import Fleet, Replies
from fedloom.transport.grpc.quotas import QuotaLedger, Quotas
from fedloom.transport.grpc.security import (
    TlsConfig,
    Tokens,
    bearer_metadata,
    make_dev_certs,
)
from fedloom.transport.grpc.security.tls import refused_client_certificate
from fedloom.transport.grpc.service import RunningServer, start_server

TIMEOUT_S = 10.0
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}
MODEL = Weights({"w": np.zeros(3, np.float32)})
SERVICE_LOG = "fedloom.transport.grpc.service"


@dataclass
class Peer:
    """A client played through the raw stub."""

    name: str
    stub: fleet_pb2_grpc.FleetStub
    session: str = ""

    @property
    def token(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(TOKENS[self.name])

    def join(self) -> None:
        reply = self.stub.Join(
            fleet_pb2.JoinRequest(name=self.name), metadata=self.token, timeout=TIMEOUT_S
        )
        self.session = reply.session

    def pull(self) -> tuple[fleet_pb2.Header, str]:
        frames = self.stub.Pull(
            fleet_pb2.PullRequest(session=self.session, wait_s=5.0),
            metadata=self.token,
            timeout=TIMEOUT_S,
        )
        header, stream = peek_header(frames, message="task stream")
        task_id, _ = decode_task(stream)
        return header, task_id

    def push(self, frames: list[fleet_pb2.Frame]) -> fleet_pb2.PushReply:
        reply: fleet_pb2.PushReply = self.stub.Push(
            iter(frames), metadata=self.token, timeout=TIMEOUT_S
        )
        return reply


def _result(header: fleet_pb2.Header, session: str, **override: object) -> list[fleet_pb2.Frame]:
    binding = {"run_id": header.run_id, "server_round": header.server_round, **override}
    return list(
        encode_result(header.task_id, FitRes(MODEL, 2), session=session, **binding)  # type: ignore[arg-type]
    )


@dataclass
class Setup:
    fleet: Fleet
    server: RunningServer
    channel: grpc.Channel
    alice: Peer
    bob: Peer
    replies: Replies

    def send(self, name: str, server_round: int) -> None:
        task = FitIns(weights=MODEL, config={"server_round": server_round})
        self.fleet.send(name, task, expected=MODEL.spec, replies=self.replies)


def _serve(quotas: Quotas | None = None) -> tuple[Fleet, RunningServer, grpc.Channel]:
    fleet = Fleet()
    server = start_server(fleet, tls=None, tokens=Tokens(clients=TOKENS), quotas=quotas)
    return fleet, server, grpc.insecure_channel(f"127.0.0.1:{server.port}")


@pytest.fixture
def setup() -> Iterator[Setup]:
    fleet, server, channel = _serve()
    stub = fleet_pb2_grpc.FleetStub(channel)
    alice, bob = Peer("alice", stub), Peer("bob", stub)
    alice.join()
    bob.join()
    try:
        yield Setup(fleet, server, channel, alice, bob, queue.Queue())
    finally:
        channel.close()
        server.stop(grace_s=0.1)


def _reply(replies: Replies) -> tuple[str, object]:
    name, reply, release = replies.get(timeout=TIMEOUT_S)
    release()
    return name, reply


# --- run, round and client binding ---


def test_a_task_names_its_run_and_round(setup: Setup) -> None:
    setup.send("alice", server_round=4)

    header, _ = setup.alice.pull()

    assert header.run_id == setup.fleet.run_id
    assert header.server_round == 4


def test_the_echoed_result_is_accepted(setup: Setup) -> None:
    setup.send("alice", server_round=4)
    header, _ = setup.alice.pull()

    ack = setup.alice.push(_result(header, setup.alice.session))

    assert ack.accepted
    name, reply = _reply(setup.replies)
    assert name == "alice"
    assert isinstance(reply, FitRes)


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"server_round": 3}, "for round 3 under task .*, which belongs to round 4"),
        ({"run_id": "an-old-run"}, "for run 'an-old-run'; this is run"),
    ],
)
def test_a_result_bound_to_another_round_or_run_is_refused_and_fails_the_task(
    setup: Setup, caplog: pytest.LogCaptureFixture, override: dict[str, object], problem: str
) -> None:
    setup.send("alice", server_round=4)
    header, _ = setup.alice.pull()
    caplog.set_level(logging.WARNING, logger=SERVICE_LOG)

    ack = setup.alice.push(_result(header, setup.alice.session, **override))

    assert not ack.accepted
    assert "refused as a replay" in ack.reason
    name, reply = _reply(setup.replies)
    assert name == "alice"
    assert isinstance(reply, Failure)
    assert "refused as a replay" in reply.reason
    assert any("refused as a replay" in r.getMessage() for r in caplog.records)
    assert re.search(problem, ack.reason)


def test_a_replayed_result_of_an_earlier_round_fails_the_current_task_and_the_round_goes_on(
    setup: Setup,
) -> None:
    setup.send("alice", server_round=1)
    setup.send("bob", server_round=1)
    first, _ = setup.alice.pull()
    old = _result(first, setup.alice.session)
    assert setup.alice.push(old).accepted
    _reply(setup.replies)
    setup.send("alice", server_round=2)  # round 2: alice replays round 1's result

    ack = setup.alice.push(old)
    bob_header, _ = setup.bob.pull()
    bob_ack = setup.bob.push(_result(bob_header, setup.bob.session))

    assert not ack.accepted
    assert "which was already answered" in ack.reason
    replies = dict(_reply(setup.replies) for _ in range(2))
    assert isinstance(replies["alice"], Failure)
    assert "refused as a replay" in replies["alice"].reason
    assert bob_ack.accepted
    assert isinstance(replies["bob"], FitRes)  # the other client's result still counts


def test_another_clients_replayed_result_is_denied_and_fails_the_replayers_task(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.send("alice", server_round=1)
    setup.send("bob", server_round=1)
    header, _ = setup.alice.pull()
    stolen = _result(header, setup.alice.session)  # captured from alice, sent with bob's token
    caplog.set_level(logging.WARNING, logger=SERVICE_LOG)

    with pytest.raises(grpc.RpcError) as caught:
        setup.bob.push(stolen)
    name, reply = _reply(setup.replies)
    genuine = setup.alice.push(stolen)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "token of client 'bob' named the session of client 'alice'" in caught.value.details()
    assert name == "bob"
    assert isinstance(reply, Failure)
    assert genuine.accepted  # alice's own task was untouched
    assert isinstance(_reply(setup.replies)[1], FitRes)
    assert any("named the session of client 'alice'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", ["Beat", "Leave", "Pull"])
def test_a_session_is_usable_only_with_its_owners_token(setup: Setup, method: str) -> None:
    call = getattr(setup.bob.stub, method)
    request = (
        fleet_pb2.PullRequest(session=setup.alice.session, wait_s=0.1)
        if method == "Pull"
        else fleet_pb2.BeatRequest(session=setup.alice.session)
    )

    def bobs_call() -> object:
        response = call(request, metadata=setup.bob.token, timeout=TIMEOUT_S)
        return list(response) if method == "Pull" else response

    with pytest.raises(grpc.RpcError) as caught:
        bobs_call()

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert setup.fleet.names() == ["alice", "bob"]  # alice was not made to leave


def test_the_client_runtime_echoes_the_binding(setup: Setup) -> None:
    """The real client answers a task of round 7 and the server accepts it."""
    client = FunctionClient(weights={"w": np.zeros(3, np.float32)}, fit=lambda w, c: (w, 1, {}))
    runtime = ClientRuntime(
        client,
        address=f"127.0.0.1:{setup.server.port}",
        name="alice",
        token=TOKENS["alice"],
        poll_s=0.2,
    )
    stop = threading.Event()
    worker = threading.Thread(target=runtime.run, args=(stop,))
    worker.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:  # until the runtime's join replaced the fixture's
            session = setup.fleet.session_of("alice")
            if session is not None and session.session_id != setup.alice.session:
                break
            time.sleep(0.05)
        setup.send("alice", server_round=7)
        name, reply = _reply(setup.replies)
    finally:
        stop.set()
        worker.join(timeout=TIMEOUT_S)

    assert name == "alice"
    assert isinstance(reply, FitRes)


# --- quotas ---


def test_joins_beyond_the_quota_are_refused_with_resource_exhausted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, server, channel = _serve(Quotas(joins_per_client=2, window_s=60))
    alice = Peer("alice", fleet_pb2_grpc.FleetStub(channel))
    caplog.set_level(logging.WARNING, logger=SERVICE_LOG)
    try:
        alice.join()
        alice.join()
        with pytest.raises(grpc.RpcError) as caught:
            alice.join()
    finally:
        channel.close()
        server.stop(grace_s=0.1)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "client 'alice' joined 2 times in the last 60 s" in caught.value.details()
    assert "Retry in" in caught.value.details()
    assert any("refused join of 'alice'" in r.getMessage() for r in caplog.records)


def test_uploads_beyond_the_byte_quota_are_refused_and_fail_the_task() -> None:
    fleet, server, channel = _serve(Quotas(upload_bytes=100, window_s=60))
    alice = Peer("alice", fleet_pb2_grpc.FleetStub(channel))
    replies: Replies = queue.Queue()
    try:
        alice.join()
        fleet.send("alice", FitIns(weights=MODEL, config={}), expected=MODEL.spec, replies=replies)
        header, _ = alice.pull()
        with pytest.raises(grpc.RpcError) as caught:
            alice.push(_result(header, alice.session))
        _, reply = _reply(replies)
    finally:
        channel.close()
        server.stop(grace_s=0.1)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its upload quota of 100 bytes per 60 s" in caught.value.details()
    assert isinstance(reply, Failure)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_quota_ledger_counts_over_a_sliding_window() -> None:
    clock = Clock()
    ledger = QuotaLedger(Quotas(upload_bytes=100, window_s=10), clock=clock)
    ledger.charge_upload("a", 60)
    clock.now = 4.0
    ledger.charge_upload("a", 40)  # 100 of 100
    ledger.charge_upload("b", 100)  # each client has its own quota

    clock.now = 6.0
    with pytest.raises(QuotaExceeded) as caught:
        ledger.charge_upload("a", 50)
    clock.now = 10.0  # the 60 bytes of t=0 left the window
    ledger.charge_upload("a", 50)

    assert caught.value.retry_after_s == pytest.approx(4.0)  # 0 + 10 - 6
    assert caught.value.client_id == "a"


def test_quota_ledger_refuses_more_than_the_whole_quota_without_a_retry_time() -> None:
    ledger = QuotaLedger(Quotas(upload_bytes=10))

    with pytest.raises(QuotaExceeded, match="larger than the whole quota") as caught:
        ledger.charge_upload("a", 11)

    assert caught.value.retry_after_s is None


def test_quota_ledger_limits_joins_per_host_across_names() -> None:
    ledger = QuotaLedger(Quotas(joins_per_host=2, joins_per_client=None))
    ledger.charge_join("a", "10.0.0.1")
    ledger.charge_join("b", "10.0.0.1")
    ledger.charge_join("c", "10.0.0.2")

    with pytest.raises(QuotaExceeded, match=r"host 10\.0\.0\.1 joined 2 times"):
        ledger.charge_join("d", "10.0.0.1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_s": 0}, "window_s must be a positive number"),
        ({"upload_bytes": 0}, "upload_bytes must be at least 1"),
        ({"joins_per_client": 2.5}, "joins_per_client must be a positive int or None"),
        ({"joins_per_host": True}, "joins_per_host must be a positive int or None"),
    ],
)
def test_quotas_reject_impossible_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Quotas(**kwargs)  # type: ignore[arg-type]


# --- mutual TLS: a refused client certificate stops the client ---


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """A mutual-TLS server; its address, its certificates' folder and a foreign CA's folder."""
    certs = make_dev_certs(tmp_path_factory.mktemp("certs"), client_names=("alice",))
    other = make_dev_certs(tmp_path_factory.mktemp("other"), client_names=("mallory",))
    server = start_server(Fleet(), tls=certs.server_tls(mutual=True), tokens=None)
    try:
        yield f"localhost:{server.port}", certs.ca.parent, other.ca.parent
    finally:
        server.stop(grace_s=0.1)


def _tls(folder: Path, name: str | None, ca: Path) -> TlsConfig:
    if name is None:
        return TlsConfig(ca=ca)
    return TlsConfig(ca=ca, cert=folder / f"{name}.pem", key=folder / f"{name}.key")


@pytest.mark.parametrize("certificate", ["none", "foreign"])
def test_client_with_a_refused_certificate_stops_with_a_clear_error(
    mutual: tuple[str, Path, Path], certificate: str
) -> None:
    address, certs, other = mutual
    tls = (
        _tls(other, "mallory", certs / "ca.pem")
        if certificate == "foreign"
        else _tls(certs, None, certs / "ca.pem")
    )
    client = FunctionClient(weights={"w": np.zeros(1)}, fit=lambda w, c: (w, 1, {}))
    runtime = ClientRuntime(
        client, address=address, name="m", tls=tls, backoff=Backoff(initial_s=0.1, max_s=0.2)
    )
    outcome: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(runtime, outcome))

    worker.start()
    worker.join(timeout=TIMEOUT_S)

    assert not worker.is_alive(), "the client kept retrying"
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectError)
    assert "refuses the certificate of client 'm' (mutual TLS)" in str(outcome[0])
    assert "Socket closed" in str(outcome[0])  # what gRPC alone says


def _capture(runtime: ClientRuntime, outcome: list[BaseException]) -> None:
    try:
        runtime.run()
    except BaseException as exc:  # the test inspects it
        outcome.append(exc)


def test_certificate_probe_does_not_mistake_an_accepted_client_or_an_outage(
    mutual: tuple[str, Path, Path], tmp_path: Path
) -> None:
    address, certs, _ = mutual
    plain = make_dev_certs(tmp_path)
    one_way = start_server(Fleet(), tls=plain.server_tls(), tokens=None)
    try:
        accepted = refused_client_certificate(address, _tls(certs, "alice", certs / "ca.pem"))
        not_mutual = refused_client_certificate(f"localhost:{one_way.port}", plain.client_tls())
    finally:
        one_way.stop(grace_s=0.1)
    down = refused_client_certificate(f"localhost:{one_way.port}", plain.client_tls())
    refused = refused_client_certificate(address, _tls(certs, None, certs / "ca.pem"))

    assert (accepted, not_mutual, down, refused) == (False, False, False, True)


# --- messages gRPC itself refuses ---


def test_a_frame_over_the_message_limit_and_bytes_that_are_not_protobuf_are_refused() -> None:
    fleet = Fleet()
    server = start_server(fleet, tls=None, tokens=None, chunk_bytes=1024)  # limit: 1 KiB + 1 MiB
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    raw_push = channel.stream_unary(
        "/fedloom.v1.Fleet/Push",
        request_serializer=lambda data: data,
        response_deserializer=fleet_pb2.PushReply.FromString,
    )
    huge = fleet_pb2.Frame(data=bytes(2 << 20)).SerializeToString()
    try:
        with pytest.raises(grpc.RpcError) as too_big:
            raw_push(iter([huge]), timeout=TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as garbage:
            raw_push(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=TIMEOUT_S)
        still_serving = fleet_pb2_grpc.FleetStub(channel).Join(
            fleet_pb2.JoinRequest(name="ok"), timeout=TIMEOUT_S
        )
    finally:
        channel.close()
        server.stop(grace_s=0.1)

    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert garbage.value.code() == grpc.StatusCode.INTERNAL
    assert still_serving.session
    assert fleet.names() == ["ok"]
