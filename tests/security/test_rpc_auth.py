"""Every RPC of every service in fleet.proto refuses calls without valid credentials.

The methods are enumerated from ``fleet_pb2.DESCRIPTOR.services_by_name``, so an RPC
added later is covered without editing this test. Each is called on a real server
process on 127.0.0.1 (mutual TLS and per-client tokens, as ``fedloom server`` and
``fedloom peer`` run): without a token, with a wrong or malformed one, and without a
client certificate. A service the server script does not serve fails the tests with a
KeyError: serve it there too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from fedloom.proto import fleet_pb2
from fedloom.transport.grpc.security import (
    DevCerts,
    TlsConfig,
    bearer_metadata,
    channel_credentials,
    make_dev_certs,
)

TIMEOUT_S = 10.0
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}
METHODS = [
    method
    for service in fleet_pb2.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
SCRIPT = Path(__file__).with_name("fleet_server.py")


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _call(
    channel: grpc.Channel, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...]
) -> Any:
    """Call `method` with an empty request of its input type, in its streaming kind."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    make = kinds[(method.client_streaming, method.server_streaming)]
    call = make(
        _path(method),
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    request = iter([request_type()]) if method.client_streaming else request_type()
    response = call(request, metadata=metadata, timeout=TIMEOUT_S)
    return list(response) if method.server_streaming else response


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"), client_names=("alice", "bob"))


@pytest.fixture(scope="module")
def servers(certs: DevCerts) -> Iterator[dict[str, str]]:
    """A server process with mutual TLS and per-client tokens; each service's address."""
    tokens = certs.ca.parent / "tokens.json"
    tokens.write_text("{" + ", ".join(f'"{k}": "{v}"' for k, v in TOKENS.items()) + "}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(certs.ca.parent), str(tokens)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        lines: list[str] = []

        def read_two() -> None:
            for _ in range(2):
                lines.append(process.stdout.readline())  # type: ignore[union-attr]

        reader = threading.Thread(target=read_two)
        reader.start()
        reader.join(timeout=60)
        assert len(lines) == 2, f"the server did not start within 60 s: {lines}"
        assert lines[0].startswith("port "), f"the server did not start: {lines}"
        assert lines[1].startswith("peer_port "), f"the peer service did not start: {lines}"
        yield {
            "Fleet": f"localhost:{int(lines[0].split()[1])}",
            "Peer": f"localhost:{int(lines[1].split()[1])}",
        }
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def channels(servers: dict[str, str], certs: DevCerts) -> Iterator[dict[str, grpc.Channel]]:
    """Channels with alice's valid client certificate (so only the token is at stake)."""
    credentials = channel_credentials(certs.client_tls("alice"))
    opened = {name: grpc.secure_channel(address, credentials) for name, address in servers.items()}
    try:
        yield opened
    finally:
        for channel in opened.values():
            channel.close()


def test_the_descriptor_lists_the_fleet_rpcs() -> None:
    """Guards the enumeration itself: it found the service and all its methods."""
    assert {_path(m) for m in METHODS} >= {
        "/fedloom.v1.Fleet/Join",
        "/fedloom.v1.Fleet/Beat",
        "/fedloom.v1.Fleet/Pull",
        "/fedloom.v1.Fleet/Push",
        "/fedloom.v1.Fleet/Leave",
    }


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "missing token"),
        (bearer_metadata("not-a-token-of-this-server"), "invalid token"),
        ((("authorization", "alice-token-0123456789"),), "malformed authorization"),
        ((("authorization", "Basic YWxpY2U6eA=="),), "malformed authorization"),
    ],
    ids=["no-token", "wrong-token", "no-bearer-scheme", "basic-auth"],
)
@pytest.mark.parametrize("method", METHODS, ids=_path)
def test_every_rpc_refuses_calls_without_valid_token(
    channels: dict[str, grpc.Channel],
    method: MethodDescriptor,
    metadata: tuple[tuple[str, str], ...],
    reason: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _call(channels[method.containing_service.name], method, metadata)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details().startswith(reason)


@pytest.mark.parametrize("method", METHODS, ids=_path)
def test_every_rpc_refuses_a_client_without_a_certificate_of_the_ca(
    servers: dict[str, str], certs: DevCerts, tmp_path: Path, method: MethodDescriptor
) -> None:
    server = servers[method.containing_service.name]
    foreign = make_dev_certs(tmp_path, client_names=("mallory",))
    tls = TlsConfig(
        ca=certs.ca, cert=foreign.clients["mallory"].cert, key=foreign.clients["mallory"].key
    )

    for credentials in (certs.client_tls(), tls):  # none, then one of another CA
        with grpc.secure_channel(server, channel_credentials(credentials)) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                _call(channel, method, bearer_metadata(TOKENS["alice"]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_valid_credentials_pass_so_the_refusals_are_about_credentials(
    channels: dict[str, grpc.Channel],
) -> None:
    channel = channels["Fleet"]
    token = bearer_metadata(TOKENS["alice"])
    join = channel.unary_unary(
        "/fedloom.v1.Fleet/Join",
        request_serializer=fleet_pb2.JoinRequest.SerializeToString,
        response_deserializer=fleet_pb2.JoinReply.FromString,
    )
    beat = next(m for m in METHODS if m.name == "Beat")

    joined = join(fleet_pb2.JoinRequest(name="alice"), metadata=token, timeout=TIMEOUT_S)
    beat_reply = _call(channel, beat, token)

    assert joined.session
    assert joined.run_id
    assert beat_reply.known is False  # an empty session is unknown, but the call was served


def test_valid_credentials_reach_the_peer_service(channels: dict[str, grpc.Channel]) -> None:
    get_model = next(m for m in METHODS if m.name == "GetModel")
    frames = _call(channels["Peer"], get_model, bearer_metadata(TOKENS["alice"]))

    assert frames  # served: a "none" signal, as round 0 was never published
    assert frames[0].header.kind == "none"
