"""The processes of ``benchmarks/relay.py``: a counting server, a relay, or K clients.

``python benchmarks/_relay_procs.py server --rounds R --clients K --params N`` serves
R FedAvg rounds (no evaluation) of a model of N float32 zeros on 127.0.0.1 (port 0,
plain text) to K directly connected peers (clients or relays). It is `fedloom.serve`
built from its parts, so that it can read its `Fleet`'s count of the bytes of every
request message it received (joins, beats, task pulls and result frames). It prints
``PORT <n>`` once listening, ``ROUND <json>`` after each round (its duration and the
bytes received during it) and ``RESULT <json>`` at the end.

``python benchmarks/_relay_procs.py relay --upstream HOST:PORT --name NAME --clients K``
runs `fedloom.relaying.relay` on 127.0.0.1 (port 0): it prints ``PORT <n>``, waits for
K clients, joins upstream, and prints ``DONE <tasks>`` when the server ends the run.

``python benchmarks/_relay_procs.py clients --address HOST:PORT --clients K --params N``
connects K clients named ``c0`` ... from threads of one process; they share one
`FunctionClient` whose fit returns the weights it received, so a round is transport
and aggregation only. It prints ``DONE <json>`` once every client has left.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time

import numpy as np

import fedloom
from fedloom.client import FunctionClient
from fedloom.relaying import relay
from fedloom.server import Callback, Orchestrator, RoundRecord
from fedloom.transport.grpc.channel import GrpcChannel
from fedloom.transport.grpc.client import Backoff
from fedloom.transport.grpc.fleet import Fleet
from fedloom.transport.grpc.service import start_server

_print_lock = threading.Lock()


def say(line: str) -> None:
    """One event line on stdout, whole and flushed (gRPC threads run alongside)."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class ByteProbe(Callback):
    """Prints each round's duration and the bytes the server received during it."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._before = 0

    def on_round_start(self, server_round: int) -> None:
        self._before = self._fleet.received_bytes

    def on_round_end(self, record: RoundRecord, weights: fedloom.Weights) -> bool:
        line = {
            "server_round": record.server_round,
            "duration_s": record.duration_s,
            "received_bytes": self._fleet.received_bytes - self._before,
            "num_results": record.num_results,
            "failures": record.failures,
        }
        say("ROUND " + json.dumps(line))
        return False


def serve(args: argparse.Namespace) -> None:
    fleet = Fleet(heartbeat_s=args.heartbeat_s)
    running = start_server(fleet, address="127.0.0.1:0", tls=None, tokens=None)
    try:
        say(f"PORT {running.port}")
        joined = fleet.wait_for(args.clients, timeout_s=args.join_timeout_s)
        if len(joined) < args.clients:
            raise SystemExit(f"only {len(joined)} of {args.clients} peers joined")
        orchestrator = Orchestrator(
            GrpcChannel(fleet),
            fedloom.fedavg(fraction_evaluate=0),
            rounds=args.rounds,
            callbacks=[ByteProbe(fleet)],
            fit_timeout_s=args.fit_timeout_s,
        )
        initial = [fedloom.Weights({"w": np.zeros(args.params, np.float32)})]
        result = orchestrator.run(initial.pop())
    finally:
        fleet.stop(wait_s=3 * args.heartbeat_s + 10.0)
        running.stop(grace_s=2.0)
    summary = {
        "stop_reason": result.stop_reason,
        # FedAvg of copies of the global weights is the global weights: all zeros.
        "weights_unchanged": not np.any(result.weights.flat),
        "total_received_bytes": fleet.received_bytes,
    }
    say("RESULT " + json.dumps(summary))


def run_relay(args: argparse.Namespace) -> None:
    tasks = relay(
        upstream=args.upstream,
        name=args.name,
        address="127.0.0.1:0",
        min_clients=args.clients,
        join_timeout_s=args.join_timeout_s,
        heartbeat_s=args.heartbeat_s,
        backoff=Backoff(initial_s=0.1, max_s=1.0),
        on_ready=lambda port: say(f"PORT {port}"),
    )
    say(f"DONE {tasks}")


def clients(args: argparse.Namespace) -> None:
    # One client object serves every thread: its fit is a pure function.
    client = FunctionClient(
        weights={"w": np.zeros(args.params, np.float32)},
        fit=lambda weights, config: (weights, 1, {}),
    )
    tasks: dict[str, int] = {}
    backoff = Backoff(initial_s=0.1, max_s=1.0)

    def run(name: str) -> None:
        tasks[name] = fedloom.connect(client, address=args.address, name=name, backoff=backoff)

    threads = [
        threading.Thread(target=run, args=(f"c{index}",), daemon=True)
        for index in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.timeout_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in threads):
        raise SystemExit(f"clients still running after {args.timeout_s:g} s: {sorted(tasks)} done")
    say("DONE " + json.dumps({"tasks": tasks}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--join-timeout-s", type=float, default=120.0)
    roles = parser.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server")
    server.add_argument("--rounds", type=int, required=True)
    server.add_argument("--clients", type=int, required=True)
    server.add_argument("--params", type=int, required=True)
    server.add_argument("--fit-timeout-s", type=float, default=600.0)
    relay_role = roles.add_parser("relay")
    relay_role.add_argument("--upstream", required=True)
    relay_role.add_argument("--name", required=True)
    relay_role.add_argument("--clients", type=int, required=True)
    client = roles.add_parser("clients")
    client.add_argument("--address", required=True)
    client.add_argument("--clients", type=int, required=True)
    client.add_argument("--params", type=int, required=True)
    client.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    if args.role == "server":
        serve(args)
    elif args.role == "relay":
        run_relay(args)
    else:
        clients(args)


if __name__ == "__main__":
    main()
