"""What SecAgg+ costs: a round of 100 clients x 100k parameters with and without it.

Both runs go through `fedloom.simulate` with the same clients: each returns the
global weights plus a fixed small update (so training costs nothing and the
figure is the protocol's overhead: key agreement, secret sharing, encryption,
masking, unmasking and quantization, all in one process). The SecAgg+ run uses
the default parameters (k = 20 neighbours, t = 13 of 21, 24-bit quantization
modulo 2^52) and one client drops out after sharing its keys, so the server also
rebuilds a dropped client's masks.

Run: ``python benchmarks/secagg.py [--clients N] [--params D] [--repeat R]``.
Prints both round times (the best of R alternating runs), then one JSON line with
``secagg_over_plain``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from fedloom import simulate
from fedloom.client import FunctionClient
from fedloom.core import ClientContext, Config, Weights
from fedloom.secagg import SecAggPlus
from fedloom.strategies import Strategy


def make_client_fn(num_params: int, dropout: str | None):
    def client_fn(context: ClientContext) -> FunctionClient:
        rng = np.random.default_rng(context.partition_id)
        update = rng.uniform(-0.01, 0.01, size=num_params).astype(np.float32)

        def fit(weights: Weights, config: Config) -> tuple[dict[str, np.ndarray], int, dict]:
            if context.client_id == dropout:
                raise RuntimeError("dropped out")
            return {"w": weights["w"] + update}, 10, {}

        return FunctionClient(weights={"w": np.zeros(num_params, np.float32)}, fit=fit)

    return client_fn


def round_time(num_clients: int, num_params: int, secure: SecAggPlus | None) -> float:
    strategy = Strategy(evaluate_sampler=None, secure_aggregation=secure)
    dropout = "0" if secure is not None else None
    started = time.perf_counter()
    simulate(
        make_client_fn(num_params, dropout),
        num_clients=num_clients,
        rounds=1,
        strategy=strategy,
        initial_weights={"w": np.zeros(num_params, np.float32)},
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the planned dropout logs a warning per round
    plain, secure = [], []
    for _ in range(args.repeat):
        plain.append(round_time(args.clients, args.params, None))
        secure.append(round_time(args.clients, args.params, SecAggPlus(clipping_range=1.0)))
    plain_s, secure_s = min(plain), min(secure)
    print(f"clients={args.clients} params={args.params}")
    print(f"plain round:   {plain_s:.3f} s")
    print(f"SecAgg+ round: {secure_s:.3f} s (one client drops out after sharing keys)")
    print(json.dumps({"secagg_over_plain": round(secure_s / plain_s, 2)}))


if __name__ == "__main__":
    main()
