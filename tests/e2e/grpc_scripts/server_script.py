"""A fedloom gRPC server for the deployment tests: `fedloom.serve` on one task.

Prints one line per event on stdout, flushed, for the test to wait on: ``PORT <n>``
once listening, ``JOINED <name>`` when a client joins (again), ``STARTED <round>
<time.time()>`` when a round starts, ``ROUND <json>`` when it is recorded, and ``DONE``
after `--out` is written. `--out` gets ``{"history", "stop_reason", "weights_sha256",
"weights", "seconds", "max_rss_mib"}`` (``weights`` only for models of at most 1,000
values).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import sys
import threading
import time
from pathlib import Path

from common import flat_sha256, pattern

import fedloom
from fedloom.core import VectorSpec
from fedloom.server import Callback, RoundRecord
from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.security import TlsConfig, Tokens

QUICKSTART = Path(__file__).resolve().parents[3] / "examples" / "quickstart"
_print_lock = threading.Lock()


def say(line: str) -> None:
    """One event line on stdout, whole and flushed (gRPC threads print too)."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def announce_joins() -> None:
    """Print ``JOINED <name>`` whenever the fleet admits a client."""
    join = Fleet.join

    def announcing(self: Fleet, name: str, metadata: object) -> object:
        session = join(self, name, metadata)  # type: ignore[arg-type]
        say(f"JOINED {name}")
        return session

    Fleet.join = announcing  # type: ignore[method-assign, assignment]


class Rounds(Callback):
    """Prints when each round starts (wall-clock time) and each recorded round."""

    def on_round_start(self, server_round: int) -> None:
        say(f"STARTED {server_round} {time.time()}")

    def on_round_end(self, record: RoundRecord, weights: fedloom.Weights) -> bool:
        say("ROUND " + json.dumps(dataclasses.asdict(record)))
        return False


def big_weights(size: int) -> fedloom.Weights:
    """One tensor "w" of `size` float32 values: the pattern ``arange(size) % 1000``."""
    spec = VectorSpec(names=("w",), shapes=((size,),), dtype="float32")
    return fedloom.Weights.from_flat(spec, pattern(size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=("quickstart", "toy", "big"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-clients", type=int, default=1)
    parser.add_argument("--min-fit", type=int, default=1)
    parser.add_argument("--heartbeat-s", type=float, default=2.0)
    parser.add_argument("--fit-timeout-s", type=float, default=120.0)
    parser.add_argument("--join-timeout-s", type=float, default=180.0)
    parser.add_argument("--certs", type=Path, help="folder of make_dev_certs (TLS)")
    parser.add_argument("--tokens", type=Path, help="JSON file: client name -> token")
    parser.add_argument("--size", type=int, default=2**28, help="values of the big model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    announce_joins()

    tls = None
    if args.certs is not None:
        tls = TlsConfig(cert=args.certs / "server.pem", key=args.certs / "server.key")
    tokens = None
    if args.tokens is not None:
        tokens = Tokens(clients=json.loads(args.tokens.read_text()))
    evaluate_fn = None
    if args.task == "quickstart":
        import torch

        torch.set_num_threads(1)  # a tiny MLP: threads cost more than they give
        sys.path.insert(0, str(QUICKSTART))
        import task

        evaluate_fn = task.evaluate

    started = time.perf_counter()
    result = fedloom.serve(
        rounds=args.rounds,
        strategy=fedloom.fedavg(fraction_evaluate=0, min_fit=args.min_fit),
        address="127.0.0.1:0",
        min_clients=args.min_clients,
        join_timeout_s=args.join_timeout_s,
        fit_timeout_s=args.fit_timeout_s,
        tls=tls,
        tokens=tokens,
        seed=0,
        # made in the call, so that only serve holds the big initial weights
        initial_weights=big_weights(args.size) if args.task == "big" else None,
        evaluate_fn=evaluate_fn,
        callbacks=[Rounds()],
        heartbeat_s=args.heartbeat_s,
        on_ready=lambda port: say(f"PORT {port}"),
    )
    flat = result.weights.flat
    out = {
        "history": result.history.to_dict(),
        "stop_reason": result.stop_reason,
        "weights_sha256": flat_sha256(flat),
        "weights": {k: v.tolist() for k, v in result.weights.items()}
        if flat.size <= 1000
        else None,
        "seconds": time.perf_counter() - started,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    partial = args.out.with_suffix(".partial")
    partial.write_text(json.dumps(out))
    os.replace(partial, args.out)
    say("DONE")


if __name__ == "__main__":
    main()
