"""FedAvg aggregation of 10 updates of 10M float32 parameters, against the physical limit.

The limit is copying the same input bytes once (``numpy.copyto``): aggregation
must at least read every update. `aggregate_over_copy` times the streaming
fold, one update at a time in O(model) memory; `server_fold_over_copy` times
what the server does with each result (its new weights minus the global ones,
folded without materialising the difference).

Run: ``python benchmarks/aggregate.py [--params N] [--clients K] [--repeat R]``.
Prints each time, then one JSON line with ``aggregate_over_copy``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from fedloom.aggregators import WeightedMean


def best_time(action: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` runs, in seconds (the least disturbed by the machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    updates = rng.standard_normal((args.clients, args.params), dtype=np.float32)
    weights = rng.integers(10, 1000, size=args.clients).astype(np.float64)
    destination = np.empty_like(updates)
    aggregator = WeightedMean()

    def streaming() -> np.ndarray:
        fold = aggregator.fold(args.params, np.float32)
        for update, weight in zip(updates, weights, strict=True):
            fold.add(update, float(weight))
        return fold.result()

    base = rng.standard_normal(args.params, dtype=np.float32)

    def server_fold() -> np.ndarray:
        """The server's path: each client's new weights minus the global weights."""
        fold = aggregator.fold(args.params, np.float32)
        for new, weight in zip(updates, weights, strict=True):
            fold.add_difference(new, base, float(weight))
        return fold.result()

    expected = (weights / weights.sum()) @ updates.astype(np.float64)
    np.testing.assert_allclose(streaming(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(server_fold(), expected - base, rtol=1e-4, atol=1e-4)

    copy_s = best_time(lambda: np.copyto(destination, updates), args.repeat)
    aggregate_s = best_time(streaming, args.repeat)
    server_s = best_time(server_fold, args.repeat)
    batch_s = best_time(lambda: aggregator.aggregate(updates, weights), args.repeat)
    figures = {
        "clients": args.clients,
        "params": args.params,
        "copy_s": round(copy_s, 5),
        "aggregate_s": round(aggregate_s, 5),
        "server_fold_s": round(server_s, 5),
        "batch_aggregate_s": round(batch_s, 5),
        "aggregate_over_copy": round(aggregate_s / copy_s, 3),
        "server_fold_over_copy": round(server_s / copy_s, 3),
        "batch_over_copy": round(batch_s / copy_s, 3),
    }
    print(f"copy of {updates.nbytes / 1e6:.0f} MB input:     {copy_s * 1e3:8.2f} ms")
    print(f"streaming FedAvg ({args.clients} x {args.params:,}): {aggregate_s * 1e3:8.2f} ms")
    print(f"server fold (new - global):      {server_s * 1e3:8.2f} ms")
    print(f"batch FedAvg (stacked):          {batch_s * 1e3:8.2f} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
