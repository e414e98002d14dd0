"""A fedloom gRPC server with SecAgg+ for `test_grpc.py`: `fedloom.serve` on 127.0.0.1:0.

Prints ``PORT <n>`` once listening; writes ``{"weights": [...], "failures": [...],
"num_results": [...]}`` to `--out` when the run ends, then prints ``DONE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

import fedloom
from fedloom.secagg import SecAggPlus
from fedloom.strategies import Strategy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dim", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    strategy = Strategy(
        evaluate_sampler=None,
        secure_aggregation=SecAggPlus(clipping_range=1.0, timeout_s=args.timeout),
    )
    result = fedloom.serve(
        rounds=args.rounds,
        strategy=strategy,
        address="127.0.0.1:0",
        min_clients=args.clients,
        join_timeout_s=60.0,
        fit_timeout_s=args.timeout,
        seed=5,
        initial_weights={"x": np.zeros(args.dim)},
        heartbeat_s=1.0,
        on_ready=lambda port: print(f"PORT {port}", flush=True),
    )
    records = list(result.history)
    with open(args.out, "w") as handle:
        json.dump(
            {
                "weights": result.weights.flat.tolist(),
                "failures": [sorted(r.failures) for r in records],
                "num_results": [r.num_results for r in records],
            },
            handle,
        )
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
