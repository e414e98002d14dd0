"""Samplers decide which clients take part in a round; randomness comes only from `rng`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedloom.core import ClientId
from fedloom.errors import ConfigError

__all__ = ["All", "Count", "Fraction", "Sampler"]


class Sampler(Protocol):
    """Chooses the clients of a round from those available."""

    def sample(self, available: Sequence[ClientId], rng: np.random.Generator) -> list[ClientId]:
        """The chosen client ids, in the order of `available`."""
        ...


@dataclass(frozen=True, kw_only=True)
class All:
    """Every available client takes part."""

    def sample(self, available: Sequence[ClientId], rng: np.random.Generator) -> list[ClientId]:
        return list(available)


def _choose(available: Sequence[ClientId], k: int, rng: np.random.Generator) -> list[ClientId]:
    if k >= len(available):
        return list(available)
    chosen = np.sort(rng.choice(len(available), size=k, replace=False))
    return [available[i] for i in chosen]


@dataclass(frozen=True, kw_only=True)
class Fraction:
    """A random ``ceil(fraction * n)`` of the n available clients, at least `min_clients`."""

    fraction: float
    min_clients: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(
                f"fraction must be in (0, 1], got {self.fraction}. Pass a fraction of available "
                "clients (e.g. 0.1), or use Count(k=...) for an absolute number.",
                field="fraction",
                value=self.fraction,
            )
        if self.min_clients < 1:
            raise ConfigError(
                f"min_clients must be >= 1, got {self.min_clients}.",
                field="min_clients",
                value=self.min_clients,
            )

    def sample(self, available: Sequence[ClientId], rng: np.random.Generator) -> list[ClientId]:
        # round first: 0.07 * 100 is 7.000000000000001 in floating point, not 8 clients' worth
        k = max(self.min_clients, math.ceil(round(self.fraction * len(available), 9)))
        return _choose(available, k, rng)


@dataclass(frozen=True, kw_only=True)
class Count:
    """`k` clients drawn uniformly at random without replacement (all of them if fewer)."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(
                f"k must be >= 1, got {self.k}. Pass how many clients take part in a round.",
                field="k",
                value=self.k,
            )

    def sample(self, available: Sequence[ClientId], rng: np.random.Generator) -> list[ClientId]:
        return _choose(available, self.k, rng)
