"""PyFed's ``client_1.py`` .. ``client_3.py`` for fedloom: one script, the client's number first.

    python examples/keras-multiprocess/client.py 1 --server localhost:8080 \\
        --ca certs/ca.pem --token-file certs/tokens.toml
    python examples/keras-multiprocess/client.py 1 --server localhost:8080 --insecure

Client N (1 to 3) builds the Keras MLP on its part of the data (``task.py``),
connects to the server as ``client-N`` and trains whenever the server asks,
until the run ends. The connection is TLS, trusting the CA in ``--ca``, with the
client's token from ``--token-file``: a file holding only that token, or a
``tokens.toml`` where it is looked up by name. The client dials out, so it may
sit behind NAT; while the server is not up yet it retries with backoff.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import task  # first: it picks the Keras backend

import fedloom
from fedloom.errors import ConfigError
from fedloom.transport.grpc.security import TlsConfig, load_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("number", type=int, help=f"which client: 1 to {task.NUM_CLIENTS}")
    parser.add_argument("--server", required=True, help="the server's HOST:PORT")
    parser.add_argument("--name", help="the client's name (default: client-NUMBER)")
    parser.add_argument("--samples", type=int, default=5000, help="as given to the server")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="the CA that signed the server's certificate (certs/ca.pem)",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        help="plain text, no token: for loopback experiments only",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="this client's token, alone in the file or in a tokens.toml",
    )
    args = parser.parse_args()
    name = args.name or f"client-{args.number}"

    tls, token = None, None
    if not args.insecure:
        if args.token_file is None:
            parser.error("--ca needs --token-file FILE (this client's token)")
        tls, token = TlsConfig(ca=args.ca), read_token(args.token_file, name)
    try:  # a wrong number or --samples, or mlxtend missing: say so, without a traceback
        client = task.make_client(args.number, args.samples)
    except ConfigError as exc:
        parser.error(str(exc))
    tasks = fedloom.connect(client, address=args.server, name=name, token=token, tls=tls)
    print(f"{name}: the run ended after {tasks} tasks", flush=True)
    return 0


def read_token(path: Path, name: str) -> str:
    """The token in `path`: the whole file, or `name`'s entry in a ``tokens.toml``."""
    if path.suffix == ".toml":
        clients = load_tokens(path).clients
        if name not in clients:
            raise SystemExit(f"{path} has no token for {name!r}; it lists: {', '.join(clients)}")
        return clients[name]
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise SystemExit(f"{path} is empty; it should hold {name!r}'s token on one line")
    return token


if __name__ == "__main__":
    sys.exit(main())
