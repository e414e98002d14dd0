"""Aggregation rules: how client updates combine into one update.

`AGGREGATORS` maps each config name to its class.
"""

from fedloom.aggregators.base import Aggregator, BufferedFold, Fold
from fedloom.aggregators.clipping import ClippedMean
from fedloom.aggregators.mean import Mean, WeightedMean
from fedloom.aggregators.robust import Bulyan, Krum, Median, MultiKrum, TrimmedMean

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "BufferedFold",
    "Bulyan",
    "ClippedMean",
    "Fold",
    "Krum",
    "Mean",
    "Median",
    "MultiKrum",
    "TrimmedMean",
    "WeightedMean",
]

AGGREGATORS: dict[str, type[Aggregator]] = {
    "weighted_mean": WeightedMean,
    "mean": Mean,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "clipped_mean": ClippedMean,
}
