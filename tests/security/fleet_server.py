"""A fedloom gRPC server in its own process, for tests that call it from outside.

Usage: ``python fleet_server.py CERTS_DIR TOKENS_FILE``. It serves a `Fleet` and a
gossip node's ``Peer`` service on 127.0.0.1 (port 0 each) with mutual TLS and per-client
tokens, prints ``port N`` then ``peer_port M``, and stops when its standard input closes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.peer import PeerModels, start_peer_server
from fedloom.transport.grpc.security import TlsConfig, load_tokens
from fedloom.transport.grpc.service import start_server


def main() -> int:
    certs, tokens = Path(sys.argv[1]), Path(sys.argv[2])
    tls = TlsConfig(cert=certs / "server.pem", key=certs / "server.key", client_ca=certs / "ca.pem")
    accepted = load_tokens(tokens)
    server = start_server(Fleet(), address="127.0.0.1:0", tls=tls, tokens=accepted)
    peer = start_peer_server(PeerModels("n0"), address="127.0.0.1:0", tls=tls, tokens=accepted)
    print(f"port {server.port}", flush=True)
    print(f"peer_port {peer.port}", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop(grace_s=0.5)
    peer.stop(grace_s=0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
