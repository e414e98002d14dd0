"""The client runtime: backoff, refusals, and serving tasks against a real server on loopback."""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedloom.client import FunctionClient
from fedloom.errors import ConfigError, ConnectError
from fedloom.transport.grpc.client import Backoff, ClientRuntime
from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.security import TlsConfig, Tokens, make_dev_certs
from fedloom.transport.grpc.service import start_server


def _client() -> FunctionClient:
    return FunctionClient(weights={"x": np.zeros(1)}, fit=lambda w, c: (w, 1, {}))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_backoff_grows_exponentially_up_to_max_with_jitter_below_the_base() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0, factor=2.0, jitter=0.5)

    delays = backoff.delays(random.Random(0))
    first = [next(delays) for _ in range(6)]

    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # min(max_s, initial * 2^k)
    for delay, base in zip(first, bases, strict=True):
        assert base * 0.5 <= delay <= base


def test_backoff_rejects_impossible_settings() -> None:
    with pytest.raises(ConfigError, match="backoff needs 0 < initial_s <= max_s"):
        Backoff(initial_s=5.0, max_s=1.0)


def test_client_runtime_retries_an_unreachable_server_naming_its_address_without_spinning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    runtime = ClientRuntime(
        _client(), address=address, name="c", backoff=Backoff(initial_s=0.2, max_s=0.4)
    )
    stop = threading.Event()
    worker = threading.Thread(target=runtime.run, args=(stop,))

    with caplog.at_level(logging.WARNING, logger="fedloom.transport.grpc.client"):
        worker.start()
        time.sleep(1.5)  # observe the retry cadence over a fixed window
        stop.set()
        worker.join(timeout=10)

    attempts = [r for r in caplog.records if "cannot reach the server" in r.getMessage()]
    assert not worker.is_alive()
    assert attempts
    assert address in attempts[0].getMessage()
    assert len(attempts) <= 10  # waits of 0.1-0.4 s in 1.5 s: a handful, not a spin


def test_client_runtime_stops_with_connect_error_when_its_token_is_refused() -> None:
    fleet = Fleet()
    server = start_server(fleet, tls=None, tokens=Tokens(clients={"c": "right-token"}))
    try:
        runtime = ClientRuntime(
            _client(), address=f"127.0.0.1:{server.port}", name="c", token="wrong-token"
        )

        with pytest.raises(ConnectError, match="refused client 'c': invalid token"):
            runtime.run()
    finally:
        server.stop()
    assert fleet.names() == []


def test_client_runtime_stops_with_connect_error_when_it_cannot_trust_the_server(
    tmp_path: Path,
) -> None:
    server_certs = make_dev_certs(tmp_path / "server")
    other_ca = make_dev_certs(tmp_path / "other")
    fleet = Fleet()
    server = start_server(fleet, tls=server_certs.server_tls(), tokens=None)
    try:
        runtime = ClientRuntime(
            _client(),
            address=f"localhost:{server.port}",
            name="c",
            tls=TlsConfig(ca=other_ca.ca),
        )

        with pytest.raises(ConnectError, match=r"TLS handshake with localhost:\d+ failed"):
            runtime.run()
    finally:
        server.stop()
