"""Server optimizers: how the aggregated update moves the global weights.

State is a mapping of name -> array, passed in and returned, never kept on the
optimizer (so it can be checkpointed and compared).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from fedloom.core import Vector
from fedloom.errors import ConfigError

__all__ = ["SGD", "OptimizerState", "ServerOptimizer"]

OptimizerState: TypeAlias = Mapping[str, Vector]


class ServerOptimizer(ABC):
    """Base class: subclass it and implement `step` (and `init` if it keeps state)."""

    def init(self, params: Vector) -> OptimizerState:
        """The optimizer's state before the first round."""
        return {}

    @abstractmethod
    def step(
        self, params: Vector, update: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        """New global params from the aggregated `update` (new minus old weights)."""


@dataclass(frozen=True, kw_only=True)
class SGD(ServerOptimizer):
    """``x <- x + lr * update``; with ``lr = 1`` this is FedAvg's plain apply."""

    lr: float = 1.0

    def __post_init__(self) -> None:
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ConfigError(
                f"lr must be a positive number, got {self.lr}. Use 1.0 for FedAvg.",
                field="lr",
                value=self.lr,
            )

    def step(
        self, params: Vector, update: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        if self.lr == 1.0:
            return params + update, state
        return params + params.dtype.type(self.lr) * update, state
