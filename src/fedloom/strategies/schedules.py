"""Schedules decide when aggregation happens: synchronous rounds, or a buffer of K arrivals.

`Sync` is the classic round: sample, wait for every result, aggregate.
`Buffered` is asynchronous: `concurrency` clients train at once, each pulls
the latest global version when it becomes free, and the server aggregates
every `buffer_size` arrivals (FedBuff; ``buffer_size = 1`` with ``relative_to
= "current"`` is FedAsync). Each update is scaled by a staleness function of
how many versions old the model it trained from is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from fedloom.errors import ConfigError

__all__ = ["Buffered", "Constant", "Hinge", "Polynomial", "Schedule", "Staleness", "Sync"]


class Staleness(Protocol):
    """Scales an update by how stale it is: ``s(0) = 1``, non-increasing."""

    def __call__(self, staleness: int) -> float:
        """The factor for an update `staleness` versions behind."""
        ...


@dataclass(frozen=True, kw_only=True)
class Constant:
    """``s(t) = 1``: staleness is ignored."""

    def __call__(self, staleness: int) -> float:
        return 1.0


@dataclass(frozen=True, kw_only=True)
class Polynomial:
    """``s(t) = (1 + t)^(-a)`` (Xie et al. 2019, FedAsync; FedBuff uses a = 0.5)."""

    a: float = 0.5

    def __post_init__(self) -> None:
        if not self.a >= 0:
            raise ConfigError(f"a must be >= 0, got {self.a}.", field="a", value=self.a)

    def __call__(self, staleness: int) -> float:
        return float((1 + staleness) ** -self.a)


@dataclass(frozen=True, kw_only=True)
class Hinge:
    """``s(t) = 1`` if ``t <= b`` else ``1 / (a (t - b) + 1)`` (Xie et al. 2019, FedAsync)."""

    a: float = 10.0
    b: int = 4

    def __post_init__(self) -> None:
        if not self.a > 0 or self.b < 0:
            raise ConfigError(
                f"hinge staleness needs a > 0 and b >= 0, got a={self.a}, b={self.b}.",
                field="a" if not self.a > 0 else "b",
            )

    def __call__(self, staleness: int) -> float:
        return 1.0 if staleness <= self.b else 1.0 / (self.a * (staleness - self.b) + 1.0)


@dataclass(frozen=True, kw_only=True)
class Sync:
    """Synchronous rounds: every sampled client trains from the same version."""


@dataclass(frozen=True, kw_only=True)
class Buffered:
    """Asynchronous aggregation of every `buffer_size` arriving results.

    Args:
        buffer_size: K, results per aggregation (OpenFed's AggregateCount).
        concurrency: how many clients train at once (the sampler picks among free ones).
        staleness: scales each update by its staleness.
        relative_to: "trained" takes each update against the version the client
            trained from (FedBuff); "current" against the current global
            weights, i.e. mixes the client's model in (FedAsync).
    """

    buffer_size: int
    concurrency: int
    staleness: Staleness = field(default_factory=Polynomial)
    relative_to: Literal["trained", "current"] = "trained"

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ConfigError(
                f"buffer_size must be >= 1, got {self.buffer_size}.",
                field="buffer_size",
                value=self.buffer_size,
            )
        if self.concurrency < self.buffer_size:
            raise ConfigError(
                f"concurrency ({self.concurrency}) must be at least buffer_size "
                f"({self.buffer_size}), or a buffer could never fill. Raise concurrency.",
                field="concurrency",
                value=self.concurrency,
            )
        if self.relative_to not in ("trained", "current"):
            raise ConfigError(
                f"relative_to must be 'trained' or 'current', got {self.relative_to!r}.",
                field="relative_to",
                value=self.relative_to,
            )


Schedule = Sync | Buffered
