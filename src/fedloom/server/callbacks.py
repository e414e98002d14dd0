"""Hooks into the round loop, and the built-in ones: stop rules and keep-best.

A callback overrides any of the `Callback` methods. `on_round_end` returns
True to stop the run after that round; the reason is its `stop_reason`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from fedloom.core import Metrics, Weights
from fedloom.errors import ConfigError
from fedloom.server.history import ClientOutcome, History, RoundRecord
from fedloom.strategies import StrategyState

if TYPE_CHECKING:
    from fedloom.server.orchestrator import RunResult

__all__ = ["Callback", "EarlyStopping", "KeepBest", "StopAfter", "StopAtMetric"]

Mode = Literal["max", "min"]


class Callback:
    """Base class with no-op hooks; override the ones you need."""

    stop_reason: str = ""

    def on_round_start(self, server_round: int) -> None:
        """A round is about to sample clients."""

    def on_aggregate(self, server_round: int, weights: Weights, metrics: Metrics) -> None:
        """New global weights exist for `server_round`."""

    def on_evaluate(self, server_round: int, metrics: Metrics) -> None:
        """Federated and central evaluation of `server_round` are done."""

    def on_client_result(self, outcome: ClientOutcome) -> None:
        """A client's fit or evaluate task of the current round ended (result or failure)."""

    def on_checkpoint(self, record: RoundRecord, state: StrategyState) -> None:
        """A round is complete (round 0: the initial state); persist it here if you keep state.

        Called before `on_round_end`, so a store has the round whole before anyone is
        told it happened.
        """

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        """The round is recorded; return True to stop the run here."""
        return False

    def on_resume(self, history: History, weights_of: Callable[[int], Weights]) -> None:
        """The run resumes after `history`'s last round; `weights_of(r)` loads round r's weights.

        Callbacks that keep state across rounds rebuild it here.
        """

    def on_run_end(self, result: RunResult) -> None:
        """The run finished (or stopped early)."""


def _check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ConfigError(
            f"mode must be 'max' or 'min', got {mode!r}. Use 'max' for accuracy-like metrics "
            "and 'min' for losses.",
            field="mode",
            value=mode,
        )


def _better(value: float, best: float, mode: Mode, min_delta: float = 0.0) -> bool:
    return value > best + min_delta if mode == "max" else value < best - min_delta


@dataclass(kw_only=True)
class StopAfter(Callback):
    """Stop after `rounds` rounds."""

    rounds: int

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}.", field="rounds")

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        if record.server_round >= self.rounds:
            self.stop_reason = f"reached {self.rounds} rounds"
            return True
        return False


@dataclass(kw_only=True)
class StopAtMetric(Callback):
    """Stop once `metric` reaches `target` (at least it for 'max', at most it for 'min')."""

    metric: str
    target: float
    mode: Mode = "max"

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        value = record.metrics.get(self.metric)
        if not isinstance(value, int | float):
            return False
        reached = value >= self.target if self.mode == "max" else value <= self.target
        if reached:
            self.stop_reason = f"{self.metric} = {value:.4g} reached target {self.target}"
        return reached


@dataclass(kw_only=True)
class EarlyStopping(Callback):
    """Stop when `metric` has not improved by more than `min_delta` for `patience` rounds."""

    metric: str
    patience: int = 3
    mode: Mode = "max"
    min_delta: float = 0.0
    _best: float = field(default=math.nan, init=False, repr=False)
    _stale: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}.", field="patience")

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        value = record.metrics.get(self.metric)
        if not isinstance(value, int | float):
            return False
        if math.isnan(self._best) or _better(value, self._best, self.mode, self.min_delta):
            self._best, self._stale = float(value), 0
            return False
        self._stale += 1
        if self._stale >= self.patience:
            self.stop_reason = (
                f"{self.metric} did not improve on {self._best:.4g} for {self.patience} rounds"
            )
            return True
        return False

    def on_resume(self, history: History, weights_of: Callable[[int], Weights]) -> None:
        self._best, self._stale = math.nan, 0
        for record in history:
            self.on_round_end(record, _NO_WEIGHTS)


@dataclass(kw_only=True)
class KeepBest(Callback):
    """Remember the weights of the round with the best `metric`.

    After the run, `weights`, `server_round` and `value` describe the best round
    (None before any round recorded the metric).
    """

    metric: str
    mode: Mode = "max"
    weights: Weights | None = field(default=None, init=False)
    server_round: int | None = field(default=None, init=False)
    value: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        _check_mode(self.mode)

    def on_round_end(self, record: RoundRecord, weights: Weights) -> bool:
        value = record.metrics.get(self.metric)
        if isinstance(value, int | float) and (
            self.value is None or _better(float(value), self.value, self.mode)
        ):
            self.weights, self.server_round, self.value = weights, record.server_round, float(value)
        return False

    def on_resume(self, history: History, weights_of: Callable[[int], Weights]) -> None:
        best: RoundRecord | None = None
        for record in history:
            value = record.metrics.get(self.metric)
            if isinstance(value, int | float) and (
                best is None or _better(float(value), float(best.metrics[self.metric]), self.mode)
            ):
                best = record
        if best is not None:
            self.server_round = best.server_round
            self.value = float(best.metrics[self.metric])
            self.weights = weights_of(best.server_round)


_NO_WEIGHTS = Weights({})
