"""A fedloom gRPC server with SecAgg+ for `test_grpc.py`: `fedloom.serve` on 127.0.0.1:0.

Prints ``PORT <n>`` once listening; writes ``{"weights": [...], "failures": [...],
"num_results": [...], "local_epsilon": [...]}`` to `--out` when the run ends, then
prints ``DONE``. ``--local-dp EPSILON`` adds the LocalDP plug-in (clients: a torch
``Linear(4, 2)``) with that budget over the run's rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

import fedloom
from fedloom.secagg import SecAggPlus
from fedloom.strategies import LocalDP, Strategy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dim", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=4.0)
    parser.add_argument("--local-dp", type=float, default=None, metavar="EPSILON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    initial: dict[str, np.ndarray] = {"x": np.zeros(args.dim)}
    plugins: tuple[LocalDP, ...] = ()
    if args.local_dp is not None:
        initial = {"weight": np.zeros((2, 4), np.float32), "bias": np.zeros(2, np.float32)}
        plugins = (LocalDP(epsilon=args.local_dp, delta=1e-3, rounds=args.rounds),)
    strategy = Strategy(
        evaluate_sampler=None,
        plugins=plugins,
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
        initial_weights=initial,
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
                "local_epsilon": [r.metrics.get("privacy.local_epsilon") for r in records],
            },
            handle,
        )
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
