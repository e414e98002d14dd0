"""OpenFed's demo, fedloom's way: asynchronous FedBuff over gRPC, one script, N processes.

Run it from the repository root (the server and 3 clients, each a process):

    fedloom launch --nproc 4 examples/async-launch/train.py

Every process runs this script; `launch_env` says which one it is. Rank 0 serves
FedBuff: all clients train at once, and every `--buffer-size` results that arrive
make a new model version (OpenFed's ``AggregateCount``), each update scaled down by
how stale it is. Ranks 1..N-1 are clients with step hooks (OpenFed's step
functions): they count their downloads and uploads, print each upload, and stop
after their upload for the last version (``StopAtVersion``). The server prints
every version's test accuracy to ``runs/launch-<time>/rank0.log``.

The launcher puts the server on a free loopback port and hands every process a
generated shared secret: traffic is plain text on loopback, and the shared secret
is the only check. Across machines use ``fedloom server``/``fedloom client`` with TLS.
"""

from __future__ import annotations

import argparse
from collections import Counter

import task

import fedloom
from fedloom import ClientContext
from fedloom.core import Weights
from fedloom.core.hooks import ClientHooks, CycleEvent, StopAtVersion
from fedloom.data import Dirichlet
from fedloom.launching import LaunchEnv, launch_env
from fedloom.server import Callback, RoundRecord
from fedloom.strategies import fedbuff
from fedloom.transport.grpc.security import Tokens


class PrintVersion(Callback):
    """Prints each model version's test accuracy and how stale its updates were."""

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        metrics = record.metrics
        line = f"version {record.server_round}: accuracy={metrics['central.accuracy']:.4f}"
        if "staleness.max" in metrics:
            line += f" staleness.mean={metrics['staleness.mean']:.2f}"
            line += f" staleness.max={metrics['staleness.max']}"
        print(line, flush=True)
        return False


def run_server(env: LaunchEnv, args: argparse.Namespace) -> None:
    """Rank 0: wait for every client, make `versions` model versions, print the accuracy."""
    result = fedloom.serve(
        rounds=args.versions,  # a round is one model version: one aggregation of K results
        strategy=fedbuff(buffer_size=args.buffer_size, concurrency=env.num_clients),
        address=env.address,
        min_clients=env.num_clients,
        tokens=Tokens(shared_secret=env.token),
        evaluate_fn=task.evaluate,
        callbacks=[PrintVersion()],
    )
    accuracy = result.history.last("central.accuracy")
    print(f"final accuracy {accuracy:.4f} after {args.versions} versions", flush=True)
    print(f"stopped: {result.stop_reason}", flush=True)


def client_hooks(name: str, counts: Counter[str]) -> ClientHooks:
    """OpenFed's step functions: count every step, print each upload and the end."""
    hooks = ClientHooks()
    for step in ("before_download", "after_download", "before_upload"):
        hooks.add(step, lambda event: counts.update([event.step]))

    @hooks.after_upload
    def uploaded(event: CycleEvent) -> None:
        counts.update([event.step])
        if event.task == "fit":
            print(f"{name}: uploaded an update trained from version {event.server_round}")

    @hooks.at_end
    def ended(event: CycleEvent) -> None:
        steps = " ".join(f"{step}={counts[step]}" for step in sorted(counts))
        print(f"{name}: hooks fired {steps}; ended: {event.reason}", flush=True)

    return hooks


def run_client(env: LaunchEnv, args: argparse.Namespace) -> None:
    """Ranks 1..N-1: train on partition rank - 1 until the last version, then stop."""
    name = f"rank{env.rank}"
    context = ClientContext(
        client_id=name,
        partition_id=env.rank - 1,
        num_partitions=env.num_clients,
        partitioner=Dirichlet(alpha=args.alpha),
    )
    counts: Counter[str] = Counter()
    tasks = fedloom.connect(
        task.client_fn(context, train_size=args.train_size),
        address=env.address,
        name=name,
        token=env.token,
        hooks=[client_hooks(name, counts), StopAtVersion(args.versions)],
    )
    print(f"{name}: ran {tasks} tasks", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="asynchronous FedBuff under `fedloom launch`")
    parser.add_argument("--versions", type=int, default=40, help="model versions to make (40)")
    parser.add_argument("--buffer-size", type=int, default=2, help="results per version (2)")
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label skew (1.0)")
    parser.add_argument(
        "--train-size", type=int, default=None, help="training images used (all 4,000)"
    )
    args = parser.parse_args()
    env = launch_env()
    if env.is_server:
        run_server(env, args)
    else:
        run_client(env, args)


if __name__ == "__main__":
    main()
