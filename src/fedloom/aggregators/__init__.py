"""Aggregation rules: how client updates combine into one update.

`AGGREGATORS` maps each config name to its class.
"""

from fedloom.aggregators.base import Aggregator, BufferedFold, Fold
from fedloom.aggregators.mean import Mean, WeightedMean

__all__ = ["AGGREGATORS", "Aggregator", "BufferedFold", "Fold", "Mean", "WeightedMean"]

AGGREGATORS: dict[str, type[Aggregator]] = {
    "weighted_mean": WeightedMean,
    "mean": Mean,
}
