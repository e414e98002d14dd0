"""Combining clients' metrics: the example-weighted mean of every numeric metric."""

from __future__ import annotations

from collections.abc import Iterable

from fedloom.core.messages import Metrics, Scalar

__all__ = ["weighted_average"]


def weighted_average(results: Iterable[tuple[int, Metrics]]) -> dict[str, Scalar]:
    """Example-weighted mean of each numeric metric over ``(num_examples, metrics)`` pairs.

    A metric that only some clients report is averaged over those clients.
    Booleans and strings are not averaged and are left out.

    Example:
        >>> weighted_average([(1, {"acc": 1.0}), (3, {"acc": 0.5})])
        {'acc': 0.625}
    """
    sums: dict[str, float] = {}
    totals: dict[str, int] = {}
    for num_examples, metrics in results:
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            sums[key] = sums.get(key, 0.0) + num_examples * float(value)
            totals[key] = totals.get(key, 0) + num_examples
    return {key: sums[key] / totals[key] for key in sums if totals[key] > 0}
