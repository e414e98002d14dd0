"""The quickstart federation as local processes: one server and N-1 clients over gRPC.

Run it from the repository root with (4 processes: the server and 3 clients):

    fedloom launch --nproc 4 examples/quickstart/launch_demo.py --rounds 10

Every process runs this script; `launch_env` says which one it is. Rank 0 serves
and prints each round's test accuracy to its log (``runs/launch-<time>/rank0.log``);
the others each train on their Dirichlet share of the digits. The launcher puts the
server on a free loopback port and hands every process a generated shared secret:
traffic is plain text on loopback (``--insecure`` semantics), and the shared secret
is the only check. For a deployment across machines use ``fedloom server`` and
``fedloom client`` with TLS and per-client tokens (``fedloom certs DIR``).
"""

from __future__ import annotations

import argparse

import task

import fedloom
from fedloom import ClientContext
from fedloom.core import Weights
from fedloom.data import Dirichlet
from fedloom.launching import LaunchEnv, launch_env
from fedloom.server import Callback, RoundRecord
from fedloom.transport.grpc.security import Tokens


class PrintAccuracy(Callback):
    """Prints the central test accuracy after every round."""

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        accuracy = record.metrics.get("central.accuracy")
        print(f"round {record.server_round}: central.accuracy={accuracy:.4f}", flush=True)
        return False


def run_server(env: LaunchEnv, rounds: int) -> None:
    """Rank 0: wait for every client, run the rounds, print the accuracy."""
    result = fedloom.serve(
        rounds=rounds,
        address=env.address,
        min_clients=env.num_clients,
        tokens=Tokens(shared_secret=env.token),
        evaluate_fn=task.evaluate,
        strategy=fedloom.fedavg(fraction_fit=1.0),
        callbacks=[PrintAccuracy()],
    )
    print(f"stopped: {result.stop_reason}", flush=True)


def run_client(env: LaunchEnv) -> None:
    """Ranks 1..N-1: train on partition rank - 1 until the server ends the run."""
    context = ClientContext(
        client_id=f"rank{env.rank}",
        partition_id=env.rank - 1,
        num_partitions=env.num_clients,
        partitioner=Dirichlet(alpha=0.5),
    )
    tasks = fedloom.connect(
        task.client_fn(context), address=env.address, name=f"rank{env.rank}", token=env.token
    )
    print(f"rank{env.rank}: the server ended the run after {tasks} tasks", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="the quickstart under `fedloom launch`")
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    env = launch_env()
    if env.is_server:
        run_server(env, rounds)
    else:
        run_client(env)


if __name__ == "__main__":
    main()
