"""Strategies as compositions: samplers, server optimizers, and named presets.

`STRATEGIES` maps each preset's config name to its builder.
"""

from fedloom.strategies.optimizers import SGD, OptimizerState, ServerOptimizer
from fedloom.strategies.presets import STRATEGIES, fedavg
from fedloom.strategies.samplers import All, Count, Fraction, Sampler
from fedloom.strategies.strategy import FitResult, Strategy, StrategyState

__all__ = [
    "SGD",
    "STRATEGIES",
    "All",
    "Count",
    "FitResult",
    "Fraction",
    "OptimizerState",
    "Sampler",
    "ServerOptimizer",
    "Strategy",
    "StrategyState",
    "fedavg",
]
