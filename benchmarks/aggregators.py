"""Every aggregator on 50 updates of 1M float32 parameters, relative to streaming FedAvg.

Each rule runs the way the server would use it: the mean family (weighted mean, mean,
clipped mean) through its streaming `fold`, one update at a time; the robust rules
(median, trimmed mean, Krum, Multi-Krum, Bulyan) through the batch `aggregate` of the
stacked updates. The batch weighted mean is timed too, for reference. Each time is the
best of ``--repeat`` runs, divided by the streaming weighted mean's in the same run.

Run: ``python benchmarks/aggregators.py [--params N] [--clients K] [--repeat R]``.
Prints a table, then one JSON line mapping each `AGGREGATORS` name to its ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from fedloom.aggregators import (
    AGGREGATORS,
    Aggregator,
    Bulyan,
    ClippedMean,
    Krum,
    Mean,
    Median,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
)

STREAMING = {"weighted_mean", "mean", "clipped_mean"}


def best_time(action: Callable[[], object], repeat: int) -> float:
    """The fastest of `repeat` runs, in seconds (the least disturbed by the machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def streaming(aggregator: Aggregator, updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Fold the updates in one at a time, as the server does when they arrive."""
    fold = aggregator.fold(updates.shape[1], updates.dtype)
    for update, weight in zip(updates, weights, strict=True):
        fold.add(update, float(weight))
    return fold.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    updates = rng.standard_normal((args.clients, args.params), dtype=np.float32)
    updates *= np.float32(1.0 / np.sqrt(args.params))  # norms near 1, so clipping at 1.0 bites
    weights = rng.integers(10, 1000, size=args.clients).astype(np.float64)
    f = 10
    aggregators: dict[str, Aggregator] = {
        "weighted_mean": WeightedMean(),
        "mean": Mean(),
        "median": Median(),
        "trimmed_mean": TrimmedMean(beta=0.1),
        "krum": Krum(f=f),
        "multikrum": MultiKrum(f=f),
        "bulyan": Bulyan(f=f),
        "clipped_mean": ClippedMean(clip_norm=1.0),
    }
    assert aggregators.keys() == AGGREGATORS.keys(), "benchmark every registered aggregator"

    def run(name: str) -> Callable[[], object]:
        aggregator = aggregators[name]
        if name in STREAMING:
            return lambda: streaming(aggregator, updates, weights)
        return lambda: aggregator.aggregate(updates, weights)

    seconds = {name: best_time(run(name), args.repeat) for name in aggregators}
    batch_s = best_time(lambda: WeightedMean().aggregate(updates, weights), args.repeat)
    baseline = seconds["weighted_mean"]
    ratios = {name: round(value / baseline, 3) for name, value in seconds.items()}

    print(f"{args.clients} updates x {args.params:,} float32 parameters, best of {args.repeat}")
    print(f"{'aggregator':<24}{'path':<10}{'ms':>10}{'x streaming FedAvg':>22}")
    for name, value in seconds.items():
        path = "fold" if name in STREAMING else "batch"
        print(f"{name:<24}{path:<10}{value * 1e3:>10.1f}{ratios[name]:>22.2f}")
    print(f"{'weighted_mean':<24}{'batch':<10}{batch_s * 1e3:>10.1f}{batch_s / baseline:>22.2f}")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
