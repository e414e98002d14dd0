"""Typed, immutable messages between the server and its clients.

These are plain values: no protobuf, no I/O. `transport/` encodes them for the
wire; the orchestrator and clients only ever see these types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from fedloom.core.weights import Vector, Weights, WeightsLike
from fedloom.errors import InvalidResult

__all__ = [
    "ClientId",
    "Config",
    "EvaluateIns",
    "EvaluateRes",
    "Failure",
    "FitIns",
    "FitRes",
    "GetWeightsIns",
    "Metrics",
    "Reply",
    "Scalar",
    "Task",
    "WeightsRes",
]

ClientId: TypeAlias = str
Scalar: TypeAlias = bool | int | float | str
Config: TypeAlias = Mapping[str, Scalar]
Metrics: TypeAlias = Mapping[str, Scalar]


def _check_num_examples(num_examples: object, what: str) -> None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise InvalidResult(
            f"{what}.num_examples must be a non-negative int, got {num_examples!r}. Return the "
            "number of samples the client used (len of its dataset)."
        )


def _check_metrics(metrics: object, what: str) -> None:
    if not isinstance(metrics, Mapping):
        raise InvalidResult(
            f"{what}.metrics must be a mapping of str -> bool|int|float|str, got "
            f"{type(metrics).__name__}."
        )
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise InvalidResult(f"{what}.metrics keys must be str, got {key!r}.")
        if not isinstance(value, bool | int | float | str):
            raise InvalidResult(
                f"{what}.metrics[{key!r}] is {type(value).__name__}; metrics hold "
                "bool, int, float or str values. Convert tensors with float(...)."
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class GetWeightsIns:
    """Ask a client for its current weights (used to initialise the global model)."""

    config: Config = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightsRes:
    """A client's reply to `GetWeightsIns`."""

    weights: WeightsLike


@dataclass(frozen=True, slots=True, kw_only=True)
class FitIns:
    """Train from `weights` with `config` (it always holds ``server_round`` and ``seed``).

    `tensors` carries flat vectors that client plug-ins need from the server
    (SCAFFOLD's server control variate, for instance), named
    ``"<plugin>.<what>"``; ``config["plugins"]`` lists the plug-ins to apply.
    """

    weights: Weights
    config: Config
    tensors: Mapping[str, Vector] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FitRes:
    """A client's training result: new weights, how many examples it used, and metrics."""

    weights: WeightsLike
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    tensors: Mapping[str, Vector] = field(default_factory=dict)
    """Flat vectors for the server's half of a plug-in (e.g. SCAFFOLD's control delta)."""

    def __post_init__(self) -> None:
        _check_num_examples(self.num_examples, "FitRes")
        _check_metrics(self.metrics, "FitRes")


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluateIns:
    """Evaluate `weights` on the client's local data."""

    weights: Weights
    config: Config


@dataclass(frozen=True, slots=True)
class EvaluateRes:
    """A client's evaluation: loss, how many examples it evaluated, and metrics."""

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_num_examples(self.num_examples, "EvaluateRes")
        _check_metrics(self.metrics, "EvaluateRes")
        if isinstance(self.loss, bool) or not isinstance(self.loss, int | float):
            raise InvalidResult(
                f"EvaluateRes.loss must be a float, got {type(self.loss).__name__}. "
                "Convert tensors with float(...)."
            )
        if not math.isfinite(self.loss):
            raise InvalidResult(f"EvaluateRes.loss must be finite, got {self.loss}.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """A task that produced no usable result, and why."""

    client_id: ClientId
    reason: str
    error: BaseException | None = None


Task: TypeAlias = GetWeightsIns | FitIns | EvaluateIns
Reply: TypeAlias = WeightsRes | FitRes | EvaluateRes | Failure
