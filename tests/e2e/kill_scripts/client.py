"""A gRPC client process for the kill-and-resume tests: `fedloom.connect` with a short backoff.

It serves `toy_task.pull_client_fn` for partition `--partition` and prints
``FINISHED <tasks>`` when the server ends the run. It is never restarted: when
the server is killed it retries every 0.1-0.5 s until the restarted one answers.
"""

from __future__ import annotations

import argparse
import logging
import sys

from toy_task import pull_client_fn

import fedloom
from fedloom.transport.grpc.client import Backoff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--partition", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    context = fedloom.ClientContext(
        client_id=args.name, partition_id=args.partition, num_partitions=2, seed=0
    )
    done = fedloom.connect(
        pull_client_fn(context),
        address=args.address,
        name=args.name,
        backoff=Backoff(initial_s=0.1, max_s=0.5),
    )
    print(f"FINISHED {done}", flush=True)


if __name__ == "__main__":
    main()
