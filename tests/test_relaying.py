"""`fedloom.relaying.relay(forward_package=True)`: a relay hands its clients the upstream package."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest

from fedloom.errors import ConnectError
from fedloom.package import build_package, check_package, generate_signing_key, load_public_keys
from fedloom.relaying import relay
from fedloom.transport.grpc.client import Backoff
from fedloom.transport.grpc.distribution import PackageOffer, fetch_package
from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.service import start_server

PACKAGE_SOURCE = Path(__file__).resolve().parent / "package" / "quickstart_pkg"


def test_relay_forwards_the_upstream_package_with_its_signature(tmp_path: Path) -> None:
    key, public = generate_signing_key(tmp_path / "signer.pem")
    built = build_package(PACKAGE_SOURCE, tmp_path / "package.tar.gz", signing_key=key)
    upstream = start_server(
        Fleet(),
        address="127.0.0.1:0",
        tls=None,
        tokens=None,
        package=PackageOffer.from_file(built.path),
    )
    ports: queue.Queue[int] = queue.Queue()
    ended: list[BaseException] = []

    def run_relay() -> None:
        try:
            relay(
                upstream=f"127.0.0.1:{upstream.port}",
                name="relay-a",
                address="127.0.0.1:0",
                join_timeout_s=2.0,  # nobody joins: it gives up after the fetch below
                forward_package=True,
                on_ready=ports.put,
            )
        except BaseException as exc:
            ended.append(exc)

    worker = threading.Thread(target=run_relay, daemon=True)
    worker.start()
    try:
        port = ports.get(timeout=30)
        offer = fetch_package(
            f"127.0.0.1:{port}", name="site-0", token=None, tls=None, max_bytes=1 << 20
        )
        worker.join(timeout=30)
    finally:
        upstream.stop()

    assert (offer.data, offer.sha256) == (built.path.read_bytes(), built.sha256)
    assert offer.signature == Path(f"{built.path}.sig").read_text().strip()
    forwarded = tmp_path / "forwarded.tar.gz"
    forwarded.write_bytes(offer.data)
    checked = check_package(
        forwarded, signature=offer.signature, trusted_keys=load_public_keys([public])
    )
    assert checked.sha256 == built.sha256
    assert not worker.is_alive()
    assert [type(exc) for exc in ended] == [ConnectError]  # then: no client joined in time


def test_relay_refuses_to_listen_when_upstream_offers_no_package() -> None:
    upstream = start_server(Fleet(), address="127.0.0.1:0", tls=None, tokens=None)
    ready: list[int] = []
    try:
        with pytest.raises(ConnectError, match="did not hand 'relay-a' a package: NOT_FOUND"):
            relay(
                upstream=f"127.0.0.1:{upstream.port}",
                name="relay-a",
                address="127.0.0.1:0",
                forward_package=True,
                on_ready=ready.append,
            )
    finally:
        upstream.stop()

    assert ready == []  # its clients never saw a relay without the package


def test_relay_waiting_for_an_unreachable_upstream_package_stops_when_asked() -> None:
    stop = threading.Event()
    ready: list[int] = []
    timer = threading.Timer(0.5, stop.set)
    timer.start()

    tasks = relay(
        upstream="127.0.0.1:1",  # nothing listens there
        name="relay-a",
        address="127.0.0.1:0",
        forward_package=True,
        backoff=Backoff(initial_s=0.1, max_s=0.2),
        on_ready=ready.append,
        stop=stop,
    )

    timer.join(timeout=5)
    assert tasks == 0
    assert ready == []
